"""Latency and peak activation memory: measured, stored with their device, usable as budgets.

The memory figure is checked against numbers computed by hand and against an independent
computation (forward hooks summing neighbouring activations of a straight chain); the search test
runs a real (tiny) study with a resolution dimension and a memory budget.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import optuna
import pytest
import torch
from torch import nn

from structsearch.cost import (
    Budget,
    format_bytes,
    format_ms,
    measure_latency,
    measure_memory,
    parse_budget,
)
from structsearch.cost.latency import cpu_model_name
from structsearch.devices import DeviceError
from structsearch.errors import BudgetError, CostError, StructsearchError
from structsearch.search import best_under_budget, pareto_front, parse_study_spec, run_search, study_records
from structsearch.search.context import plan_search
from structsearch.search.objective import spec_key

# --------------------------------------------------------------------------- budgets


@pytest.mark.parametrize(
    ("text", "value", "relative"),
    [
        ("5ms", 5.0, False),
        ("800us", 0.8, False),
        ("800µs", 0.8, False),
        ("0.01s", 10.0, False),
        ("2.5 ms", 2.5, False),
        ("1500ns", 0.0015, False),
        ("60%", 0.6, True),
    ],
)
def test_parse_latency_budget(text: str, value: float, relative: bool) -> None:
    b = parse_budget(text, "latency")
    assert b == Budget(value=value, relative=relative, unit="ms")
    assert parse_budget(str(b), "latency") == b  # canonical spelling reads back


@pytest.mark.parametrize(
    ("text", "value", "relative"),
    [
        ("50MB", 50_000_000, False),
        ("512kB", 512_000, False),
        ("512KB", 512_000, False),
        ("1.5GB", 1_500_000_000, False),
        ("64MiB", 64 * 2**20, False),
        ("100B", 100, False),
        ("60%", 0.6, True),
    ],
)
def test_parse_memory_budget(text: str, value: float, relative: bool) -> None:
    b = parse_budget(text, "memory")
    assert b == Budget(value=value, relative=relative, unit="B")
    assert parse_budget(str(b), "memory") == b


def test_resolving_latency_keeps_fractions_and_memory_rounds() -> None:
    assert parse_budget("60%", "latency").resolve(2.5) == pytest.approx(1.5)
    assert parse_budget("800us", "latency").resolve(123.0) == pytest.approx(0.8)
    assert parse_budget("50%", "memory").resolve(1001) == 500  # 500.5 rounds half to even
    assert parse_budget("60%", "memory").resolve(1001) == 601  # 600.6 rounds, not truncates
    assert parse_budget("64MiB", "memory").resolve(1) == 67_108_864


@pytest.mark.parametrize(
    ("text", "what", "fragment"),
    [
        ("5", "latency", "no unit"),
        (5, "latency", "no unit"),
        ("5 parsecs", "latency", "unknown unit"),
        ("-1ms", "latency", "positive"),
        ("0ms", "latency", "positive"),
        ("150%", "latency", "at most 100%"),
        ("50M", "memory", "unknown unit 'M'"),
        ("0.5B", "memory", "at least 1 byte"),
        ("", "memory", "empty"),
        ("lots", "memory", "not a number"),
    ],
)
def test_invalid_latency_and_memory_budgets_are_one_line(text: str | int, what: str, fragment: str) -> None:
    with pytest.raises(BudgetError) as info:
        parse_budget(text, what)
    message = str(info.value)
    assert "\n" not in message and fragment in message
    assert message.startswith(f"invalid {what} budget")
    assert ("5ms" if what == "latency" else "50MB") in message  # shows valid examples


def test_flops_budgets_are_unchanged() -> None:
    with pytest.raises(BudgetError, match=r"invalid FLOPs \(MACs\) budget '300MB': unknown suffix 'MB'"):
        parse_budget("300MB", "flops")
    assert parse_budget("300M") == Budget(300_000_000, False)
    assert str(parse_budget("1.2G", "params")) == "1.2G"


def test_format_helpers_read_back() -> None:
    assert format_ms(12.345) == "12.3ms" and format_ms(0.85) == "850us" and format_ms(1520) == "1.52s"
    assert format_bytes(12_845_000) == "12.85MB"
    assert parse_budget(format_ms(0.85), "latency").value == pytest.approx(0.85)
    assert parse_budget(format_bytes(12_845_000), "memory").value == 12_850_000


# --------------------------------------------------------------------------- memory


def test_memory_of_a_conv_chain_by_hand() -> None:
    """conv(3->4) -> relu -> conv(4->8) at 8x8, fp32, batch 1 (the input is not an activation):
    conv1 out 4*64*4 = 1024 B; relu out another 1024 B while conv1's is alive; conv1's is freed when
    Sequential moves on; conv2 out 8*64*4 = 2048 B while relu's is alive -> peak 3072 B."""
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.ReLU(), nn.Conv2d(4, 8, 3, padding=1))
    report = measure_memory(net, (3, 8, 8))
    assert report.peak_bytes == 3072
    assert report.method == "torch-dispatch live storages" and report.device_type == "cpu"
    assert cpu_model_name() in report.device and report.batch_size == 1 and report.input_size == (3, 8, 8)
    assert measure_memory(net, (3, 8, 8), batch_size=4).peak_bytes == 4 * 3072


