"""After a detection search: the CLI's tables, recheck, fine-tune and export of a detection study.

One tiny real study (FCOS over a CIFAR ResNet-20 backbone, a one-epoch teacher on a 32 px digits
mosaic, 3-step proxies) is searched once per module; every command then runs on it for real.
"""

from __future__ import annotations

import optuna
import pytest

from structsearch.cli import app
from structsearch.search import parse_study_spec, run_search
from tests.cli_helpers import runner

SPEC = {
    "name": "det-workflows",
    "task": "detection",
    "teacher": {
        "model": "fcos_detector",
        "kwargs": {
            "backbone": "cifar_resnet20",
            "num_classes": 10,
            "image_size": 32,
            "stages": 1,
            "fpn_channels": 32,
            "head_convs": 1,
        },
        "train_epochs": 1,
    },
    "data": {
        "train": "mosaic:digits?n=96&size=32&seed=0&objects=2",
        "val": "mosaic:digits:test?n=32&size=32&seed=1&objects=2",
        "input_size": 32,
    },
    "budget": {"flops": "60%"},
    "measure": {"latency": False, "memory": False},
    "sampler": "random",
    "trials": 5,
    "proxy": {"steps": 3, "batch_size": 16},
}


@pytest.fixture(scope="module")
def study(home) -> optuna.Study:
    return run_search(parse_study_spec(SPEC))


def test_tables_name_the_detection_score(study: optuna.Study) -> None:
    """pareto/best say mAP (and show mAP@.5 per trial), never top-1, for a detection study."""
    res = runner.invoke(app, ["pareto", "--study", study.study_name])
    assert res.exit_code == 0, res.output
    assert "score (mAP %)" in res.stdout and "mAP@.5" in res.stdout and "top-1" not in res.stdout
    first = min(t.number for t in study.trials if t.user_attrs.get("trained"))
    res = runner.invoke(app, ["best", "--study", study.study_name, "--budget-flops", "100%"])
    assert res.exit_code == 0, res.output
    assert "score (mAP %)" in res.stdout and "top-1" not in res.stdout
    map50 = study.trials[first].user_attrs["map50"]
    assert isinstance(map50, float) and 0 <= map50 <= 100
