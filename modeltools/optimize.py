"""``inferstack optimize``: try variants of an exported model, keep the fastest inside the budget.

Every candidate is built, loaded on the target provider, scored against the fp32 reference on the
user's data (max abs diff and a task metric: top-1 agreement for classifiers, cosine similarity
otherwise) and benchmarked (latency at batch 1, throughput at a larger batch). Which variant wins
is measured, never assumed. A candidate that fails is reported with its error, not dropped.
"""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from inferstack.modeltools import batching, bench, candidates, signature
from inferstack.modeltools._text import first_line
from inferstack.modeltools.flags import check_field
from inferstack.modeltools.spec import (
    Dim,
    InputSpec,
    SpecError,
    check_example,
    make_arrays,
    parse_inputs,
    read_npz,
)
from inferstack.modeltools.staging import check_destination, staged_dir

from inferstack.errors import InferstackError
from inferstack.manifest import (
    Manifest,
    TensorSpec,
    file_entries,
    load_manifest,
    verify_files,
    write_manifest,
)

CALIBRATION_SAMPLES = 64
PLOT_NAME = "optimize.png"
_BUDGET = re.compile(r"^\s*(top1|cosine|max_abs)\s*(>=|<=)\s*([0-9.eE+-]+)\s*$")


class OptimizeError(InferstackError):
    """The optimization cannot run as asked."""


@dataclass
class OptimizeOptions:
    package: Path
    out: Path
    data: Path | None = None
    budget: list[str] = field(default_factory=list)
    providers: list[str] = field(default_factory=list)
    candidates: list[str] = field(default_factory=list)
    objective: str = "latency"
    batch: int = 32
    threads: int = 1
    seconds: float = 1.0
    min_gain: float = 0.05
    samples: int = 256
    name: str | None = None


@dataclass
class Candidate:
    name: str
    description: str
    status: str = "ok"  # ok | over budget | failed | skipped
    note: str = ""
    latency_ms: float | None = None  # p50 at batch 1
    latency_p90_ms: float | None = None
    throughput: float | None = None  # items/s at the large batch
    speedup: float | None = None  # vs the reference, on the objective
    max_abs_diff: float | None = None
    metric: float | None = None
    accuracy: float | None = None  # against the data's labels, when given
    load_ms: float | None = None
    size_bytes: int | None = None
    path: Path | None = None

    def record(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("path")
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in d.items()}


@dataclass
class OptimizeResult:
    package: Path
    out: Path
    providers: list[str]
    batch: int
    metric: str
    candidates: list[Candidate]
    chosen: str
    why: str
    data_note: str
    budget_text: str
    objective: str
    plot: Path
    manifest: Manifest


# ---- inputs ---------------------------------------------------------------------------------------


def parse_budget(items: list[str], classifier: bool) -> list[tuple[str, str, float]]:
    """``top1>=0.99`` style limits; the default depends on whether the model classifies."""
    if not items:
        items = ["top1>=0.99"] if classifier else ["cosine>=0.999"]
    out = []
    for item in items:
        m = _BUDGET.match(item)
        if not m:
            raise OptimizeError(
                f"--budget {item!r}: expected top1>=X, cosine>=X or max_abs<=X (e.g. top1>=0.99)"
            )
        metric, op, value = m.group(1), m.group(2), float(m.group(3))
        if (metric == "max_abs") != (op == "<="):
            raise OptimizeError(f"--budget {item!r}: use {metric}{'<=' if metric == 'max_abs' else '>='}X")
        if metric == "top1" and not classifier:
            raise OptimizeError(
                f"--budget {item!r}: top-1 agreement needs a classifier output of shape [batch, classes]; "
                "use cosine>=X"
            )
        out.append((metric, op, value))
    return out


def within(budget: list[tuple[str, str, float]], scores: dict[str, float]) -> list[str]:
    """The budget limits that ``scores`` break, in words."""
    broken = []
    for metric, op, value in budget:
        got = scores[metric] if metric != "max_abs" else scores["max_abs_diff"]
        ok = got >= value if op == ">=" else got <= value
        if not ok:
            broken.append(f"{metric} {got:.4g} {'<' if op == '>=' else '>'} {value:g}")
    return broken


def is_classifier(outputs: list[TensorSpec]) -> bool:
    first = outputs[0]
    return first.datatype.startswith("FP") and len(first.shape) == 2 and first.shape[1] > 1


