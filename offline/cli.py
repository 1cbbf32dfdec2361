"""``rtsleep-train``: the offline command line (typer).

Each command lives in its own module, which exposes ``register(app)``; this file only composes
them, so adding a command never touches another command's code.
"""

from __future__ import annotations

import importlib
import logging

import typer

app = typer.Typer(
    name="rtsleep-train",
    help="Ingest PSG archives, pretrain, fine-tune and evaluate rtsleep models.",
    no_args_is_help=True,
    add_completion=False,
)

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


def _register_all() -> None:
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(app)


@app.callback()
def _root(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


_register_all()


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
