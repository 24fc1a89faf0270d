"""Tests of data-free distillation: ``synthetic:N`` data synthesised from the teacher.

Fast: a ``cifar_resnet20`` teacher at 8 px whose BatchNorm statistics come from real digits (so
DeepInversion has something to match), and a two-block ViT at 8 px with 4×4 patches; a few
optimisation steps each. Real optimisation, real cache, real CLI, no mocks.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from structsearch.cli import app
from structsearch.data import DataSpec, Preprocess, load_data
from structsearch.data.spec import SynthesisSpec
from structsearch.distill import TeacherCache, TeacherId
from structsearch.distill.synthesis import (
    SynthesisConfig,
    _similarity_entropy,
    bn_statistics_loss,
    list_methods,
    register_method,
    resolve_method,
    synthesize,
    total_variation,
)
from structsearch.errors import DataError
from structsearch.models import create_model
from structsearch.search import parse_study_spec, run_search
from structsearch.search.context import plan_search

runner = CliRunner()
CNN_KW = {"num_classes": 10}
VIT_KW = {"num_classes": 10, "img_size": 8, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2}


def make_cnn() -> nn.Module:
    """cifar_resnet20 whose BatchNorm running statistics were gathered on real digits."""
    torch.manual_seed(0)
    teacher = create_model("cifar_resnet20", **CNN_KW)
    pre = Preprocess.from_model(teacher, 8)
    teacher.train()
    with torch.no_grad():
        for _ in range(3):
            teacher(pre(load_data("digits").x[:256]))
    return teacher.eval()


def make_vit() -> nn.Module:
    torch.manual_seed(0)
    return create_model("vit_tiny_patch16_224", **VIT_KW).eval()


@pytest.fixture(scope="module")
def cnn() -> nn.Module:
    return make_cnn()


@pytest.fixture(scope="module")
def cnn_ckpt(tmp_path_factory: pytest.TempPathFactory, cnn: nn.Module) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "resnet20.pt"
    torch.save(cnn.state_dict(), path)
    return path


@pytest.fixture()
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private STRUCTSEARCH_HOME (studies, caches, artifacts) per test."""
    monkeypatch.setenv("STRUCTSEARCH_HOME", str(tmp_path / "home"))
    for var in ("STRUCTSEARCH_STORAGE", "STRUCTSEARCH_ARTIFACTS", "STRUCTSEARCH_CACHE"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path / "home"


# -- DataSpec grammar ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, canonical",
    [
        ("synthetic:2048", "synthetic:2048"),
        ("synthetic:2048?iters=200&method=deepinversion", "synthetic:2048?iters=200&method=deepinversion"),
        ("Synthetic:16?batch=8&seed=3&method=PSAQ", "synthetic:16?method=psaq&seed=3&batch=8"),
        ("synthetic:64?iters=2000&method=auto&seed=0&batch=256", "synthetic:64"),  # defaults are not written
    ],
)
def test_synthetic_spec_round_trip(text: str, canonical: str) -> None:
    spec = DataSpec.parse(text)
    assert spec.kind == "synthetic" and spec.path == "" and not spec.is_sliced
    assert str(spec) == canonical and DataSpec.parse(str(spec)) == spec
    assert spec.synthesis is not None and spec.synthesis.n == int(canonical.split(":")[1].split("?")[0])


def test_synthetic_spec_fields() -> None:
    s = DataSpec.parse("synthetic:100?iters=7&method=psaq&seed=2&batch=50").synthesis
    assert s == SynthesisSpec(n=100, method="psaq", iterations=7, seed=2, batch_size=50)


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("synthetic", "image count"),
        ("synthetic:", "image count"),
        ("synthetic:0", ">= 1"),
        ("synthetic:-5", "image count"),
        ("synthetic:/data/x", "image count"),
        ("synthetic:10[:5]", "no row slice"),
        ("synthetic:10?size=8", "synthetic data takes iters, method, seed, batch"),
        ("synthetic:10?iters=many", "iters must be an integer"),
        ("synthetic:10?iters=0", "iters must be an integer >= 1"),
        ("synthetic:10?method=gan", "unknown method 'gan'"),
        ("npz:/x.npz?iters=3", "npz data takes no options"),
    ],
)
def test_synthetic_spec_errors(text: str, fragment: str) -> None:
    with pytest.raises(DataError, match=None) as info:
        DataSpec.parse(text)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_synthetic_fields_only_on_synthetic_kind() -> None:
    with pytest.raises(DataError, match="needs an image count"):
        DataSpec(kind="synthetic")
    with pytest.raises(DataError, match="takes no synthesis options"):
        DataSpec(kind="digits", synthesis=SynthesisSpec(4))


