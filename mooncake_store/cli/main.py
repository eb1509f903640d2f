"""`mstore`: the admin and benchmark CLI. Each command group lives in its own module."""
from __future__ import annotations

import typer

from .. import __version__

app = typer.Typer(
    name="mstore",
    help="mooncake_store: a distributed KV-cache store for LLM serving.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",   # help paragraphs reflow to the terminal's width
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mstore {__version__}")
        raise typer.Exit()


@app.callback()
def main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                      help="Print the version and exit.")) -> None:
    """mooncake_store: a distributed KV-cache store for LLM serving."""


# Command groups register themselves below (one import per module).
from .bench import bench_app  # noqa: E402  (`mstore bench`, `mstore bench store`)
app.add_typer(bench_app, name="bench")
from .bench_transfer import bench_transfer  # noqa: E402
bench_app.command("transfer")(bench_transfer)
from . import demo as _demo  # noqa: E402,F401  (registers `mstore demo`)
from . import trace as _trace  # noqa: E402,F401  (registers `mstore trace`)
from . import cluster as _cluster  # noqa: E402,F401  (master, node, status, ls, get, put, rm, stat)


if __name__ == "__main__":
    # Under `python -m` this file runs as __main__, while the command modules register on
    # `mooncake_store.cli.main.app`: run that one, so every command is there.
    from mooncake_store.cli.main import app as _registered_app

    _registered_app()
