"""Reading results starts fast: ``structsearch best``/``pareto`` and study-spec validation import
neither torch nor timm (2-4 s of every command's start; ``structsearch.lazy``)."""

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


def test_lazy_names_still_resolve() -> None:
    import structsearch.cost as cost
    import structsearch.search as search
    import structsearch.train as train

    assert callable(cost.measure_cost) and callable(search.run_search) and callable(train.make_optimizer)
    with pytest.raises(AttributeError, match="'structsearch.cost' has no attribute 'no_such_name'"):
        cost.no_such_name  # noqa: B018