def test_load_data_refuses_synthetic_with_one_line() -> None:
    with pytest.raises(DataError, match="synthesised from a teacher"):
        load_data("synthetic:32")


# -- DeepInversion ---------------------------------------------------------------------------------


def test_deepinversion_lowers_bn_loss_and_labels_honestly(cnn: nn.Module) -> None:
    pre = Preprocess.from_model(cnn, 8)
    res = synthesize(cnn, pre, 20, iterations=20, batch_size=20, seed=1, device="cpu")
    data = res.data
    assert res.method == "deepinversion" and not res.cache_hit
    assert data.x.dtype == torch.uint8 and tuple(data.x.shape) == (20, 3, 8, 8)
    assert data.y.dtype == torch.int64 and data.num_classes == 10 and len(data.class_names) == 10
    # targets are balanced over the classes; labels are the teacher's own predictions on the uint8 images
    assert torch.bincount(res.targets, minlength=10).tolist() == [2] * 10
    with torch.no_grad():
        assert torch.equal(data.y, cnn(pre(data.x)).argmax(1))
    # matching the BatchNorm statistics: far better than the Gaussian start, measured on the quantised images
    start = torch.randn((20, 3, 8, 8), generator=torch.Generator().manual_seed(1))
    lo = (0 - torch.tensor(pre.mean).view(1, 3, 1, 1)) / torch.tensor(pre.std).view(1, 3, 1, 1)
    hi = (1 - torch.tensor(pre.mean).view(1, 3, 1, 1)) / torch.tensor(pre.std).view(1, 3, 1, 1)
    assert bn_statistics_loss(cnn, pre(data.x)) < 0.8 * bn_statistics_loss(cnn, torch.clamp(start, lo, hi))
    assert res.losses["bn"] < 0.8 * res.initial_losses["bn"]
    assert res.losses["ce"] < res.initial_losses["ce"]
    assert 0.0 <= res.target_agreement <= 1.0 and res.seconds_per_iteration > 0


def test_synthesis_is_deterministic_and_seeded(cnn: nn.Module) -> None:
    pre = Preprocess.from_model(cnn, 8)
    a = synthesize(cnn, pre, 12, iterations=3, batch_size=12, seed=5, device="cpu").data
    b = synthesize(cnn, pre, 12, iterations=3, batch_size=12, seed=5, device="cpu").data
    c = synthesize(cnn, pre, 12, iterations=3, batch_size=12, seed=6, device="cpu").data
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert not torch.equal(a.x, c.x)
    # the teacher's parameters keep their gradient flags
    assert all(p.requires_grad for p in cnn.parameters())


def test_cache_hit_returns_identical_images_without_optimising(cnn: nn.Module, tmp_path: Path) -> None:
    pre = Preprocess.from_model(cnn, 8)
    cache = TeacherCache(tmp_path / "cache")
    calls: list[int] = []
    kw = dict(
        iterations=4, batch_size=8, seed=0, device="cpu", cache=cache, progress=lambda b, n, losses: calls.append(b)
    )
    first = synthesize(cnn, pre, 16, **kw)
    assert not first.cache_hit and calls == [1, 2]
    forwards: list[int] = []
    hook = cnn.register_forward_hook(lambda *_: forwards.append(1))
    try:
        second = synthesize(cnn, pre, 16, **kw)
    finally:
        hook.remove()
    assert second.cache_hit and calls == [1, 2] and forwards == []  # no batch optimised, no teacher pass
    assert torch.equal(first.data.x, second.data.x) and torch.equal(first.data.y, second.data.y)
    assert torch.equal(first.targets, second.targets)
    # the stored figures of the run that made the set
    assert second.seconds_per_iteration == pytest.approx(first.seconds_per_iteration)
    assert second.seconds == pytest.approx(first.seconds)
    # every setting that changes the images gives another entry
    third = synthesize(cnn, pre, 16, **{**kw, "iterations": 2})
    assert not third.cache_hit and calls == [1, 2, 1, 2]
    assert len([d for d in (tmp_path / "cache").iterdir() if d.is_dir()]) == 2


