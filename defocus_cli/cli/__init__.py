"""The `defocus` command line: a Typer app with one module per subcommand.

Nothing heavy is imported here or at the top of the command modules, so `defocus --help` and
`defocus --version` answer without loading torch.
"""

from __future__ import annotations

import importlib

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
    app()
