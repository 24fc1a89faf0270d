"""Tests of structsearch.distill: losses, BN recalibration, the teacher cache, the proxy trainer, CLI.

Fast: a randomly initialised ``cifar_resnet20`` teacher (wide enough to shrink, tiny at 8 px) on
scikit-learn's digits, a few steps per run. The real-teacher acceptance lives in test_proxy_cifar.py.
"""

from __future__ import annotations

import json
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from structsearch.cli import app
from structsearch.data import Augment, LoadedData, Preprocess, load_data
from structsearch.distill import (
    Distiller,
    FeatureKDError,
    ProxyConfig,
    ProxyConfigError,
    TeacherCache,
    TeacherId,
    default_cache_dir,
    distill_loss,
    feature_kd_loss,
    kd_loss,
    recalibrate_bn,
    uniform_width_spec,
)
from structsearch.errors import DataError, StructsearchError
from structsearch.models import create_model
from structsearch.space import space_of
from structsearch.surgery import build_student
from tests.cli_helpers import one_line_error, runner

FAST = dict(steps=4, batch_size=32, device="cpu", bn_recalibration_batches=2, eval_batch_size=200, views=2)


# -- losses ------------------------------------------------------------------------------------


def test_kd_loss_is_zero_for_equal_logits() -> None:
    z = torch.randn(8, 10)
    assert kd_loss(z, z.clone(), 4.0).item() == pytest.approx(0.0, abs=1e-6)


def test_kd_loss_hand_computed_and_scaled_by_t_squared() -> None:
    # teacher softmax (0.75, 0.25), student uniform: KL = 0.75 ln 1.5 + 0.25 ln 0.5
    kl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    s = torch.zeros(1, 2)
    assert kd_loss(s, torch.tensor([[math.log(3.0), 0.0]]), 1.0).item() == pytest.approx(kl, rel=1e-5)
    # the same softened distributions at T = 2 (teacher logits doubled): T² = 4 times the KL
    assert kd_loss(s, torch.tensor([[2 * math.log(3.0), 0.0]]), 2.0).item() == pytest.approx(4 * kl, rel=1e-5)


def test_kd_loss_matches_the_formula_and_ignores_teacher_gradients() -> None:
    s, t = torch.randn(6, 5, requires_grad=True), torch.randn(6, 5, requires_grad=True)
    T = 3.0
    p = F.softmax(t / T, 1)
    expected = (p * (p.log() - F.log_softmax(s / T, 1))).sum(1).mean() * T * T
    loss = kd_loss(s, t, T)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    loss.backward()
    assert s.grad is not None and t.grad is None


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.floats(-20, 20), min_size=3, max_size=3),
    st.lists(st.floats(-20, 20), min_size=3, max_size=3),
    st.floats(0.5, 8.0),
    st.floats(-50, 50),
)
def test_kd_loss_is_non_negative_and_shift_invariant(s: list[float], t: list[float], T: float, shift: float) -> None:
    s_, t_ = torch.tensor([s], dtype=torch.float64), torch.tensor([t], dtype=torch.float64)
    loss = kd_loss(s_, t_, T).item()
    assert loss >= -1e-6
    assert kd_loss(s_ + shift, t_ - shift, T).item() == pytest.approx(loss, abs=1e-4)


def test_distill_loss_mixes_kd_and_cross_entropy() -> None:
    s, t, y = torch.randn(4, 3), torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    mixed = distill_loss(s, t, y, 2.0, 0.7)
    assert mixed.item() == pytest.approx(0.7 * kd_loss(s, t, 2.0).item() + 0.3 * F.cross_entropy(s, y).item(), rel=1e-5)
    assert distill_loss(s, t, None, 2.0, 1.0).item() == pytest.approx(kd_loss(s, t, 2.0).item())


def test_feature_kd_loss_is_the_mean_stage_mse() -> None:
    a, b = torch.zeros(1, 2, 2, 2), torch.ones(1, 2, 2, 2)
    assert feature_kd_loss([a, a], [a, a], [nn.Identity(), nn.Identity()]).item() == 0.0
    assert feature_kd_loss([a, b], [b, b], [nn.Identity(), nn.Identity()]).item() == pytest.approx(0.5)
    adapter = nn.Conv2d(1, 2, 1, bias=False)
    nn.init.constant_(adapter.weight, 2.0)
    # adapter(ones with 1 channel) = 2 everywhere; target 1 -> MSE 1
    assert feature_kd_loss([torch.ones(1, 1, 2, 2)], [b], [adapter]).item() == pytest.approx(1.0)