def test_killed_synthesis_resumes_at_its_first_unfinished_batch(cnn: nn.Module, tmp_path: Path) -> None:
    pre = Preprocess.from_model(cnn, 8)
    kw = dict(iterations=4, batch_size=8, seed=0, device="cpu")
    whole = synthesize(cnn, pre, 24, **kw).data  # uninterrupted, no cache

    class Killed(Exception):
        pass

    def kill_after_second(batch: int, batches: int, losses: dict) -> None:
        if batch == 2:
            raise Killed

    cache = TeacherCache(tmp_path / "cache")
    with pytest.raises(Killed):
        synthesize(cnn, pre, 24, cache=cache, progress=kill_after_second, **kw)
    calls: list[int] = []
    resumed = synthesize(cnn, pre, 24, cache=cache, progress=lambda b, n, losses: calls.append(b), **kw)
    assert calls == [3]  # batches 1 and 2 were read back, not optimised again
    assert not resumed.cache_hit and resumed.seconds_per_iteration > 0 and "bn" in resumed.losses
    assert torch.equal(resumed.data.x, whole.x) and torch.equal(resumed.data.y, whole.y)
    # the finished set is the only entry left: its batches are deleted
    assert len([d for d in (tmp_path / "cache").iterdir() if d.is_dir()]) == 1


def test_method_choice_and_errors(cnn: nn.Module) -> None:
    assert [m.name for m in list_methods()] == ["deepinversion", "psaq"]  # auto's order of preference
    with pytest.raises(ValueError, match="already registered"):
        register_method(list_methods()[0])
    vit = make_vit()
    assert resolve_method(cnn) == "deepinversion" and resolve_method(vit) == "psaq"
    assert resolve_method(cnn, "deepinversion") == "deepinversion"
    with pytest.raises(DataError, match="needs BatchNorm"):
        resolve_method(vit, "deepinversion", "vit")
    with pytest.raises(DataError, match="needs timm self-attention"):
        resolve_method(cnn, "psaq", "cifar_resnet20")
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10))
    with pytest.raises(DataError, match="no data-free method"):
        resolve_method(mlp)
    pre = Preprocess.from_model(cnn, 8)
    with pytest.raises(DataError, match="iters must be an integer >= 1"):
        synthesize(cnn, pre, 4, iterations=0, device="cpu")
    with pytest.raises(DataError, match="image count"):
        synthesize(cnn, pre, 0, device="cpu")
    with pytest.raises(DataError, match="tv_weight"):
        SynthesisConfig(tv_weight=-1.0)


def test_total_variation_is_zero_for_flat_images() -> None:
    assert total_variation(torch.ones(2, 3, 5, 5)).item() == 0.0
    assert total_variation(torch.randn(2, 3, 5, 5)).item() > 0.0


# -- PSAQ-ViT --------------------------------------------------------------------------------------


def test_vit_path_raises_patch_similarity_entropy() -> None:
    vit = make_vit()
    pre = Preprocess.from_model(vit, 8)
    res = synthesize(vit, pre, 10, iterations=20, batch_size=10, device="cpu")
    assert res.method == "psaq" and "bn" not in res.losses
    assert tuple(res.data.x.shape) == (10, 3, 8, 8) and res.data.x.dtype == torch.uint8
    with torch.no_grad():
        assert torch.equal(res.data.y, vit(pre(res.data.x)).argmax(1))
    assert res.losses["entropy"] > res.initial_losses["entropy"]
    assert res.losses["ce"] < res.initial_losses["ce"]


def test_patch_similarity_entropy_is_the_kde_entropy_of_sampled_cosine_similarities() -> None:
    """The fast path (unit-vector matmul, flat gather) equals PSAQ-ViT's definition written out."""
    feats = torch.randn(3, 1 + 16, 8, dtype=torch.float64)  # one prefix token, 16 patches
    cfg = SynthesisConfig(max_pairs=50, kde_points=16, kde_bandwidth=0.05)
    got = _similarity_entropy(feats, 1, cfg, torch.Generator().manual_seed(0))
    # the reference: every pair's cosine similarity, the same 50 sampled pairs, a Gaussian KDE on a grid
    patches = feats[:, 1:]
    rows, cols = torch.triu_indices(16, 16, offset=1)
    keep = torch.randperm(rows.numel(), generator=torch.Generator().manual_seed(0))[:50]
    sims = torch.nn.functional.cosine_similarity(patches.unsqueeze(1), patches.unsqueeze(2), dim=-1)
    s = sims[:, rows[keep], cols[keep]]
    grid = torch.linspace(0, 1, 16, dtype=s.dtype) * (s.max() - s.min() + 1e-6) + s.min()
    kernel = torch.exp(-0.5 * ((grid.view(1, -1, 1) - s.unsqueeze(1)) / 0.05) ** 2)
    pdf = kernel.mean(-1) / (0.05 * (2 * torch.pi) ** 0.5) + 1e-4
    assert torch.allclose(got, torch.trapezoid(-pdf * pdf.log(), grid, dim=-1).mean(), rtol=1e-9)


