"""The ``inferstack`` command. Each part defines its commands in its own ``cli`` module; heavy
imports (torch, onnxruntime, pulumi) happen inside the commands, so ``inferstack --help`` is fast
and the runtime image needs neither torch nor pulumi."""

from __future__ import annotations

from typing import Annotated

import typer

from inferstack import __version__
from inferstack.console import out, set_verbose

app = typer.Typer(
    name="inferstack",
    help="Take a trained PyTorch model to a GPU-backed Open Inference Protocol endpoint.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        out.print(f"inferstack {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", envvar="INFERSTACK_VERBOSE", help="Show tracebacks on errors.")
    ] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    set_verbose(verbose)


def _register() -> None:
    from inferstack.plan.cli import destroy, plan

    app.command("plan")(plan)
    app.command("destroy")(destroy)
    from inferstack.modeltools.cli import export, optimize, verify

    app.command("export")(export)
    app.command("verify")(verify)
    app.command("optimize")(optimize)
    from inferstack.runtime.cli import serve

    app.command("serve")(serve)
    from inferstack.bench.cli import bench

    app.command("bench")(bench)


_register()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
