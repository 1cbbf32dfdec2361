"""``rtsleep``: the runtime command line (serve, check, replay, watch, score).

Each command lives in its own module, which exposes ``register(app)``; this file only composes
them, so adding a command never touches another command's code.
"""

from __future__ import annotations

from rtsleep.cliapp import command_app

#: Modules that define commands, each with ``register(app: typer.Typer) -> None``.
COMMAND_MODULES: tuple[str, ...] = (
    "rtsleep.daemon.commands",
    "rtsleep.daemon.replay",
    "rtsleep.daemon.watch",
)

app = command_app(
    "rtsleep",
    "Real-time sleep scoring: serve, check, replay, watch, score.",
    COMMAND_MODULES,
)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
