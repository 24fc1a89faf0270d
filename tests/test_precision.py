"""``precision: bf16`` -- bfloat16 autocast for the proxy's training steps (and the spec/CLI that set it).

Tiny: a random ``cifar_resnet20`` on digits at 8 px, as in test_distill.py.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from structsearch.data import Preprocess
from structsearch.distill import Distiller, ProxyConfig, TeacherCache, TeacherId, uniform_width_spec
from structsearch.distill.vit_kd import attention_log_probs
from structsearch.errors import StructsearchError
from structsearch.models import create_model
from structsearch.search import parse_study_spec
from structsearch.space import space_of
from structsearch.surgery import build_student
from structsearch.train import autocast
from tests.cli_helpers import one_line_error
from tests.test_distill import FAST, make_distiller, make_teacher, small_student

VIT_TINY = dict(img_size=8, patch_size=2, embed_dim=32, depth=2, num_heads=4, mlp_ratio=2.0, num_classes=10)
SPEC = {
    "name": "bf16",
    "teacher": {"model": "cifar_resnet20"},
    "data": {"train": "digits", "input_size": 8},
    "budget": {"flops": "50%"},
}


def test_autocast_runs_matmuls_in_bfloat16_only_when_asked() -> None:
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    with autocast(torch.device("cpu"), "bf16"):
        assert (a @ b).dtype == torch.bfloat16
    with autocast(torch.device("cpu"), "fp32"):
        assert (a @ b).dtype == torch.float32
    with pytest.raises(ValueError, match="fp32 or bf16"):
        autocast(torch.device("cpu"), "fp16")  # type: ignore[arg-type]


def test_bf16_with_feature_kd_trains_cnn_hints_and_vit_taps(digits, split, tmp_path: Path) -> None:
    teacher = make_teacher()
    cnn = make_distiller(teacher, digits, split, tmp_path, precision="bf16", feature_kd=True)
    assert math.isfinite(cnn.score(small_student(teacher)).final_loss)
    vit = create_model("cifar_vit", seed=0, **VIT_TINY).eval()
    student = build_student(vit, uniform_width_spec(space_of(vit, "cifar_vit", VIT_TINY), 0.5))
    config = ProxyConfig(**{**FAST, "channels_last": False, "feature_kd": True, "precision": "bf16"})
    distiller = Distiller(
        vit, digits, *split, Preprocess.from_model(vit), config,
        teacher_id=TeacherId("cifar_vit", tuple(VIT_TINY.items())), cache=TeacherCache(tmp_path), augment=None,
    )  # fmt: skip
    assert math.isfinite(distiller.score(student).final_loss)


def test_attention_maps_for_kd_stay_float32_under_bf16_autocast() -> None:
    vit = create_model("cifar_vit", seed=0, **VIT_TINY).eval()
    attn = vit.blocks[0].attn
    qkv = attn.qkv(torch.randn(2, 17, VIT_TINY["embed_dim"]))
    with autocast(torch.device("cpu"), "bf16"):
        inside = attention_log_probs(attn, qkv.bfloat16())
    assert inside.dtype == torch.float32
    torch.testing.assert_close(inside, attention_log_probs(attn, qkv.bfloat16().float()))


def test_a_bf16_proxy_trains_in_bfloat16_and_keeps_float32_weights(digits, split, tmp_path: Path) -> None:
    teacher = make_teacher()
    runs = {}
    students = {}
    for p in ("fp32", "bf16"):
        students[p] = small_student(teacher)
        runs[p] = make_distiller(teacher, digits, split, tmp_path, precision=p).score(students[p])
    # other arithmetic, other trained weights and loss ...
    assert runs["bf16"].final_loss != runs["fp32"].final_loss
    w32, w16 = students["fp32"].state_dict(), students["bf16"].state_dict()
    assert any(not torch.equal(w32[k], w16[k]) for k in w32 if w32[k].is_floating_point())
    # ... the same kind of result: float32 weights, a finite loss, a score the student really earned
    assert all(v.dtype == torch.float32 for v in w16.values() if v.is_floating_point())
    assert torch.isfinite(torch.tensor(runs["bf16"].final_loss))
    assert runs["bf16"].steps == FAST["steps"]
    # and bf16 is deterministic like fp32: the same seed scores the same
    again = make_distiller(teacher, digits, split, tmp_path, precision="bf16").score(small_student(teacher))
    assert (again.val_top1, again.final_loss) == (runs["bf16"].val_top1, runs["bf16"].final_loss)


def test_proxy_config_default_is_fp32() -> None:
    assert ProxyConfig().precision == "fp32"


def test_spec_precision_is_validated_and_only_bf16_changes_the_fingerprint() -> None:
    plain = parse_study_spec(SPEC)
    assert plain.proxy.precision == "fp32"
    # fp32 studies keep the fingerprint they had before the field existed (warm starts still match)
    old = plain.model_dump(include={"teacher", "student", "data", "proxy", "importance", "seed"})
    old["data"].pop("resolutions")
    del old["proxy"]["precision"]
    assert plain.fingerprint() == hashlib.sha256(json.dumps(old, sort_keys=True).encode()).hexdigest()[:16]
    fast = parse_study_spec({**SPEC, "proxy": {"precision": "bf16"}})
    assert fast.proxy.precision == "bf16" and fast.fingerprint() != plain.fingerprint()
    with pytest.raises(StructsearchError, match="proxy.precision") as e:
        parse_study_spec({**SPEC, "proxy": {"precision": "fp16"}})
    assert "\n" not in str(e.value)


def test_detection_studies_refuse_bf16() -> None:
    spec = yaml.safe_load(Path("studies/detection_digits_mosaic.yaml").read_text())
    parse_study_spec(spec)  # valid as shipped ...
    with pytest.raises(StructsearchError, match="detection proxies train in fp32"):
        parse_study_spec({**spec, "proxy": {**spec["proxy"], "precision": "bf16"}})


def test_cli_proxy_refuses_an_unknown_precision(tmp_path: Path) -> None:
    one_line_error(
        ["proxy", "--teacher", "cifar_resnet20", "--data", "digits", "--input-size", "8", "--device", "cpu",
         "--steps", "1", "--cache-dir", str(tmp_path), "--precision", "fp16"],
        "precision",
    )  # fmt: skip
