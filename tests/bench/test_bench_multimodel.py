"""The several-models-in-one-process benchmark (bench/multimodel.py): its readings (each model's
throughput against its share of the alone throughput, the separate processes' and the
onnxruntime ceiling), its command line, the renamed package copies, the onnxruntime phase in its
pinned child, and short phases against real ``inferstack serve`` processes with two models (the
machinery, not the speed)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import pytest
from inferstack.bench import multimodel, payloads, wrk
from tiny_model import SPEC, W, build_package

from inferstack.manifest import load_manifest, verify_files


def _pt(throughput: float, p99_us: float = 2000.0, errors: int = 0) -> dict[str, float]:
    return {"throughput": throughput, "p50_us": p99_us / 2, "p99_us": p99_us, "errors": errors,
            "requests": int(throughput * 4)}


def test_each_model_is_read_against_its_share_of_the_alone_throughput() -> None:
    alone = [{**_pt(4000), "cpu_us": 120.0, "cpu_share": 0.9},
             {**_pt(3600), "cpu_us": 130.0, "cpu_share": 0.8},
             {**_pt(4400), "cpu_us": 200.0, "cpu_share": 0.7}]
    together = [
        {"models": {"a": _pt(1100), "b": _pt(900)}, "cpu_us": 240.0, "cpu_share": 0.5},
        {"models": {"a": _pt(900), "b": _pt(1000)}, "cpu_us": 260.0, "cpu_share": 0.6},
        {"models": {"a": _pt(1210), "b": _pt(1100)}, "cpu_us": 250.0, "cpu_share": 0.4},
    ]
    s = multimodel.summarize(alone, together, count=2, tolerance=0.05)
    assert s["share_throughput"] == pytest.approx(2000.0)  # median alone 4000 / 2 models
    a, b = s["models"]["a"], s["models"]["b"]
    # each together round against the alone round just before it: 1100/2000, 900/1800, 1210/2200
    assert a["round_ratios"] == pytest.approx([0.55, 0.5, 0.55])
    assert a["median_round_ratio"] == pytest.approx(0.55)
    assert a["ratio_of_medians"] == pytest.approx(1100 / 2000)
    assert b["round_ratios"] == pytest.approx([0.45, 1000 / 1800, 0.5])
    assert b["median_round_ratio"] == pytest.approx(0.5)
    # the total: 2000, 1900, 2310 together against 4000, 3600, 4400 alone
    assert s["total"]["median_throughput"] == pytest.approx(2000.0)
    assert s["total"]["median_round_ratio"] == pytest.approx(0.525)
    assert s["total"]["median_cpu_us"] == pytest.approx(250.0)
    # server CPU per request alone over together, round by round: 120/240, 130/260, 200/250
    assert s["total"]["median_round_cpu_ratio"] == pytest.approx(0.5)
    assert (s["alone"]["median_cpu_share"], s["total"]["median_cpu_share"]) == pytest.approx((0.8, 0.5))
    assert "0.50" in multimodel.table(s, 8)  # the worst model's and the CPU reading
    assert s["worst_ratio"] == pytest.approx(0.5)
    assert s["met"] is False


def test_separate_processes_and_the_onnxruntime_ceiling_are_read_against_the_same_alone_rounds() -> None:
    alone = [{**_pt(4000), "cpu_us": 100.0}, {**_pt(3600), "cpu_us": 120.0}, {**_pt(4400), "cpu_us": 110.0}]
    together = [{"models": {"a": _pt(1100), "b": _pt(900)}},
                {"models": {"a": _pt(900), "b": _pt(1000)}},
                {"models": {"a": _pt(1210), "b": _pt(1100)}}]
    separate = [{"models": {"a": _pt(800), "b": _pt(1000)}, "cpu_us": 300.0, "cpu_share": 0.9},
                {"models": {"a": _pt(900), "b": _pt(810)}, "cpu_us": 280.0, "cpu_share": 0.8},
                {"models": {"a": _pt(1100), "b": _pt(990)}, "cpu_us": 320.0, "cpu_share": 0.7}]
    ort = [{"rows": 8, "sessions": 2, "us_per_row_one": 26.0, "us_per_row_in_turn": 48.0},
           {"rows": 8, "sessions": 2, "us_per_row_one": 25.0, "us_per_row_in_turn": 52.0},
           {"rows": 8, "sessions": 2, "us_per_row_one": 27.0, "us_per_row_in_turn": 50.0}]
    s = multimodel.summarize(alone, together, 2, 0.05, separate, ort)
    assert s["worst_ratio"] == pytest.approx(0.5)  # b together: 900/2000, 1000/1800, 1100/2200
    sep = s["separate"]
    # against the same shares (2000, 1800, 2200): a 0.4, 0.5, 0.5; b 0.5, 0.45, 0.45
    assert sep["models"]["a"]["round_ratios"] == pytest.approx([0.4, 0.5, 0.5])
    assert sep["models"]["b"]["median_round_ratio"] == pytest.approx(0.45)
    assert (sep["worst_ratio"], sep["best_ratio"]) == pytest.approx((0.45, 0.5))
    # totals 1800, 1710, 2090 against 4000, 3600, 4400 alone and 2000, 1900, 2310 together
    assert sep["total"]["median_round_ratio"] == pytest.approx(0.475)
    assert sep["total"]["median_cpu_us"] == pytest.approx(300.0)
    assert sep["one_process_over_separate"] == pytest.approx(2000 / 1800)
    o = s["onnxruntime"]
    assert (o["us_per_row_one"], o["us_per_row_in_turn"]) == pytest.approx((26, 50))
    assert o["slowdown_us_per_row"] == pytest.approx(24)
    # 110 us of server CPU per request alone (median), 24 us more per row in turn
    assert o["ceiling"] == pytest.approx(110 / 134)
    assert o["worst_over_ceiling"] == pytest.approx(0.5 * 134 / 110)
    text = multimodel.table(s, 8)
    assert ("onnxruntime alone (8 rows a run): one session 26.0 us/row, 2 sessions in turn 50.0 us/row -> "
            "ceiling 0.82 x share (alone: 110 us of server CPU per request); worst model 0.50 x share = "
            "0.61 of the ceiling") in text
    assert ("2 separate processes: 0.45 to 0.50 x share, total 0.47 x alone, server CPU per request "
            "300 us") in text
    assert "(one process / separate: 1.11)" in text
    assert "| b (own process, with 1 others), c=8 | 990 |" in text
    # without them: no sections, no lines, and the same goal verdict
    plain = multimodel.summarize(alone, together, 2, 0.05)
    assert (plain["separate"], plain["onnxruntime"], plain["worst_ratio"]) == (None, None, s["worst_ratio"])
    assert "separate" not in multimodel.table(plain, 8) and "onnxruntime" not in multimodel.table(plain, 8)
    # no alone CPU reading: no ceiling to give
    no_cpu = multimodel.summarize([_pt(4000)], together[:1], 2, 0.05, None, ort[:1])
    assert no_cpu["onnxruntime"]["ceiling"] is None and "ceiling" not in multimodel.table(no_cpu, 8)
    with pytest.raises(ValueError, match="separate rounds: they must pair up"):
        multimodel.summarize(alone, together, 2, 0.05, separate[:2], ort)
    with pytest.raises(ValueError, match="onnxruntime rounds: they must pair up"):
        multimodel.summarize(alone, together, 2, 0.05, separate, ort[:1])


def test_the_goal_is_met_only_when_every_model_keeps_its_share_within_the_tolerance() -> None:
    alone = [_pt(4000)]

    def run(a: float, b: float, tolerance: float) -> dict[str, object]:
        return multimodel.summarize(alone, [{"models": {"a": _pt(a), "b": _pt(b)}}], 2, tolerance)

    assert run(2100, 1960, 0.05)["met"] is True  # b at 0.98 of its 2000
    assert run(2100, 1880, 0.05)["met"] is False  # b at 0.94
    assert run(2100, 1880, 0.10)["met"] is True
    assert run(2100, 1880, 0.10)["worst_ratio"] == pytest.approx(0.94)
    assert run(2100, 1880, 0.10)["total"]["median_round_cpu_ratio"] is None  # no CPU reading given
    assert "NOT met" in multimodel.table(run(2100, 1880, 0.05), 8)


def test_rounds_that_do_not_pair_up_or_have_no_alone_answers_are_refused() -> None:
    with pytest.raises(ValueError, match="pair up"):
        multimodel.summarize([_pt(1), _pt(1)], [{"models": {"a": _pt(1), "b": _pt(1)}}], 2, 0.05)
    with pytest.raises(ValueError, match="expected 4"):
        multimodel.summarize([_pt(1)], [{"models": {"a": _pt(1), "b": _pt(1)}}], 4, 0.05)
    with pytest.raises(ValueError, match="same models"):
        multimodel.summarize([_pt(1), _pt(1)], [{"models": {"a": _pt(1), "b": _pt(1)}},
                                                 {"models": {"a": _pt(1), "c": _pt(1)}}], 2, 0.05)
    with pytest.raises(ValueError, match="answered nothing"):
        multimodel.summarize([_pt(0)], [{"models": {"a": _pt(1), "b": _pt(1)}}], 2, 0.05)


def test_command_line_defaults_follow_the_goal() -> None:
    args = multimodel.parse_args([])
    assert (args.model, args.count, args.concurrency, args.rounds) == ("mlp", 4, 8, 3)
    assert multimodel.model_names("mlp", 4) == ["mlp1", "mlp2", "mlp3", "mlp4"]
    args = multimodel.parse_args(["--count", "2", "--duration", "3", "--tolerance", "0"])
    assert (args.count, args.duration, args.tolerance) == (2, 3.0, 0.0)
    assert args.separate is True
    assert multimodel.parse_args(["--no-separate"]).separate is False


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--count", "1"], "--count must be at least 2"),
        (["--concurrency", "0"], "--concurrency must be at least 1"),
        (["--rounds", "0"], "--rounds must be at least 1"),
        (["--duration", "0"], "--duration must be positive"),
        (["--duration", "nan"], "--duration must be positive"),
        (["--tolerance", "1"], "--tolerance must be in [0, 1)"),
        (["--model", "nope"], "invalid choice"),
    ],
)
def test_bad_arguments_are_refused(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        multimodel.parse_args(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """x[N,8] @ W -> logits[N,3], with a dynamic batch axis."""
    return build_package(tmp_path_factory.mktemp("tiny"))


def test_copies_are_renamed_packages_with_the_same_checked_files(package: Path, tmp_path: Path) -> None:
    copy = multimodel.copy_package(package, tmp_path / "tiny2", "tiny2")
    manifest = load_manifest(copy)
    assert manifest.name == "tiny2"
    verify_files(copy, manifest)  # size and sha256 of every listed file
    assert (copy / "model.onnx").read_bytes() == (package / "model.onnx").read_bytes()
    assert load_manifest(package).name == "tiny"


def test_the_onnxruntime_phase_times_one_session_and_all_in_turn_in_a_pinned_child(
    package: Path, tmp_path: Path
) -> None:
    packages = [multimodel.copy_package(package, tmp_path / n, n) for n in ("tiny1", "tiny2")]
    core = max(os.sched_getaffinity(0))
    batch = np.repeat(SPEC.request_array(), 4, axis=0)
    result = multimodel.measure_onnxruntime(packages, batch, core, runs=20, warmup_runs=5, repeats=3)
    assert result["affinity"] == [core]  # the child, not this process
    assert (result["rows"], result["sessions"], result["runs"], result["repeats"]) == (4, 2, 20, 3)
    assert len(result["one"]) == len(result["in_turn"]) == 3
    assert result["us_per_row_one"] > 0 and result["us_per_row_in_turn"] > 0
    with pytest.raises(SystemExit, match="onnxruntime phase: OSError"):
        multimodel.measure_onnxruntime(packages, batch, 4096, runs=1, warmup_runs=0, repeats=1)


@pytest.mark.skipif(wrk.available() is not None, reason=str(wrk.available()))
def test_one_phase_drives_every_model_of_one_server(package: Path, tmp_path: Path) -> None:
    packages = [multimodel.copy_package(package, tmp_path / n, n) for n in ("tiny1", "tiny2")]
    x = SPEC.request_array()
    body = payloads.write_bodies(tmp_path / "bodies", "x", x, "logits")["binary"]
    cores = (0, 1) if (os.cpu_count() or 1) >= 2 else (0, 0)
    args = argparse.Namespace(max_batch_size=4, server_core=cores[0], client_core=cores[1], concurrency=2,
                              warmup=0.0, duration=1.0, work_dir=tmp_path)
    phase = multimodel.measure(packages, SPEC, body, x @ W, args, "test")
    assert set(phase["models"]) == {"tiny1", "tiny2"}
    for point in phase["models"].values():
        assert point["throughput"] > 0 and point["errors"] == 0
    assert phase["cpu_us"] > 0 and phase["servers"] == 1
    # one server per model, pinned to the same core, driven at once
    apart = multimodel.measure(packages, SPEC, body, x @ W, args, "test-separate", separate=True)
    assert set(apart["models"]) == {"tiny1", "tiny2"} and apart["servers"] == 2
    for point in apart["models"].values():
        assert point["throughput"] > 0 and point["errors"] == 0
    assert apart["cpu_us"] > 0
    assert (tmp_path / "logs" / "multimodel-test-separate-tiny2.log").exists()
    # a server that answers one model wrongly is not measured
    with pytest.raises(SystemExit, match="tiny1 answered wrongly"):
        multimodel.measure(packages[:1], SPEC, body, x @ W + 1, args, "wrong")
