"""``rtsleep-train``: the offline command line (typer).

Each command lives in its own module, which exposes ``register(app)``; this file only composes
them, so adding a command never touches another command's code.
"""

from __future__ import annotations

from rtsleep.cliapp import command_app

#: Modules that define commands, each with ``register(app: typer.Typer) -> None``.
COMMAND_MODULES: tuple[str, ...] = (
    "offline.fetch",
    "offline.ingest",
    "offline.inspect",
    "offline.train_commands",
    "offline.apnea_train",
    "offline.evaluate",
    "offline.cv",
    "offline.train_default",
)

app = command_app(
    "rtsleep-train",
    "Ingest PSG archives, pretrain, fine-tune and evaluate rtsleep models.",
    COMMAND_MODULES,
)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
