"""A typer app composed of command modules; both CLIs (``rtsleep``, ``rtsleep-train``) use it.

Each command lives in its own module, which exposes ``register(app: typer.Typer) -> None``; the
app only composes them, so adding a command never touches another command's code.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Sequence

import typer

#: Log line format of both command lines.
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def command_app(name: str, help: str, modules: Sequence[str]) -> typer.Typer:
    """A typer app called ``name`` with a ``--verbose/-v`` root option (debug logging) and the
    commands that each of ``modules`` (dotted module names) registers."""
    app = typer.Typer(name=name, help=help, no_args_is_help=True, add_completion=False,
                      rich_markup_mode="markdown")  # docstring paragraphs reflow

    verbose_option = typer.Option(False, "--verbose", "-v", help="Debug logging.")

    @app.callback()
    def _root(verbose: bool = verbose_option) -> None:
        logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=LOG_FORMAT)

    for module in modules:
        importlib.import_module(module).register(app)
    return app