def test_bf16_inversion_converges_and_keeps_fp32_cache_keys(cnn: nn.Module, tmp_path: Path) -> None:
    """bfloat16 autocast still inverts both methods; it is its own cache entry, and fp32 keys are unchanged."""
    bf16 = SynthesisConfig(precision="bf16")
    pre = Preprocess.from_model(cnn, 8)
    cache = TeacherCache(tmp_path / "cache")
    res = synthesize(cnn, pre, 20, iterations=20, batch_size=20, seed=1, device="cpu", cache=cache, config=bf16)
    assert res.losses["bn"] < 0.8 * res.initial_losses["bn"] and res.losses["ce"] < res.initial_losses["ce"]
    with torch.no_grad():
        assert torch.equal(res.data.y, cnn(pre(res.data.x)).argmax(1))  # labelled in float32
    fp32 = synthesize(cnn, pre, 20, iterations=20, batch_size=20, seed=1, device="cpu", cache=cache)
    assert not fp32.cache_hit and not torch.equal(fp32.data.x, res.data.x)
    # a set cached before the setting existed keeps its key: fp32 adds nothing to it
    assert "precision" not in SynthesisConfig().key() and bf16.key()["precision"] == "bf16"
    with pytest.raises(DataError, match="precision must be fp32 or bf16"):
        SynthesisConfig(precision="fp16")  # type: ignore[arg-type]
    vit = make_vit()
    res = synthesize(vit, Preprocess.from_model(vit, 8), 10, iterations=20, batch_size=10, device="cpu", config=bf16)
    assert res.losses["entropy"] > res.initial_losses["entropy"] and res.losses["ce"] < res.initial_losses["ce"]


# -- search, proxy and CLI integration -------------------------------------------------------------


def _spec(ckpt: Path | None, **data: object) -> dict:
    teacher: dict = {"model": "cifar_resnet20", "kwargs": CNN_KW}
    if ckpt is not None:
        teacher["checkpoint"] = str(ckpt)
    return {
        "name": "datafree",
        "teacher": teacher,
        "data": {"train": "synthetic:60?iters=3&batch=30", "input_size": 8, **data},
        "budget": {"flops": "40%"},
        "trials": 3,
        "proxy": {"steps": 3, "batch_size": 16, "device": "cpu"},
    }


def test_plan_search_rejects_unusable_synthetic_specs(cnn_ckpt: Path) -> None:
    with pytest.raises(DataError, match="needs a checkpoint.*random weights"):
        plan_search(parse_study_spec(_spec(None)))
    spec = _spec(None)
    spec["teacher"]["train_epochs"] = 2
    with pytest.raises(DataError, match="train_epochs=2 would need real data"):
        plan_search(parse_study_spec(spec))
    with pytest.raises(DataError, match="data.val cannot be synthetic"):
        plan_search(parse_study_spec(_spec(cnn_ckpt, train="digits", val="synthetic:10")))
    with pytest.raises(DataError, match="psaq needs timm self-attention"):
        plan_search(parse_study_spec(_spec(cnn_ckpt, train="synthetic:10?method=psaq")))
    plan = plan_search(parse_study_spec(_spec(cnn_ckpt)))  # a real checkpoint: accepted
    assert plan.inherit and plan.space.model == "cifar_resnet20" and plan.spec.data.train.startswith("synthetic:")


@pytest.mark.slow
def test_search_with_synthetic_data_end_to_end(home: Path, cnn_ckpt: Path) -> None:
    study = run_search(parse_study_spec(_spec(cnn_ckpt)))
    trials = study.get_trials()
    assert len(trials) == 3 and all(t.state.name == "COMPLETE" for t in trials)
    assert study.user_attrs["data"] == "synthetic:60?iters=3&batch=30"
    trained = [t for t in trials if t.user_attrs["trained"]]
    assert trained and all(0.0 <= t.values[0] <= 100.0 for t in trained)
    # the synthetic set went to the shared cache under $STRUCTSEARCH_HOME/cache
    metas = [json.loads(p.read_text()) for p in (home / "cache").glob("*/meta.json")]
    assert any(m["info"].get("what") == "synthetic-images" for m in metas)


