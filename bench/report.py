"""Turn a results document into the Markdown table, the target ratios and the plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from inferstack.bench.setups import SETUPS

TARGET_C = "32"


def _point(results: dict[str, Any], model: str, setup: str, c: str) -> dict[str, Any] | None:
    s = results["models"].get(model, {}).get("setups", {}).get(setup)
    if not s or s.get("status") != "ok":
        return None
    return s["points"].get(c)  # type: ignore[no-any-return]


def _floor_note(results: dict[str, Any]) -> str:
    """What the c=1 latency is made of on this machine: the bare HTTP round trip plus one ORT run."""
    setups = results["models"].get("mlp", {}).get("setups", {})
    floor = (setups.get("inferstack-json") or {}).get("http_floor_c1")
    ceiling = _point(results, "mlp", "ceiling", "1")
    if not floor or not ceiling or floor.get("p50_us") is None:
        return ""
    f, r = floor["p50_us"], ceiling["run_p50_us"]
    return f"HTTP floor p50 {f:.0f} us + one ORT run at batch 1 {r:.0f} us = {f + r:.0f} us"


def _cpu_note(mine: dict[str, Any] | None, theirs: dict[str, Any] | None) -> str:
    """The same comparison in server CPU time per request (robust to other load on the machine)."""
    a = mine.get("cpu_us_per_request") if mine else None
    b = theirs.get("cpu_us_per_request") if theirs else None
    return f"by CPU time per request: {b / a:.2f}x" if a and b else ""


def _ratio(a: dict[str, Any] | None, b: dict[str, Any] | None, key: str = "throughput") -> float | None:
    if a is None or b is None or not b.get(key):
        return None
    return float(a[key]) / float(b[key])


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, each with the measured value (None when a setup did not run)."""
    rows: list[dict[str, Any]] = []

    def add(name: str, value: float | None, op: str, goal: float, unit: str = "x", note: str = "") -> None:
        met = None if value is None else (value >= goal if op == ">=" else value < goal)
        rows.append(
            {"target": name, "value": value, "goal": f"{op} {goal:g}{unit}", "met": met, "note": note}
        )

    def p(model: str, setup: str, c: str = TARGET_C) -> dict[str, Any] | None:
        return _point(results, model, setup, c)

    plain = p("mlp", "plain-json")
    for body, goal in (("json", 1.3), ("binary", 1.6)):
        mine = p("mlp", f"inferstack-{body}")
        notes = ["the plain peer speaks JSON only"] if body == "binary" else []
        note = "; ".join(notes + [n for n in [_cpu_note(mine, plain)] if n])
        add(f"MLP c=32: inferstack {body} / plain JSON", _ratio(mine, plain), ">=", goal, note=note)
    for body in ("json", "binary"):
        c1 = p("mlp", f"inferstack-{body}", "1")
        add(
            f"MLP c=1: inferstack {body} p50",
            None if c1 is None else c1["p50_us"],
            "<",
            250,
            " us",
            note=_floor_note(results),
        )
    for c in ("1", "8", "32", "128"):
        for body in ("json", "binary"):
            mine, ceiling = p("transformer", f"inferstack-{body}", c), p("transformer", "ceiling", c)
            r = _ratio(mine, ceiling)
            notes = [_cpu_note(mine, ceiling)]
            if mine is not None and mine.get("paired_ratio") is not None:
                # the ceiling measured right after each run: the same moment's machine
                notes.insert(0, f"vs the ceiling measured before and after all servers: {r:.3f}x"
                             if r is not None else "")
                r = mine["paired_ratio"]
            if r is not None or c == TARGET_C:
                add(
                    f"transformer c={c}: inferstack {body} / ceiling",
                    r,
                    ">=",
                    0.95,
                    note="; ".join(n for n in notes if n),
                )
    for peer, goal in (("triton", 3.0), ("kserve", 2.0)):
        for body in ("json", "binary"):
            mine, theirs = p("mlp", f"inferstack-{body}"), p("mlp", f"{peer}-{body}")
            if theirs is None and body == "binary":
                theirs = p("mlp", f"{peer}-json")
                if theirs is None:
                    continue
            note = ""
            if mine is not None and theirs is not None:
                note = f"p99 {_fmt_ms(mine['p99_us'])} ms vs {_fmt_ms(theirs['p99_us'])} ms"
                note = "; ".join(n for n in [note, _cpu_note(mine, theirs)] if n)
            add(f"MLP c=32: inferstack {body} / {peer}", _ratio(mine, theirs), ">=", goal, note=note)
    # gRPC (ModelInfer with raw contents): against Triton's gRPC, and against our own binary HTTP
    grpc = p("mlp", "inferstack-grpc")
    for other, goal in (("triton-grpc", 2.0), ("inferstack-binary", 0.7)):
        theirs = p("mlp", other)
        note = ""
        if grpc is not None and theirs is not None:
            note = f"p50 {_fmt_ms(grpc['p50_us'])} / {_fmt_ms(theirs['p50_us'])} ms, p99 " \
                   f"{_fmt_ms(grpc['p99_us'])} / {_fmt_ms(theirs['p99_us'])} ms"
            note = "; ".join(n for n in [note, _cpu_note(grpc, theirs)] if n)
        add(f"MLP c=32: inferstack grpc / {other}", _ratio(grpc, theirs), ">=", goal, note=note)
    return rows