def input_specs(manifest: Manifest) -> list[InputSpec]:
    """The inputs as export was given them (``source.inputs``, with their value ranges), or, for a
    package without that record, specs read from the signature (-1 dimensions become dynamic)."""
    recorded = (manifest.source or {}).get("inputs")
    if recorded:
        try:
            specs = parse_inputs(list(recorded))
        except SpecError:
            specs = []
        if [(s.name, s.datatype, len(s.dims)) for s in specs] == [
            (t.name, t.datatype, len(t.shape)) for t in manifest.inputs
        ]:
            return specs
    out = []
    for t in manifest.inputs:
        dims = tuple(
            Dim(None, "batch" if i == 0 else f"{t.name}_{i}", 2 if i == 0 else 8)
            if d == -1
            else Dim(d, None, d)
            for i, d in enumerate(t.shape)
        )
        out.append(InputSpec(t.name, dims, t.datatype))
    return out


def load_data(path: Path | None, manifest: Manifest, samples: int) -> tuple[dict[str, np.ndarray], Any, str]:
    """Scoring data as {input: array}, labels (or None) and a note on where it came from.

    Generated data follows the export's ``--input`` specs (value ranges, padding masks; see
    :mod:`spec`); a file is checked against them by :func:`spec.load_example`.
    """
    batched = manifest.max_batch_size > 0
    specs = input_specs(manifest)
    lead = specs[0].dims[0].name if batched and specs and specs[0].dims else None
    if path is None:
        data = make_arrays(specs, {lead: samples} if lead else {}, seed=0)
        what = f"{samples} random samples" if batched else "one random input of the model's fixed shape"
        return (
            data,
            None,
            (
                f"generated: {what} (the --input value ranges; else floats standard normal, integers "
                "0-9, *mask* inputs padding masks); pass --data FILE.npz with real inputs for scores "
                "that reflect your traffic"
            ),
        )
    try:
        arrays = read_npz(path, "--data")
        names = [t.name for t in specs]
        rest = [k for k in arrays if k != "labels"]
        if len(names) == 1 and len(rest) == 1 and names[0] not in arrays:
            arrays = {names[0]: arrays[rest[0]], **{k: v for k, v in arrays.items() if k == "labels"}}
        arrays = check_example(arrays, specs, f"--data {path}", extra=("labels",))
    except SpecError as e:
        raise OptimizeError(str(e)) from None
    labels = arrays.pop("labels", None)
    data = arrays
    rows = next(iter(data.values())).shape[0] if batched else None
    if batched and rows is not None and rows > samples * 16:
        data = {k: v[: samples * 16] for k, v in data.items()}
        labels = labels[: samples * 16] if labels is not None else None
    if labels is not None and rows is not None and labels.shape[0] < min(rows, samples * 16):
        raise OptimizeError(f"--data {path}: 'labels' has {labels.shape[0]} rows, the inputs {rows}")
    n = next(iter(data.values())).shape[0] if batched else 1
    note = f"{path}: {n} samples" + (" with labels" if labels is not None else "")
    return data, labels, note


def _providers(wanted: list[str]) -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    chosen = wanted or ["CPUExecutionProvider"]
    for p in chosen:
        if p not in available:
            raise OptimizeError(f"--providers {p}: not available here (available: {', '.join(available)})")
    if "CPUExecutionProvider" not in chosen:
        chosen = [*chosen, "CPUExecutionProvider"]
    return chosen


# ---- choice ---------------------------------------------------------------------------------------


def _objective_value(c: Candidate, objective: str) -> float:
    if objective == "throughput":
        return -(c.throughput or 0.0)
    return c.latency_ms if c.latency_ms is not None else float("inf")


def choose(cands: list[Candidate], objective: str, min_gain: float, metric: str) -> tuple[str, str]:
    """The fastest candidate inside the budget, and the reason in words."""
    ref = next(c for c in cands if c.name == "reference")
    eligible = [c for c in cands if c.status == "ok"]
    if not eligible:
        raise OptimizeError("no candidate is inside the budget, not even the reference")
    best = min(eligible, key=lambda c: _objective_value(c, objective))
    unit = "p50 latency at batch 1" if objective == "latency" else "throughput"

    def fmt(c: Candidate) -> str:
        if objective == "latency":
            return f"{c.latency_ms:.3f} ms"
        return f"{c.throughput:,.0f} items/s"

    others = [c for c in eligible if c is not best]
    runner_up = min(others, key=lambda c: _objective_value(c, objective)) if others else None
    over = [c.name for c in cands if c.status == "over budget"]
    failed = [c.name for c in cands if c.status == "failed"]
    tail = ""
    if over:
        tail += f"; over budget: {', '.join(over)}"
    if failed:
        tail += f"; failed: {', '.join(failed)}"
    if best is ref or (best.speedup or 0) < 1 + min_gain:
        variants = [c for c in eligible if c is not ref]
        if not variants:
            why = f"no variant but the reference is inside the budget, so the exported model is kept{tail}"
        else:
            o = min(variants, key=lambda c: _objective_value(c, objective))
            why = (
                f"the fastest variant inside the budget, {o.name} at {fmt(o)} ({o.speedup or 0:.2f}x), "
                f"is not {min_gain:.0%} faster on {unit} than the reference ({fmt(ref)}), "
                f"so the exported model is kept{tail}"
            )
        return "reference", why
    score = f"{metric} {best.metric:.4f}" if best.metric is not None else ""
    why = (
        f"fastest inside the budget on {unit}: {fmt(best)} vs {fmt(ref)} for the reference "
        f"({best.speedup:.2f}x), {score}, max abs diff {best.max_abs_diff:.2e}"
        + (f"; next: {runner_up.name} at {fmt(runner_up)}" if runner_up else "")
        + tail
    )
    return best.name, why