def test_proxy_cli_accepts_synthetic_data(tmp_path: Path, cnn_ckpt: Path) -> None:
    res = runner.invoke(
        app,
        [
            "proxy",
            "--teacher",
            "cifar_resnet20",
            "--kw",
            "num_classes=10",
            "--checkpoint",
            str(cnn_ckpt),
            "--data",
            "synthetic:40?iters=2&batch=20",
            "--val-size",
            "10",
            "--steps",
            "2",
            "--batch-size",
            "16",
            "--input-size",
            "8",
            "--device",
            "cpu",
            "--cache-dir",
            str(tmp_path / "c"),
            "--format",
            "json",
        ],
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["train_images"] == 30 and out["val_images"] == 10
    res = runner.invoke(
        app,
        [
            "proxy",
            "--teacher",
            "cifar_resnet20",
            "--kw",
            "num_classes=10",
            "--data",
            "synthetic:40",
            "--input-size",
            "8",
            "--device",
            "cpu",
            "--cache-dir",
            str(tmp_path / "c"),
        ],
    )
    assert res.exit_code == 2 and "--checkpoint" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_cli_synthesize_writes_a_loadable_npz(tmp_path: Path, cnn_ckpt: Path) -> None:
    out, grid = tmp_path / "syn" / "set.npz", tmp_path / "syn" / "grid.png"
    args = [
        "synthesize",
        "--teacher",
        "cifar_resnet20",
        "--kw",
        "num_classes=10",
        "--checkpoint",
        str(cnn_ckpt),
        "--n",
        "24",
        "--iters",
        "3",
        "--batch-size",
        "12",
        "--input-size",
        "8",
        "--device",
        "cpu",
        "--out",
        str(out),
        "--grid",
        str(grid),
        "--cache-dir",
        str(tmp_path / "c"),
        "--format",
        "json",
    ]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["images"] == 24 and info["method"] == "deepinversion" and not info["cache_hit"]
    loaded = load_data(f"npz:{out}")
    assert tuple(loaded.x.shape) == (24, 3, 8, 8) and loaded.num_classes == 10
    with np.load(out) as archive:
        assert archive["x"].dtype == np.uint8 and archive["x"].shape == (24, 8, 8, 3)
    assert grid.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and json.loads(again.stdout)["cache_hit"] is True
    # the same set as the library call with the same identity and cache
    teacher = create_model("cifar_resnet20", checkpoint=cnn_ckpt, **CNN_KW)
    lib = synthesize(
        teacher,
        Preprocess.from_model(teacher, 8),
        24,
        iterations=3,
        batch_size=12,
        device="cpu",
        teacher_id=TeacherId.of("cifar_resnet20", CNN_KW, cnn_ckpt),
        cache=TeacherCache(tmp_path / "c"),
    ).data
    assert torch.equal(lib.x, loaded.x) and torch.equal(lib.y, loaded.y)


def test_cli_synthesize_one_line_errors(tmp_path: Path, cnn_ckpt: Path) -> None:
    base = [
        "synthesize",
        "--teacher",
        "cifar_resnet20",
        "--kw",
        "num_classes=10",
        "--n",
        "4",
        "--iters",
        "1",
        "--input-size",
        "8",
        "--device",
        "cpu",
        "--out",
        str(tmp_path / "s.npz"),
        "--no-cache",
    ]
    for extra, fragment in (
        ([], "--checkpoint"),
        (["--checkpoint", str(cnn_ckpt), "--method", "psaq"], "psaq needs timm self-attention"),
        (["--checkpoint", str(cnn_ckpt), "--method", "gan"], "unknown method"),
        (["--checkpoint", str(cnn_ckpt), "--precision", "fp16"], "precision must be fp32 or bf16"),
    ):
        res = runner.invoke(app, [*base, *extra])
        assert res.exit_code == 2, res.output
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and fragment in lines[0], res.stderr
    res = runner.invoke(
        app, ["eval", "--model", "cifar_resnet20", "--data", "synthetic:8", "--input-size", "8", "--device", "cpu"]
    )
    assert res.exit_code == 2 and "synthesised from a teacher" in res.stderr
