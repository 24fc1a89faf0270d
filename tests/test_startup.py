"""Reading results starts fast: ``structsearch best``/``pareto``, study-spec validation and the API
app's import load neither torch nor timm (2-4 s of every command's start and torch's memory in every
API process; ``structsearch.lazy``)."""

from __future__ import annotations

import subprocess
import sys

import pytest

READERS = """
import sys
import structsearch.cli
from structsearch.search import best_under_budget, pareto_front, parse_study_spec
from structsearch.search.recheck import rechecks_from_attrs
from structsearch.search.results import baseline_gains, load_study, study_records
from structsearch.cost import parse_budget
parse_study_spec({"name": "s", "teacher": {"model": "cifar_resnet20"}, "data": {"train": "digits"},
                  "budget": {"flops": "50%"}, "proxy": {"precision": "bf16"}}, "test")
heavy = sorted(m for m in ("torch", "timm", "torchvision", "fvcore", "scipy") if m in sys.modules)
print(",".join(heavy))
"""


def test_reading_results_imports_no_torch() -> None:
    out = subprocess.run([sys.executable, "-c", READERS], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"imported by the result readers: {out.stdout.strip()}"


API_START = """
import sys
import api.app
from structsearch.service.admission import Source
assert Source.of("npz:/data/cifar10/train.npz[:100]", "classification").paths == ("/data/cifar10/train.npz",)
assert Source.of("mosaic:digits?n=10&size=64", "detection").mosaic.n == 10
heavy = sorted(m for m in ("torch", "timm", "torchvision", "fvcore", "scipy") if m in sys.modules)
print(",".join(heavy))
"""


def test_api_app_and_source_checks_import_no_torch() -> None:
    """torch loads on the first submitted spec (its teacher is counted on the meta device), not at start."""
    out = subprocess.run([sys.executable, "-c", API_START], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"imported by the API app: {out.stdout.strip()}"


def test_lazy_names_still_resolve() -> None:
    import structsearch.cost as cost
    import structsearch.data as data
    import structsearch.detection as detection
    import structsearch.search as search
    import structsearch.train as train

    assert callable(cost.measure_cost) and callable(search.run_search) and callable(train.make_optimizer)
    assert callable(data.load_data) and data.Preprocess.__name__ == "Preprocess"
    assert callable(detection.load_detection_data)
    with pytest.raises(AttributeError, match="'structsearch.cost' has no attribute 'no_such_name'"):
        cost.no_such_name  # noqa: B018
