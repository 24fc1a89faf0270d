"""CLI: `models`, `space`, `cost` -- output for people and scripts, one-line errors for bad input."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import Result

from structsearch.cli import app
from structsearch.models import create_model
from structsearch.space import list_families, space_of
from tests.cli_helpers import runner

EXE = [sys.executable, "-m", "structsearch.cli"]


def run(*args: str) -> Result:
    """``structsearch ARGS`` in this process: a CLI process costs ~5 s of imports, so only the tests
    named "real process" start one."""
    return runner.invoke(app, list(args))


def assert_one_line_error(res: Result, *fragments: str) -> None:
    assert res.exit_code == 2, res.output
    assert isinstance(res.exception, SystemExit), res.exception  # a clean exit, not a raised error
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    for f in fragments:
        assert f in lines[0]


def test_a_real_process_lists_every_family_and_prints_one_line_for_bad_input() -> None:
    res = subprocess.run([*EXE, "models", "--format", "json"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert {f["family"] for f in json.loads(res.stdout)} == {f.name for f in list_families()}
    bad = subprocess.run([*EXE, "cost", "resnet5000"], capture_output=True, text=True)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines() == [bad.stderr.strip()] and "unknown model 'resnet5000'" in bad.stderr


def test_models_lists_every_family() -> None:
    res = run("models", "--format", "json")
    assert res.exit_code == 0, res.output
    assert {f["family"] for f in json.loads(res.stdout)} == {
        "cifar_resnet",
        "convnext",
        "cspnet",
        "detector",
        "edgenext",
        "efficientformer",
        "efficientformer_v2",
        "efficientvit",
        "efficientvit_msra",
        "eva",
        "fastvit",
        "ghostnet",
        "hgnet",
        "inception_next",
        "levit",
        "mambaout",
        "metaformer",
        "pvt_v2",
        "regnet",
        "repvit",
        "resnet",
        "resnetv2",
        "rexnet",
        "starnet",
        "swin",
        "tinyvit",
        "mobilenet",
        "mobilevit",
        "vit",
    }


def test_space_prints_blocks_and_mac_range() -> None:
    res = run("space", "cifar_resnet20", "--format", "json")
    data = json.loads(res.stdout)
    assert [len(s) for s in data["stages"]] == [3, 3, 3]
    assert data["stages"][1][0]["removable"] is False and data["stages"][0][0]["removable"] is True
    assert 0 < data["smallest"]["macs"] < data["largest"]["macs"]
    assert data["largest"]["params"] == 269_722  # the published ResNet-20 size
    table = run("space", "cifar_resnet20")
    assert "smallest" in table.stdout and "largest" in table.stdout


def test_space_of_a_cifar_sized_vit() -> None:
    res = run("space", "vit_tiny_patch16_224", "--kw", "img_size=32", "--kw", "patch_size=4", "--format", "json")
    data = json.loads(res.stdout)
    assert data["input_size"] == [3, 32, 32] and data["stages"][0][0]["heads"] == [1, 2, 3]


def test_cost_json_and_student_spec(tmp_path: Path) -> None:
    res = run("cost", "cifar_resnet56", "--format", "json")
    full = json.loads(res.stdout)
    assert full["params"] == 853_018 and "multiply-add" in full["convention"]
    teacher = create_model("cifar_resnet56")
    spec = space_of(teacher, "cifar_resnet56").sample(random.Random(0))
    spec.save(tmp_path / "spec.json")
    student = json.loads(run("cost", "--spec", str(tmp_path / "spec.json"), "--format", "json").stdout)
    assert student["macs"] < full["macs"] and student["params"] < full["params"]


@pytest.mark.parametrize(
    "args,fragments",
    [
        (("cost", "resnet5000"), ("unknown model 'resnet5000'",)),
        (
            ("space", "mobileone_s0"),
            (
                "no search-space adapter",
                "ByobNet",
                "mobilevit family cannot narrow or drop stages.0.0 (MobileOneBlock)",
            ),
        ),
        (("space", "ghostnetv3_050"), ("ghostnet family cannot narrow or drop blocks.0.0 (GhostBottleneckV3)",)),
        (("cost", "resnet18.zzz"), ("unknown pretrained tag 'zzz' for 'resnet18'", "known tags: a1_in1k")),
        (("cost", "convnext_atto", "--input-size", "8"), ("cannot run on 3x8x8 inputs", "larger images")),
        (("cost", "--spec", "/nonexistent/spec.json"), ("spec file not found",)),
        (("cost", "resnet18", "--kw", "oops"), ("--kw 'oops'",)),
    ],
)
def test_bad_input_is_one_line(args: tuple[str, ...], fragments: tuple[str, ...]) -> None:
    assert_one_line_error(run(*args), *fragments)


def test_spec_that_does_not_fit_names_the_block(tmp_path: Path) -> None:
    bad = {
        "model": "cifar_resnet20",
        "stages": [
            [{"keep": True, "width": 1.0}] * 3,
            [{"keep": False, "width": 1.0}] + [{"keep": True, "width": 1.0}] * 2,
            [{"keep": True, "width": 1.0}] * 3,
        ],
    }
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    assert_one_line_error(run("cost", "--spec", str(tmp_path / "bad.json")), "layer2.0", "cannot be dropped")
    (tmp_path / "junk.json").write_text("{nope")
    assert_one_line_error(run("cost", "--spec", str(tmp_path / "junk.json")), "not valid JSON")