# ---- the run --------------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet_logging() -> Iterator[None]:
    """ORT's quantizer logs per-tensor warnings on the root logger; the table reports what matters."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _selected(opts: OptimizeOptions, providers: list[str]) -> list[tuple[str, str | None]]:
    """(candidate, reason to skip or None), in the fixed order."""
    unknown = [c for c in opts.candidates if c not in candidates.ORDER]
    if unknown:
        raise OptimizeError(f"--candidate {unknown[0]!r}: unknown; choose from {', '.join(candidates.ORDER)}")
    gpu = any(p != "CPUExecutionProvider" for p in providers)
    out: list[tuple[str, str | None]] = []
    for name in candidates.ORDER:
        if opts.candidates and name not in opts.candidates and name != "reference":
            out.append((name, "not selected (--candidate)"))
        elif name in candidates.GPU_ONLY and not gpu and name not in opts.candidates:
            out.append((name, "for GPU targets; CPU has no fast fp16 kernels (--candidate fp16 forces it)"))
        else:
            out.append((name, None))
    return out


def optimize(opts: OptimizeOptions, progress: Any = lambda _m: None) -> OptimizeResult:
    if opts.objective not in ("latency", "throughput"):
        raise OptimizeError(f"--objective {opts.objective!r}: choose latency or throughput")
    if opts.batch < 1 or opts.seconds <= 0 or opts.threads < 0 or opts.samples < 1:
        raise OptimizeError("--batch, --seconds and --samples must be positive, --threads >= 0")
    if not opts.package.is_dir():
        raise OptimizeError(f"{opts.package}: no such package directory")
    if opts.out.resolve() == opts.package.resolve():
        raise OptimizeError(f"--out {opts.out}: must differ from the package being optimized")
    if opts.name is not None:
        check_field("--name", "name", opts.name)
    check_destination(opts.out)
    manifest = load_manifest(opts.package)
    verify_files(opts.package, manifest)
    model_path = opts.package / manifest.model_file
    signature.load_graph(model_path)  # a corrupted graph is reported before any work
    providers = _providers(opts.providers)
    classifier = is_classifier(manifest.outputs)
    metric = "top1" if classifier else "cosine"
    budget = parse_budget(opts.budget, classifier)
    data, labels, data_note = load_data(opts.data, manifest, opts.samples)
    batched = manifest.max_batch_size > 0
    rows = next(iter(data.values())).shape[0] if batched else 1
    chunk = min(opts.batch, manifest.max_batch_size) if batched else None
    calibration = (
        [bench.slice_feeds(data, i, i + 1) for i in range(min(rows, CALIBRATION_SAMPLES))]
        if batched
        else [data]
    )
    external = any(f.path != manifest.model_file for f in manifest.files)

    cands: list[Candidate] = []
    runners: list[bench.Runner] = []
    reference_out: list[np.ndarray] = []
    with tempfile.TemporaryDirectory(
        prefix=".optimize-", dir=opts.out.parent if opts.out.parent.exists() else None
    ) as work:
        ctx = candidates.BuildContext(
            model_path.resolve(), Path(work).resolve(), providers, calibration, external
        )
        for name, skip in _selected(opts, providers):
            c = Candidate(name, candidates.DESCRIPTIONS[name])
            cands.append(c)
            if skip:
                c.status, c.note = "skipped", skip
                continue
            progress(f"building and scoring {name}")
            try:
                with _quiet_logging():
                    c.path = candidates.build(name, ctx)
                c.size_bytes = sum(p.stat().st_size for p in candidates.model_files(c.path))
                session, c.load_ms = bench.open_session(c.path, providers, opts.threads)
                outputs = bench.predict(session, data, rows, chunk)
            except Exception as e:
                if name == "reference":
                    on = f" on --data {opts.data}" if opts.data else ""
                    raise OptimizeError(
                        f"{model_path}: the reference model does not run{on}: {first_line(e, limit=300)}"
                    ) from e
                c.status, c.note = "failed", first_line(e, limit=300)
                continue
            if name == "reference":
                reference_out = outputs
            scores = bench.score(reference_out, outputs, classifier)
            c.max_abs_diff, c.metric = scores["max_abs_diff"], scores[metric]
            if labels is not None and classifier:
                c.accuracy = bench.accuracy(outputs[0], labels)
            broken = within(budget, scores)
            if broken:
                c.status, c.note = "over budget", "; ".join(broken)
            runners.append(bench.Runner(name, session, c.load_ms))

        progress(f"benchmarking {len(runners)} variants")
        one = bench.slice_feeds(data, 0, 1) if batched else data
        many = None
        if batched:
            reps = -(-opts.batch // rows)
            many = {k: np.concatenate([v] * reps)[: opts.batch] for k, v in data.items()}
            many_n = opts.batch
        measured = [r for r in runners if next(c for c in cands if c.name == r.name).status != "failed"]
        bench.measure(measured, one, many, opts.seconds)
        by_name = {c.name: c for c in cands}
        for r in measured:
            c = by_name[r.name]
            c.latency_ms = float(np.percentile(r.latency, 50) * 1e3)
            c.latency_p90_ms = float(np.percentile(r.latency, 90) * 1e3)
            if many is not None and r.batch_times:
                c.throughput = float(many_n / np.percentile(r.batch_times, 50))
        ref = by_name["reference"]
        for c in cands:
            if c.latency_ms is None:
                continue
            if opts.objective == "latency":
                c.speedup = (ref.latency_ms or 0) / c.latency_ms
            elif c.throughput and ref.throughput:
                c.speedup = c.throughput / ref.throughput
        chosen, why = choose(cands, opts.objective, opts.min_gain, metric)
        runners.clear()
        measured.clear()

        progress(f"packaging {chosen}")
        budget_text = ", ".join(f"{m}{op}{v:g}" for m, op, v in budget)
        with staged_dir(opts.out) as stage:
            src = by_name[chosen].path
            assert src is not None
            files = []
            for p in candidates.model_files(src):
                target = stage / ("model.onnx" + p.name[len(src.name) :])
                shutil.copyfile(p, target)
                files.append(target.name)
            graph = signature.load_graph(stage / "model.onnx")
            inputs, outputs_sig = signature.signature(graph, stage / "model.onnx")
            if [(t.name, t.datatype) for t in inputs] != [(t.name, t.datatype) for t in manifest.inputs]:
                raise OptimizeError(f"variant {chosen} changed the model's inputs; refusing to package it")
            plot_path = stage / PLOT_NAME
            from inferstack.modeltools.plot import plot

            plot(cands, chosen, metric, budget, plot_path, title=f"{manifest.name}: latency vs {metric}")
            record = {
                "chosen": chosen,
                "why": why,
                "objective": opts.objective,
                "providers": providers,
                "threads": opts.threads,
                "batch": opts.batch,
                "metric": metric,
                "budget": budget_text,
                "data": data_note,
                "min_gain": opts.min_gain,
                "reference_digest": manifest.digest,
                "plot": PLOT_NAME,
                "candidates": [c.record() for c in cands],
            }
            # A variant may mix rows where the exported model did not (int8-dynamic quantizes each
            # activation with the range of the whole batch): merging stays on only if it passes.
            max_batch, batch_check = manifest.max_batch_size, manifest.batch_check
            if max_batch > 0 and chosen != "reference":
                progress(f"batch-independence check of {chosen}")
                variant_check = batching.check_package(stage / "model.onnx", manifest)
                batch_check = variant_check.to_dict()
                max_batch = max_batch if variant_check.batchable else 0
            # The model keeps its version (clients address /v2/models/<name>/versions/<version>);
            # the variant is optimization.chosen.
            new = Manifest(
                name=opts.name or manifest.name,
                version=manifest.version,
                model_file="model.onnx",
                files=file_entries(stage, sorted(files)),
                inputs=manifest.inputs,
                outputs=manifest.outputs,
                max_batch_size=max_batch,
                batch_check=batch_check,
                opset=signature.opset(graph),
                exporter=manifest.exporter,
                producer=manifest.producer,
                parity=manifest.parity,
                optimization=record,
                source=manifest.source,
            )
            write_manifest(stage, new)
    return OptimizeResult(
        package=opts.package,
        out=opts.out,
        providers=providers,
        batch=opts.batch,
        metric=metric,
        candidates=cands,
        chosen=chosen,
        why=why,
        data_note=data_note,
        budget_text=budget_text,
        objective=opts.objective,
        plot=opts.out / PLOT_NAME,
        manifest=new,
    )