def test_views_of_weights_and_input_are_not_activations() -> None:
    """Flatten is a view of the input and linear's ``weight.t()`` a view of the weight: the only
    new memory is the 10 logits (40 bytes)."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10, bias=False))
    assert measure_memory(net, (3, 8, 8)).peak_bytes == 40


def test_memory_of_a_straight_chain_matches_hooks() -> None:
    """Independent figure: in a straight chain of non-inplace layers, layer i's output is alive
    together with layer i-1's, so the peak is max_i(out_{i-1} + out_i) (out_0 = the input, not
    counted). Output sizes come from forward hooks, not from the dispatch tracker."""
    torch.manual_seed(0)
    layers = [
        nn.Conv2d(3, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 4, 1),
        nn.Conv2d(4, 32, 3, stride=2, padding=1),
        nn.Sigmoid(),
        nn.AvgPool2d(2),
        nn.Conv2d(32, 10, 1),
    ]
    net = nn.Sequential(*layers).eval()
    sizes: list[int] = []
    hooks = [m.register_forward_hook(lambda _m, _i, o: sizes.append(o.numel() * o.element_size())) for m in layers]
    with torch.no_grad():
        net(torch.zeros(2, 3, 16, 16))
    for h in hooks:
        h.remove()
    expected = max(a + b for a, b in zip([0, *sizes[:-1]], sizes))
    assert measure_memory(net, (3, 16, 16), batch_size=2).peak_bytes == expected


def test_memory_leaves_the_model_as_it_was() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout())
    net.train()
    net[1].eval()
    before = net[1].running_mean.clone()
    measure_memory(net, 8)
    assert net.training and not net[1].training and net[2].training
    assert torch.equal(net[1].running_mean, before)


def test_memory_report_dict_is_json_ready() -> None:
    r = measure_memory(nn.Conv2d(3, 2, 1), 4)
    assert json.loads(json.dumps(r.to_dict())) == {**asdict(r), "input_size": [3, 4, 4]}


# --------------------------------------------------------------------------- latency


def test_latency_report_fields() -> None:
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU())
    threads_before = torch.get_num_threads()
    r = measure_latency(net, 16, batch_size=2, threads=1, warmup=1, repeats=5)
    assert torch.get_num_threads() == threads_before  # restored
    assert 0 < r.min_ms <= r.median_ms <= r.p90_ms
    assert r.runtime == "torch" and r.runtime_version.startswith("torch ")
    assert r.device == f"{cpu_model_name()} (cpu, 1 thread)" and r.device_type == "cpu" and r.threads == 1
    assert (r.batch_size, r.input_size, r.warmup, r.repeats) == (2, (3, 16, 16), 1, 5)
    assert json.loads(json.dumps(r.to_dict())) == {**asdict(r), "input_size": [3, 16, 16]}


def test_onnxruntime_latency() -> None:
    pytest.importorskip("onnxruntime")
    r = measure_latency(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU()), 16, runtime="onnxruntime", threads=1, repeats=3)
    assert r.runtime == "onnxruntime" and r.runtime_version.startswith("onnxruntime ") and r.median_ms > 0
    assert "(cpu, 1 thread)" in r.device


def test_bad_latency_arguments_are_one_line() -> None:
    net = nn.Conv2d(3, 2, 1)
    with pytest.raises(CostError, match="unknown runtime 'tensorflow'"):
        measure_latency(net, 8, runtime="tensorflow")  # type: ignore[arg-type]
    with pytest.raises(CostError, match="repeats must be"):
        measure_latency(net, 8, repeats=0)
    with pytest.raises(DeviceError, match="unsupported device 'tpu'|unknown device"):
        measure_latency(net, 8, device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="CUDA is not available"):
            measure_memory(net, 8, device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_latency_and_memory() -> None:
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
    lat = measure_latency(net, 32, device="cuda", repeats=5)
    assert lat.device_type == "cuda" and lat.threads is None and "cuda:" in lat.device and lat.median_ms > 0
    mem = measure_memory(net, 32, device="cuda")
    assert mem.method == "torch.cuda.max_memory_allocated" and mem.peak_bytes >= 2 * 8 * 32 * 32 * 4
    assert next(net.parameters()).device.type == "cpu"  # measured on a copy


# --------------------------------------------------------------------------- search

RES = {
    "name": "res-mem",
    "teacher": {"model": "cifar_resnet20", "kwargs": {"num_classes": 10}, "train_epochs": 1},
    # the teacher at 16 px; students at 8 and 12 px fit 60% of its activations, at 16 px none do
    "data": {"train": "digits", "val_size": 0.2, "input_size": 16, "resolutions": [8, 12, 16]},
    "budget": {"memory": "60%", "latency": "10s"},
    "measure": {"warmup": 1, "repeats": 3, "threads": 1},
    "sampler": "random",
    "trials": 6,
    "proxy": {"steps": 4, "batch_size": 32},
}


@pytest.fixture(scope="module")
def res_study(home: Path) -> optuna.Study:
    return run_search(parse_study_spec(RES))


@pytest.mark.slow
def test_resolution_search_measures_every_candidate_and_skips_over_memory(res_study: optuna.Study) -> None:
    a = res_study.user_attrs
    assert a["resolutions"] == [8, 12, 16] and a["input_size"] == [3, 16, 16]
    assert a["max_memory_bytes"] == round(0.6 * a["teacher_memory_bytes"]) and a["max_latency_ms"] == 10_000.0
    assert a["memory_device"].endswith("(cpu)") and a["latency_device"].endswith("(cpu, 1 thread)")
    trials = res_study.get_trials()
    assert len(trials) == 6
    over_memory = trained = 0
    for t in trials:
        u = t.user_attrs
        assert u["resolution"] in (8, 12, 16) and t.params["resolution"] == u["resolution"]
        assert u["spec_key"] == spec_key(_arch(u["spec"]), u["resolution"])
        # no MACs/params budget: every candidate is measured, with its device, before training
        assert {"latency_ms", "latency_device", "latency_runtime", "memory_bytes", "memory_device"} <= set(u)
        assert u["latency_runtime"] == "torch" and u["latency_device"] == a["latency_device"]
        assert t.constraints["memory"] == u["memory_bytes"] - a["max_memory_bytes"]
        assert t.constraints["latency"] == pytest.approx(u["latency_ms"] - a["max_latency_ms"], abs=1e-3)
        over = u["memory_bytes"] > a["max_memory_bytes"]
        assert u["trained"] is (not over) and ("artifact" in u) is (not over)
        over_memory += over
        trained += not over
    assert over_memory and trained, "the sample has candidates on both sides of the memory budget"
    # activations scale with the pixel count: 16 px students are over 60% of the 16 px teacher
    assert all(t.user_attrs["trained"] is (t.user_attrs["resolution"] < 16) for t in trials)
    assert any(t.user_attrs["trained"] and t.user_attrs["resolution"] == 12 for t in trials), (
        "trained at a resized input"
    )


@pytest.mark.slow
def test_records_fronts_and_best_use_measured_figures(home: Path, res_study: optuna.Study) -> None:
    records = study_records(res_study)
    assert all(r.memory_bytes is not None and r.resolution in (8, 12, 16) for r in records)
    for axis, field in (("memory", "memory_bytes"), ("latency", "latency_ms")):
        front = pareto_front(records, axis)
        assert front and [getattr(r, field) for r in front] == sorted(getattr(r, field) for r in front)
    trained = [r for r in records if r.trained]
    limit = max(r.memory_bytes for r in trained)
    best = best_under_budget(budget_memory=f"{limit}B", study="res-mem")
    assert best.score == max(r.score for r in trained) and best.memory_device is not None
    with pytest.raises(BudgetError, match="nearest: study res-mem.*peak activations"):
        best_under_budget(budget_memory="1B", study="res-mem")
    with pytest.raises(BudgetError, match="invalid memory budget"):
        best_under_budget(budget_memory="50M")


def test_impossible_memory_budget_stores_nothing(home: Path) -> None:
    with pytest.raises(
        BudgetError, match="memory budget 1kB .* below the peak activation memory of the smallest student"
    ):
        plan_search(parse_study_spec({**RES, "name": "res-impossible", "budget": {"memory": "1kB"}}))


def test_spec_validation_of_measured_settings() -> None:
    with pytest.raises(StructsearchError, match="measure.latency is off"):
        parse_study_spec({**RES, "measure": {"latency": False}, "objectives": ["accuracy", "latency"]})
    with pytest.raises(StructsearchError, match="resolutions must not repeat"):
        parse_study_spec({**RES, "data": {**RES["data"], "resolutions": [8, 8]}})
    with pytest.raises(StructsearchError, match="feature_kd cannot be combined"):
        parse_study_spec({**RES, "proxy": {"feature_kd": True}})
    spec = parse_study_spec({**RES, "objectives": ["accuracy", "memory"]})
    assert spec.objectives == ("accuracy", "memory")
    # studies without resolutions keep the fingerprint they had before the field existed, so they
    # still warm-start from older studies; with resolutions the fingerprint differs
    plain = parse_study_spec({**RES, "data": {"train": "digits", "input_size": 8}})
    old = plain.model_dump(include={"teacher", "student", "data", "proxy", "importance", "seed"})
    del old["data"]["resolutions"], old["proxy"]["precision"]
    assert plain.fingerprint() == hashlib.sha256(json.dumps(old, sort_keys=True).encode()).hexdigest()[:16]
    assert (
        parse_study_spec({**RES, "data": {**plain.data.model_dump(), "resolutions": [8]}}).fingerprint()
        != plain.fingerprint()
    )


@pytest.mark.slow
def test_cli_best_with_memory_budget(home: Path, res_study: optuna.Study) -> None:
    exe = [sys.executable, "-m", "structsearch.cli"]
    limit = max(r.memory_bytes for r in study_records(res_study) if r.trained)
    ok = subprocess.run(
        exe + ["best", "--budget-memory", f"{limit}B", "--study", "res-mem", "--format", "json"],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr
    data = json.loads(ok.stdout)
    assert data["memory_bytes"] <= limit and data["memory_device"] and data["resolution"] in (8, 12)
    table = subprocess.run(exe + ["pareto", "--study", "res-mem", "--cost", "latency"], capture_output=True, text=True)
    assert table.returncode == 0 and "latency" in table.stdout, table.stderr
    bad = subprocess.run(exe + ["best", "--budget-memory", "50M"], capture_output=True, text=True)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    assert "invalid memory budget '50M'" in bad.stderr


def _arch(spec: dict):  # type: ignore[no-untyped-def]
    from structsearch.space import ArchSpec

    return ArchSpec.from_dict(spec)