def _fmt_ms(us: float | None) -> str:
    return "-" if us is None else f"{us / 1000:.2f}"


def _load_note(results: dict[str, Any]) -> str:
    start, end = results.get("load_average_start"), results.get("load_average_end")
    if not start:
        return ""
    source = results.get("source")
    note = ""
    if source:
        note = f" Code: commit {source['commit']}" + (
            " with local runtime changes." if source["runtime_modified"] else "."
        )
    note += f" Load average (1 min) when the run started: {start[0]:.2f}"
    return note + (f", when it ended: {end[0]:.2f}." if end else ".")


def _fmt_us(us: float | None) -> str:
    return "-" if us is None else f"{us:.0f}"


def _fmt_x(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    cfg = results["config"]
    v = m["versions"]
    lines = [
        f"# Benchmark results ({results['started']})",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores"
        + (f" (virtual machine, {m['hypervisor']})" if m.get("hypervisor") else "")
        + f", {m['memory_gib']} GiB, Linux {m['kernel']}, "
        f"Python {m['python']}; onnxruntime {v.get('onnxruntime')}, numpy {v.get('numpy')}, "
        f"starlette {v.get('starlette')}, uvicorn {v.get('uvicorn')}, {v.get('wrk')}.",
        "",
        f"Method: each server pinned to core {cfg['server']['core']} (taskset), ORT with one intra-op "
        f"thread; wrk -t1 -cN pinned to core {cfg['client_core']}; {cfg['warmup_s']:g} s warm-up, then "
        f"{cfg['repeats']} x {cfg['duration_s']:g} s per point (median of the repeats). Throughput counts "
        f"2xx responses per second; errors are non-2xx responses plus socket errors. Batching servers: "
        f"max batch {cfg['server']['max_batch_size']}, "
        f"max queue delay {cfg['server']['max_queue_delay_us']} us. "
        f"Ceiling: one thread looping session.run on a ready batch of min(c, "
        f"{cfg['server']['max_batch_size']}) rows, requests/s = rows x runs / s (mean of a measurement "
        f"before and one after the model's servers)." + _load_note(results),
        "",
    ]
    peers: dict[str, str] = {}
    for mres in results["models"].values():
        for setup, r in mres["setups"].items():
            if r.get("versions"):
                peers[setup.split("-")[0]] = ", ".join(f"{k} {v}" for k, v in r["versions"].items())
    if peers:
        lines += ["Peer environments: " + "; ".join(f"{k}: {v}" for k, v in sorted(peers.items())) + ".", ""]
    for model, mres in results["models"].items():
        lines += [
            f"## {model}",
            "",
            "| setup | c | req/s | p50 ms | p90 ms | p99 ms | errors | CPU us/req | mean batch, ORT busy |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for setup in SETUPS:
            s = mres["setups"].get(setup)
            if s is None:
                continue
            if s.get("status") != "ok":
                lines.append(f"| {setup} | - | {s.get('status')}: {s.get('reason', '')[:160]} | | | | | | |")
                continue
            for c, pt in s["points"].items():
                if setup == "ceiling":
                    lines.append(
                        f"| ceiling (batch {pt['batch']}) | {c} | {pt['throughput']:.0f} | "
                        f"{_fmt_ms(pt['run_p50_us'])} (run) | - | - | - | "
                        f"{_fmt_us(pt.get('cpu_us_per_request'))} | {pt['batch']}, 100% |"
                    )
                else:
                    b = pt.get("batching")
                    batching = f"{b['mean_batch']:.1f}, {b['compute_share']:.0%}" if b else "-"
                    lines.append(
                        f"| {setup} | {c} | {pt['throughput']:.0f} | {_fmt_ms(pt['p50_us'])} | "
                        f"{_fmt_ms(pt['p90_us'])} | {_fmt_ms(pt['p99_us'])} | {pt['errors']} | "
                        f"{_fmt_us(pt.get('cpu_us_per_request'))} | {batching} |"
                    )
        floors = [
            f"{setup.split('-')[0]} p50 {_fmt_ms(r['http_floor_c1']['p50_us'])} ms"
            for setup, r in mres["setups"].items()
            if r.get("http_floor_c1") and setup.endswith("-json")
        ]
        if floors:
            lines += [
                "",
                "HTTP floor (GET of the model's ready endpoint, no model work, c=1): "
                + ", ".join(floors)
                + ".",
            ]
        starts = [
            f"{s} {r['cold_start_s']:.2f} s"
            for s, r in mres["setups"].items()
            if r.get("cold_start_s") is not None
        ]
        if starts:
            lines += ["", "Process start to ready: " + ", ".join(starts) + "."]
        lines.append("")
    lines += ["## Targets", "", "| target | measured | goal | met |", "|---|---:|---|---|"]
    for t in targets(results):
        value = t["value"]
        shown = "not run" if value is None else (f"{value:.0f} us" if "us" in t["goal"] else f"{value:.3f}x")
        met = {True: "yes", False: "**no**", None: "-"}[t["met"]]
        note = f" ({t['note']})" if t["note"] else ""
        lines.append(f"| {t['target']}{note} | {shown} | {t['goal']} | {met} |")
    ov = results.get("overload")
    if ov:
        lines += ["", "## Overload", ""]
        if ov.get("status") == "failed":
            lines.append(f"Failed: {ov['reason']}")
        else:
            o, b = ov["overload"], ov["baseline_c32"]
            rss = [r for _, r in ov["rss_mb"]]
            lines += [
                f"{ov['model']}, {ov['setup']}, queue {ov['queue_size']}, "
                f"{ov['connections']} connections for "
                f"{o['seconds']:.0f} s: statuses {o['statuses']}, socket errors {o['socket_errors']}; "
                f"{o['throughput']:.0f} successful req/s; p99 of the 200s at most "
                f"{_fmt_ms(o['ok_p99_upper_us'])} ms (all responses: p99 {_fmt_ms(o['p99_us'])} ms) vs p99 "
                f"{_fmt_ms(b['p99_us'])} ms at c=32 "
                f"(ratio {_fmt_x(ov['ok_p99_upper_over_c32_p99'])}, goal <= 3); "
                f"RSS {min(rss):.0f} to {max(rss):.0f} MB over the run "
                f"(growth over the second half {_fmt_x(ov['rss_growth_mb_second_half'])} MB); "
                f"only 200 and 503: {'yes' if ov['only_200_and_503'] else 'no'}.",
            ]
    cs = results.get("cold_start")
    if cs:
        lines += ["", "## Cold start", ""]
        if cs.get("status") == "failed":
            lines.append(f"Failed: {cs['reason']}")
        else:
            lines.append(
                f"inferstack on a {cs['model_bytes'] / 1e6:.0f} MB model on local disk: process start to "
                f"ready {cs['start_to_ready_s']:.2f} s (median of {len(cs['start_to_ready_runs'])}); "
                f"onnxruntime alone "
                f"loads it in {cs['ort_load_s']:.2f} s, so the server adds {cs['overhead_s']:.2f} s "
                f"(goal: ready within 2 s + the ORT load time: {'met' if cs['met'] else '**missed**'})."
            )
    lines.append("")
    return "\n".join(lines)


def plots(results: dict[str, Any], out_dir: Path, stem: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for model, mres in results["models"].items():
        fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
        for setup in SETUPS:
            s = mres["setups"].get(setup)
            if not s or s.get("status") != "ok":
                continue
            cs = [int(c) for c in s["points"]]
            tp = [p["throughput"] for p in s["points"].values()]
            style = "--" if setup == "ceiling" else "-"
            a.plot(cs, tp, style, marker="o", label=setup)
            if setup != "ceiling":
                measured = [p for p in s["points"].values() if p.get("p99_us") is not None]
                b.plot(
                    [p["throughput"] for p in measured],
                    [p["p99_us"] / 1000 for p in measured],
                    marker="o",
                    label=setup,
                )
        a.set(
            xscale="log",
            xlabel="concurrency (connections)",
            ylabel="requests/s",
            title=f"{model}: throughput",
        )
        a.set_xticks([1, 8, 32, 128], labels=["1", "8", "32", "128"])
        b.set(
            yscale="log", xlabel="requests/s", ylabel="p99 latency (ms)", title=f"{model}: p99 vs throughput"
        )
        for ax in (a, b):
            ax.grid(True, alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / f"{stem}-{model}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def write(results: dict[str, Any], out_dir: Path, stem: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    j = out_dir / f"{stem}.json"
    j.write_text(json.dumps(results, indent=1) + "\n")
    md = out_dir / f"{stem}.md"
    md.write_text(markdown(results))
    return [j, md, *plots(results, out_dir, stem)]