# -- BatchNorm recalibration ---------------------------------------------------------------------


def test_recalibrate_bn_reestimates_running_stats() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, momentum=0.3)).eval()
    bn = model[1]
    batches = [torch.randn(8, 3, 6, 6) * 3 + 2 for _ in range(3)]
    assert recalibrate_bn(model, []) == 0 and torch.equal(bn.running_mean, torch.zeros(4))
    assert recalibrate_bn(model, batches) == 3
    with torch.no_grad():
        outs = torch.cat([model[0](x) for x in batches])
    # cumulative average of the per-batch means = the mean over all (equal-sized) batches
    assert torch.allclose(bn.running_mean, outs.mean((0, 2, 3)), atol=1e-5)
    assert not model.training and bn.momentum == 0.3


# -- the proxy trainer on digits -----------------------------------------------------------------


def make_teacher(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return create_model("cifar_resnet20").eval()


def small_student(teacher: nn.Module) -> nn.Module:
    return build_student(teacher, uniform_width_spec(space_of(teacher, "cifar_resnet20"), 0.5))


def preprocess_for(teacher: nn.Module) -> Preprocess:
    return Preprocess.from_model(teacher, 8)


class CountCalls:
    """Counts forward calls of a module (to prove a cache hit never runs the teacher)."""

    def __init__(self, module: nn.Module) -> None:
        self.calls = 0
        module.register_forward_hook(self._hook)

    def _hook(self, *args: object) -> None:
        self.calls += 1


def make_distiller(teacher: nn.Module, data: LoadedData, split, cache_dir: Path, **cfg) -> Distiller:
    train_idx, val_idx = split
    config = ProxyConfig(**{**FAST, **cfg})
    return Distiller(
        teacher,
        data,
        train_idx,
        val_idx,
        preprocess_for(teacher),
        config,
        teacher_id=TeacherId("cifar_resnet20"),
        cache=TeacherCache(cache_dir),
    )


def test_second_distiller_reads_the_cache_without_running_the_teacher(digits, split, tmp_path: Path) -> None:
    teacher = make_teacher()
    counter = CountCalls(teacher)
    first = make_distiller(teacher, digits, split, tmp_path)
    assert counter.calls > 0 and first.cache_hit is False
    counter.calls = 0
    second = make_distiller(teacher, digits, split, tmp_path)
    assert second.cache_hit is True
    result = second.score(small_student(teacher))
    assert counter.calls == 0, "a cached run must not call the teacher"
    assert result.teacher_cache_hit is True
    assert not list(tmp_path.rglob("*.tmp")), "no temporary files are left behind"


@pytest.mark.parametrize(
    "change",
    ["aug_seed", "views", "augment", "data", "train_idx", "checkpoint", "feature_kd"],
)
def test_any_input_change_is_a_new_cache_entry(change: str, digits, split, tmp_path: Path) -> None:
    teacher = make_teacher()
    ckpt = tmp_path / "teacher.pt"
    torch.save(teacher.state_dict(), ckpt)
    train_idx, val_idx = split
    data, cfg, augment = digits, {}, None
    teacher_id = TeacherId.of("cifar_resnet20", {}, ckpt)

    def build() -> Distiller:
        return Distiller(
            teacher,
            data,
            train_idx,
            val_idx,
            preprocess_for(teacher),
            ProxyConfig(**{**FAST, **cfg}),
            teacher_id=teacher_id,
            cache=TeacherCache(tmp_path / "cache"),
            augment=augment,
        )

    assert build().cache_hit is False
    assert build().cache_hit is True
    if change == "aug_seed":
        cfg = {"aug_seed": 1}
    elif change == "views":
        cfg = {"views": 3}
    elif change == "augment":
        augment = Augment(crop_padding=1, hflip=False)
    elif change == "data":
        x = digits.x.clone()
        x[int(train_idx[0]), 0, 0, 0] ^= 1  # one pixel of one training image
        data = LoadedData(x, digits.y, digits.num_classes, digits.class_names, "digits (edited)")
    elif change == "train_idx":
        train_idx = train_idx[1:]
    elif change == "checkpoint":
        state = teacher.state_dict()
        state["linear.bias"] = state["linear.bias"] + 1
        torch.save(state, ckpt)
        teacher_id = TeacherId.of("cifar_resnet20", {}, ckpt)
    elif change == "feature_kd":
        cfg = {"feature_kd": True}
    assert build().cache_hit is False


def test_corrupt_cache_entry_is_recomputed(digits, split, tmp_path: Path) -> None:
    teacher = make_teacher()
    make_distiller(teacher, digits, split, tmp_path)
    for f in tmp_path.rglob("logits.npy"):
        f.write_bytes(f.read_bytes()[:100])  # truncated
    again = make_distiller(teacher, digits, split, tmp_path)
    assert again.cache_hit is False
    assert make_distiller(teacher, digits, split, tmp_path).cache_hit is True


def test_empty_arrays_are_stored_and_read_back(tmp_path: Path) -> None:
    # a synthetic detection set where the teacher detected nothing has zero boxes in all
    cache = TeacherCache(tmp_path)
    arrays = {"boxes": np.zeros((0, 4), dtype=np.float32), "counts": np.zeros(3, dtype=np.int64)}
    cache.save("k", arrays)
    found = cache.load("k")
    assert found is not None and found["boxes"].shape == (0, 4) and found["counts"].tolist() == [0, 0, 0]


def test_cache_dir_defaults_and_env_override(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.delenv("STRUCTSEARCH_CACHE", raising=False)
    monkeypatch.setenv("STRUCTSEARCH_HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / "cache"
    monkeypatch.setenv("STRUCTSEARCH_CACHE", str(tmp_path))
    assert TeacherCache().directory == tmp_path
    assert TeacherCache(tmp_path / "x").directory == tmp_path / "x"


def test_same_seed_same_score_and_callback_history(digits, split, tmp_path: Path) -> None:
    teacher = make_teacher()
    distiller = make_distiller(teacher, digits, split, tmp_path, report_every=2)
    seen: list[tuple[int, float]] = []
    a = distiller.score(small_student(teacher), callback=lambda step, top1: seen.append((step, top1)))
    b = distiller.score(small_student(teacher))
    assert (a.val_top1, a.teacher_agreement, a.final_loss) == (b.val_top1, b.teacher_agreement, b.final_loss)
    assert seen == list(a.history) and [s for s, _ in seen] == [2]
    assert a.steps == 4 and a.seconds > 0 and a.train_images_per_s > 0 and 0 <= a.teacher_agreement <= 1
    other = make_distiller(teacher, digits, split, tmp_path, seed=1).score(small_student(teacher))
    assert other.final_loss != a.final_loss


def test_threads_scoring_at_once_score_as_one_at_a_time(digits, split, tmp_path: Path) -> None:
    """torch's global generator is one per process: two seeded runs in threads (dropout draws from
    it) must not interleave their draws, or neither is reproducible."""
    teacher = make_teacher()
    distiller = make_distiller(teacher, digits, split, tmp_path, steps=12)

    def score(_: int = 0) -> float:
        return distiller.score(nn.Sequential(small_student(teacher), nn.Dropout(0.5))).final_loss

    alone = score()
    with ThreadPoolExecutor(2) as pool:
        assert list(pool.map(score, range(2))) == [alone, alone]


def test_student_at_another_resolution_learns_from_the_teachers_own(digits, split, tmp_path: Path) -> None:
    """The teacher's targets stay its 8 px outputs (the cache is not recomputed); the student sees
    the same batches resized. At the teacher's own size the default path runs, bit for bit."""
    teacher = make_teacher()
    distiller = make_distiller(teacher, digits, split, tmp_path)
    calls = CountCalls(teacher)
    plain = distiller.score(small_student(teacher))
    same = distiller.score(small_student(teacher), input_size=8)
    assert (same.val_top1, same.final_loss) == (plain.val_top1, plain.final_loss)
    student = small_student(teacher)
    seen: list[tuple[int, int]] = []
    student.register_forward_pre_hook(lambda _m, args: seen.append(tuple(args[0].shape[-2:])))
    up = distiller.score(student, input_size=12)
    assert calls.calls == 0, "the teacher's outputs come from the cache, at its own resolution"
    assert seen and set(seen) == {(12, 12)} and up.final_loss != plain.final_loss
    assert distiller.evaluate(student, input_size=12)[0] == up.val_top1
    with pytest.raises(ProxyConfigError, match="input_size"):
        distiller.score(small_student(teacher), input_size=0)


def test_online_teacher_trains_on_the_same_stream(digits, split, tmp_path: Path) -> None:
    teacher = make_teacher()
    cached = make_distiller(teacher, digits, split, tmp_path).score(small_student(teacher))
    train_idx, val_idx = split
    online = Distiller(
        teacher, digits, train_idx, val_idx, preprocess_for(teacher), ProxyConfig(**FAST), online_teacher=True
    ).score(small_student(teacher))
    assert online.final_loss == pytest.approx(cached.final_loss, rel=1e-3)


def test_feature_kd_adapters_stay_out_of_the_student(digits, split, tmp_path: Path) -> None:
    teacher = make_teacher()
    student = small_student(teacher)
    keys = set(student.state_dict())
    result = make_distiller(teacher, digits, split, tmp_path, feature_kd=True, report_every=2).score(
        student, callback=lambda *_: None
    )
    assert math.isfinite(result.final_loss)
    assert set(student.state_dict()) == keys
    assert not any(m._forward_hooks for m in student.modules()), "taps are removed after training"


def test_cross_family_student_learns_from_logits(digits, split, tmp_path: Path) -> None:
    teacher = make_teacher()
    vit = create_model(
        "vit_tiny_patch16_224", num_classes=10, img_size=8, patch_size=4, depth=2, embed_dim=48, num_heads=2
    )
    x_val = preprocess_for(teacher)(digits.x[split[1]])

    def kl_to_teacher() -> float:
        vit.eval()
        with torch.no_grad():
            return float(kd_loss(vit(x_val), teacher(x_val), 1.0))

    before = kl_to_teacher()
    make_distiller(teacher, digits, split, tmp_path, lr=0.01, steps=30, alpha=1.0).score(vit)
    # distilled from logits alone, the student's predictive distribution moves clearly onto the teacher's
    assert kl_to_teacher() < 0.25 * before
    with pytest.raises(FeatureKDError, match="same family"):
        make_distiller(teacher, digits, split, tmp_path, feature_kd=True).score(vit)


def test_labels_outside_the_teachers_classes_fail_before_training(digits, split, tmp_path: Path) -> None:
    teacher = make_teacher()
    y = digits.y.clone()
    y[int(split[0][0])] = 12
    bad = LoadedData(digits.x, y, 13, tuple(map(str, range(13))), "digits (relabelled)")
    counter = CountCalls(teacher)
    with pytest.raises(DataError, match="10 classes"):
        make_distiller(teacher, bad, split, tmp_path)
    assert counter.calls == 0


def test_wrong_student_and_bad_inputs_are_user_errors(digits, split, tmp_path: Path) -> None:
    teacher = make_teacher()
    distiller = make_distiller(teacher, digits, split, tmp_path)
    with pytest.raises(StructsearchError, match="teacher has 10 classes"):
        distiller.score(create_model("cifar_resnet20", num_classes=7))
    train_idx, val_idx = split
    with pytest.raises(DataError, match="overlap"):
        Distiller(teacher, digits, train_idx, train_idx[:10], preprocess_for(teacher), ProxyConfig(**FAST))
    with pytest.raises(ValueError, match="unknown optimizer"):
        make_distiller(teacher, digits, split, tmp_path, optimizer="lbfgs").score(small_student(teacher))


# -- CLI -----------------------------------------------------------------------------------------


def test_cli_eval_and_proxy_json(tmp_path: Path) -> None:
    teacher = make_teacher()
    ckpt = tmp_path / "t.pt"
    torch.save(teacher.state_dict(), ckpt)
    res = runner.invoke(
        app,
        [
            "eval",
            "--model",
            "cifar_resnet20",
            "--checkpoint",
            str(ckpt),
            "--data",
            "digits:test",
            "--input-size",
            "8",
            "--device",
            "cpu",
            "--format",
            "json",
        ],
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert (
        out["images"] == len(load_data("digits:test")) and 0 <= out["top1"] <= 100 and out["model"] == "cifar_resnet20"
    )
    # the default (text) format says the same figure in words
    args = ["eval", "--model", "cifar_resnet20", "--checkpoint", str(ckpt), "--data", "digits:test"]
    text = runner.invoke(app, [*args, "--input-size", "8", "--device", "cpu"])
    assert text.exit_code == 0 and f"top-1 {out['top1']:.2f}% on {out['images']} images" in text.output, text.output
    res = runner.invoke(
        app,
        [
            "proxy",
            "--teacher",
            "cifar_resnet20",
            "--checkpoint",
            str(ckpt),
            "--data",
            "digits",
            "--val-size",
            "100",
            "--train-size",
            "200",
            "--steps",
            "2",
            "--batch-size",
            "32",
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
    for key in ("val_top1", "teacher_agreement", "steps", "seconds", "train_images_per_s", "macs", "params"):
        assert key in out
    assert out["steps"] == 2 and 0.4 < out["macs_ratio"] < 0.6


def test_cli_one_line_errors(tmp_path: Path) -> None:
    junk = tmp_path / "junk.th"
    junk.write_bytes(b"not a checkpoint")
    wrong = tmp_path / "wrong.pt"
    torch.save(create_model("cifar_resnet32").state_dict(), wrong)
    bad_npz = tmp_path / "bad.npz"
    bad_npz.write_bytes(b"garbage")
    labels = tmp_path / "labels.npz"
    np.savez(labels, x=np.zeros((4, 8, 8, 3), np.uint8), y=np.array([0, 1, 2, 40]))
    base = ["--device", "cpu", "--input-size", "8"]
    one_line_error(["eval", "--model", "resnet5000", "--data", "digits", *base], "unknown model")
    one_line_error(
        ["eval", "--model", "cifar_resnet20", "--checkpoint", str(junk), "--data", "digits", *base],
        "cannot read checkpoint",
    )
    one_line_error(
        ["eval", "--model", "cifar_resnet20", "--checkpoint", str(wrong), "--data", "digits", *base], "does not fit"
    )
    one_line_error(["eval", "--model", "cifar_resnet20", "--data", f"npz:{tmp_path}/missing.npz", *base], "missing.npz")
    one_line_error(["eval", "--model", "cifar_resnet20", "--data", f"npz:{bad_npz}", *base], "bad.npz")
    one_line_error(["eval", "--model", "cifar_resnet20", "--data", f"npz:{labels}", *base], "10 classes")
    proxy = ["proxy", "--teacher", "cifar_resnet20", "--steps", "1", "--cache-dir", str(tmp_path / "c"), *base]
    one_line_error([*proxy, "--data", f"npz:{labels}", "--val-size", "1"], "10 classes")
    one_line_error([*proxy, "--data", "digits", "--checkpoint", str(wrong)], "does not fit")
    one_line_error([*proxy, "--data", "digits", "--student-model", "vit_nope"], "unknown model")
    one_line_error([*proxy, "--data", "digits", "--width", "0.3"], "width 0.3")
    spec = uniform_width_spec(space_of(create_model("cifar_resnet32"), "cifar_resnet32"), 0.5)
    spec.save(tmp_path / "spec.json")
    one_line_error([*proxy, "--data", "digits", "--student-spec", str(tmp_path / "spec.json")], "cifar_resnet32")
    # the study spec's ProxySection validates the settings it shares with the command
    one_line_error([*proxy, "--data", "digits", "--lr", "-1"], "lr: Input should be greater than 0")
    one_line_error([*proxy, "--data", "digits", "--optimizer", "lbfgs"], "optimizer: Input should be")
    one_line_error([*proxy, "--data", "digits", "--feature-kd", "--student-model", "resnet18"], "same family")
    folder = tmp_path / "one_class" / "cat"
    folder.mkdir(parents=True)
    one_line_error([*proxy, "--data", f"imagefolder:{tmp_path / 'one_class'}"], "need at least 2")
