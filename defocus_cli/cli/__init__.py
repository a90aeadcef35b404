"""The `defocus` command line: a Typer app with one module per subcommand.

Nothing heavy is imported here or at the top of the command modules, so `defocus --help` and
`defocus --version` answer without loading torch.
"""

from __future__ import annotations

import atexit
import importlib
import multiprocessing
import os
import sys
import threading

import typer

from defocus_cli import __version__

#: subcommand -> one-line description (shown until its module provides the real command)
COMMANDS = {
    "estimate": "Estimate per-pixel defocus maps (Gaussian sigma, px) of photos.",
    "magnify": "Magnify the defocus blur of photos (layered re-rendering).",
    "deblur": "All-in-focus images by layered hyper-Laplacian deconvolution.",
    "depth": "Pseudo or metric depth from defocus maps.",
    "synth": "Synthesize a SYNDOF-style training set from RGB-D sources and procedural scenes.",
    "train": "Train network B (DMENet) on a synthesized dataset; export weights.",
    "eval": "Measure an estimator on a dataset (sigma errors, blur-mask accuracy, deblurring).",
}

app = typer.Typer(
    name="defocus",
    help="Defocus maps from single photos (DMENet, Lee et al. CVPR 2019): estimate, magnify, "
         "deblur, depth; and the pipeline that made the network: synth, train, eval.",
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"defocus {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """defocus: per-pixel defocus maps and what they are good for."""


def _not_implemented(name: str):
    def command() -> None:
        typer.echo(f"defocus {name}: not implemented yet", err=True)
        raise typer.Exit(2)

    command.__doc__ = COMMANDS[name] + " (not implemented yet)"
    return command


def _register() -> None:
    for name, summary in COMMANDS.items():
        try:
            module = importlib.import_module(f"defocus_cli.cli.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"defocus_cli.cli.{name}":
                raise
            app.command(name, help=summary + " (not implemented yet)")(_not_implemented(name))
            continue
        if isinstance(getattr(module, "app", None), typer.Typer):
            app.add_typer(module.app, name=name)
        else:
            app.command(name)(getattr(module, name))


_register()


def main() -> None:
    """The console entry point: runs the app, then ends the process (see ``exit_now``)."""
    try:
        app()
    except SystemExit as e:
        exit_now(e.code)
    exit_now(0)


def exit_now(code: int | str | None) -> None:
    """End the process with ``code``, skipping the interpreter's teardown when that is safe.

    Once torch is loaded, tearing its modules down takes 0.3-1 s after every command has
    finished (a 12 MP `defocus estimate`: 6.1 s end to end, of which 0.95 s after the last
    atexit handler; benchmarks/README.md). When only the main thread is left, no child process
    runs and Ray is not loaded, the atexit handlers run, the streams are flushed and the process
    ends with ``os._exit``. Otherwise, and for a message code, it exits as usual.
    """
    if code is None:
        code = 0
    fast = (isinstance(code, int) and "torch" in sys.modules and "ray" not in sys.modules
            and threading.active_count() == 1 and not multiprocessing.active_children())
    if not fast:
        sys.exit(code)
    atexit._run_exitfuncs()  # what the interpreter would run first at exit (CPython's own hook)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed or broken pipe: nothing more can be written
            pass
    os._exit(code)
