"""``inferstack plan`` and ``inferstack destroy``."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from inferstack.console import cli_errors, err, fail, out

DEFAULT_OUT = "plan"


def _root(project_dir: Path) -> Path:
    from inferstack.plan.stackconfig import find_project_root

    return find_project_root(project_dir)


@cli_errors
def plan(
    stack: Annotated[list[str], typer.Option("--stack", "-s", help="Stack to plan (repeat for several).")],
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Folder for <stack>.json, <stack>.md and <stack>/k8s/ [default: plan/ in the project].",
        ),
    ] = None,
    diff: Annotated[
        bool, typer.Option("--diff", help="Print the changes against the committed plan; write nothing.")
    ] = False,
    check: Annotated[
        bool, typer.Option("--check", help="Exit 1 if the committed plan is stale; write nothing.")
    ] = False,
    policy: Annotated[
        bool, typer.Option("--policy/--no-policy", help="Fail on mandatory policy violations.")
    ] = True,
    program: Annotated[str, typer.Option(help="The Pulumi program, module:function or file.py:function.")] = (
        "inferstack.components.program:main"
    ),
    project_dir: Annotated[Path, typer.Option(help="A folder inside the Pulumi project.")] = Path("."),
) -> None:
    """Render what `pulumi up` would declare, offline, under Pulumi's mocks: a deterministic snapshot,
    a Markdown summary with a diagram, and the Kubernetes manifests (validated against the schemas)."""
    from inferstack.errors import InferstackError
    from inferstack.plan.diff import diff_snapshots, render_diff
    from inferstack.plan.render import make_plan, stale_files, write_plan
    from inferstack.plan.snapshot import load_snapshot

    root = _root(project_dir)
    folder = out_dir if out_dir is not None else root / DEFAULT_OUT
    failed = False
    for name in stack:
        result = make_plan(name, root, program)
        shown = _shown(folder, root)
        if diff:
            committed = folder / f"{name}.json"
            if not committed.is_file():
                raise InferstackError(
                    f"no committed plan {shown}/{name}.json to diff against "
                    f"(run `inferstack plan --stack {name}` first)"
                )
            out.print(
                render_diff(diff_snapshots(load_snapshot(committed), result.snapshot), name),
                end="",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )
        if check:
            stale = stale_files(result, folder)
            if stale:
                err.print(
                    f"[bold red]stale:[/] {shown}/{name} differs from the program ({len(stale)} files); "
                    f"run `inferstack plan --stack {name}` and commit {shown}/",
                    highlight=False,
                    soft_wrap=True,
                )
                failed = True
            else:
                out.print(f"{shown}/{name} is up to date", highlight=False, soft_wrap=True)
        if not diff and not check:
            write_plan(result, folder)
            out.print(
                f"wrote {shown}/{name}.json, {name}.md and {len(result.manifests)} manifests in {name}/k8s/",
                highlight=False,
                soft_wrap=True,
            )
        for v in result.violations:
            level = "[red]mandatory[/]" if v.mandatory else "[yellow]advisory[/]"
            err.print(f"policy {v.policy} ({level}): {escape(v.message)}", highlight=False, soft_wrap=True)
        if policy and result.mandatory_violations:
            failed = True
    if check:
        from inferstack.plan.stackconfig import stack_names

        known = set(stack_names(root))
        for orphan in sorted(p.stem for p in folder.glob("*.json") if p.stem not in known):
            # a removed stack's plan would go on showing reviewers resources nobody declares
            err.print(
                f"[bold red]stale:[/] {_shown(folder, root)}/{orphan}.json is the plan of stack "
                f"{orphan!r}, which has no Pulumi.{orphan}.yaml any more; delete {orphan}.json, "
                f"{orphan}.md and {orphan}/ from {_shown(folder, root)}/",
                highlight=False,
                soft_wrap=True,
            )
            failed = True
    if failed:
        raise typer.Exit(code=1)


def _shown(folder: Path, root: Path) -> str:
    try:
        return folder.resolve().relative_to(Path.cwd().resolve()).as_posix() or "."
    except ValueError:
        return str(folder)


@cli_errors
def destroy(
    stack: Annotated[str, typer.Option("--stack", "-s", help="Stack to tear down.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    allow_prod: Annotated[
        bool, typer.Option("--allow-prod", help="Allow destroying a production stack.")
    ] = False,
    plan_dir: Annotated[
        Path | None, typer.Option(help="Folder of the committed plan [default: plan/ in the project].")
    ] = None,
    project_dir: Annotated[Path, typer.Option(help="A folder inside the Pulumi project.")] = Path("."),
) -> None:
    """Show what a destroy deletes and what it keeps (from the plan snapshot), confirm, then run
    `pulumi destroy`. Protected resources are kept (--exclude-protected); production needs --allow-prod."""
    from inferstack.errors import InferstackError
    from inferstack.plan.destroy import describe, is_production, teardown
    from inferstack.plan.snapshot import load_snapshot

    root = _root(project_dir)
    folder = plan_dir if plan_dir is not None else root / DEFAULT_OUT
    path = folder / f"{stack}.json"
    if not path.is_file():
        raise InferstackError(f"no plan snapshot {path}: run `inferstack plan --stack {stack}` first")
    snapshot = load_snapshot(path)
    prod = is_production(stack, snapshot)
    if prod and not allow_prod:
        raise fail(f"stack {stack} is a production stack: refusing to destroy it without --allow-prod")
    t = teardown(snapshot)
    out.print("\n".join(describe(t)), markup=False, highlight=False, soft_wrap=True)
    out.print(
        f"(from {path.name}; the deployed state may differ, `pulumi stack --stack {stack}` shows it)",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    if not yes:
        if prod:
            typed = typer.prompt(f"type the stack name ({stack}) to destroy it")
            if typed.strip() != stack:
                raise fail(f"destroy cancelled: {typed.strip()!r} is not {stack!r}")
        elif not typer.confirm(f"destroy stack {stack}?", default=False):
            raise fail("destroy cancelled")
    command = t.command()
    if shutil.which("pulumi") is None:
        raise fail(
            "the Pulumi CLI is needed to destroy a stack and is not on PATH "
            f"(install it, log in to the stack's backend, then run: {' '.join(command)})"
        )
    out.print("running: " + " ".join(command), markup=False, highlight=False, soft_wrap=True)
    code = subprocess.call(command, cwd=root)
    if code != 0:
        raise fail(f"pulumi destroy exited with {code}")
