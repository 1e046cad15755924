"""What the model tools print: progress on stderr, results as rich tables on stdout."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.markup import escape
from rich.table import Table

from inferstack.console import err, out, verbose
from inferstack.manifest import Manifest

if TYPE_CHECKING:
    from inferstack.modeltools.optimize import OptimizeResult
    from inferstack.modeltools.verify import Check


@contextmanager
def status(what: str) -> Iterator[Callable[[str], None]]:
    """A spinner on stderr whose text each step updates; on a pipe, one dim line per step."""
    if err.is_terminal:
        with err.status(what) as st:
            yield lambda msg: st.update(f"{what}: {msg}")
    elif verbose():
        yield lambda msg: err.print(f"[dim]{msg}[/]", highlight=False)
    else:  # a pipe or a CI log: the result table, or the one error line, and nothing else
        yield lambda _msg: None


def _shape(shape: list[int]) -> str:
    return "[" + ", ".join("?" if d == -1 else str(d) for d in shape) + "]"


def print_export(manifest: Manifest, path: Path) -> None:
    table = Table(title=f"{manifest.name} {manifest.version} -> {path}", title_justify="left")
    table.add_column("tensor")
    table.add_column("kind")
    table.add_column("datatype")
    table.add_column("shape")
    for kind, tensors in (("input", manifest.inputs), ("output", manifest.outputs)):
        for t in tensors:
            table.add_row(t.name, kind, t.datatype, _shape(t.shape))
    out.print(table)
    files = ", ".join(f"{f.path} ({f.bytes:,} B)" for f in manifest.files)
    out.print(f"files: {files}")
    out.print(
        f"opset {manifest.opset}, max_batch_size {manifest.max_batch_size}, digest {manifest.digest[:12]}"
    )
    if manifest.batch_check:
        verdict = "batchable" if manifest.batch_check.get("batchable") else "[yellow]not batchable[/]"
        out.print(f"batch check: {verdict}: {manifest.batch_check.get('reason', '')}", highlight=False)
    if manifest.exporter == "torchscript":
        why = (manifest.source or {}).get("exporter_reason") or ""
        out.print(
            "exporter: [yellow]torchscript[/] (torch.onnx.export dynamo=False)"
            + (
                f", because {escape(why)}"
                if why.startswith("--exporter")
                else f"; the dynamo exporter failed: {escape(why)}"
            )
        )
    if manifest.parity:
        p = manifest.parity
        sizes: dict[str, list[int]] = {}
        for b in p["batches"]:
            for dim, n in (b.get("dims") or ({"batch": b["batch"]} if b["batch"] else {})).items():
                if n not in sizes.setdefault(dim, []):
                    sizes[dim].append(n)
        where = "; ".join(f"{d} {sorted(v)}" for d, v in sizes.items()) or "the fixed shape"
        skipped = [", ".join(f"{k}={v}" for k, v in c["dims"].items()) for c in p.get("skipped") or []]
        if skipped:
            where += f" (skipped, PyTorch refuses them: {'; '.join(skipped)})"
        out.print(
            f"parity vs PyTorch at {where}: max abs diff {p['max_abs_diff']:.2e}, "
            f"max rel diff {p['max_rel_diff']:.2e} (atol {p['atol']:g}, rtol {p['rtol']:g}): [green]passed[/]"
        )
    else:
        out.print("parity: [yellow]skipped[/] (--skip-parity)")


_STYLE = {"pass": "[green]pass[/]", "fail": "[bold red]FAIL[/]", "skip": "[yellow]skip[/]"}


def print_checks(package: Path, checks: list[Check]) -> None:
    table = Table(title=f"verify {package}", title_justify="left")
    table.add_column("check")
    table.add_column("result")
    table.add_column("detail", overflow="fold")
    for c in checks:
        table.add_row(c.name, _STYLE[c.status], c.detail)
    out.print(table)
    if not any(c.status == "fail" for c in checks):
        out.print(f"[green]{package}: all checks passed[/]")


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_optimize(result: OptimizeResult) -> None:
    with_acc = any(c.accuracy is not None for c in result.candidates)
    table = Table(
        title=f"optimize {result.package} -> {result.out} on {result.providers[0]}", title_justify="left"
    )
    columns = [
        "variant",
        "status",
        "p50 b1 ms",
        f"b{result.batch} items/s",
        "speedup",
        "max|diff|",
        result.metric,
    ]
    if with_acc:
        columns.append("accuracy")
    columns += ["load ms", "MB"]
    for col in columns:
        table.add_column(col, justify="left" if col in ("variant", "status") else "right", no_wrap=True)
    notes = []
    for c in result.candidates:
        chosen = c.name == result.chosen
        status = {
            "ok": "[green]ok[/]",
            "over budget": "[yellow]over budget[/]",
            "failed": "[red]failed[/]",
            "skipped": "[dim]skipped[/]",
        }[c.status]
        row = [
            f"[bold]{c.name}*[/]" if chosen else c.name,
            status,
            _fmt(c.latency_ms, ".3f"),
            _fmt(c.throughput, ",.0f"),
            _fmt(c.speedup, ".2f") + ("x" if c.speedup is not None else ""),
            _fmt(c.max_abs_diff, ".1e"),
            _fmt(c.metric, ".4f"),
        ]
        if with_acc:
            row.append(_fmt(c.accuracy, ".4f"))
        row += [_fmt(c.load_ms, ".0f"), _fmt(c.size_bytes / 1e6 if c.size_bytes else None, ".2f")]
        table.add_row(*row)
        if c.note:
            notes.append(f"  {c.name} ({c.status}): {c.note}")
    out.print(table)
    if notes:
        out.print("notes:\n" + "\n".join(notes), highlight=False)
    out.print(f"data: {result.data_note}", highlight=False)
    out.print(f"budget: {result.budget_text}; objective: {result.objective}", highlight=False)
    out.print(f"[bold]chosen: {result.chosen}[/] (*): {result.why}", highlight=False)
    out.print(f"package: {result.out}  plot: {result.plot}", highlight=False)
