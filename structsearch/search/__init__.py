"""The search: Optuna studies of student structures under FLOPs / params budgets.

Entry points used by the CLI and the API alike:

* :func:`run_search` -- create or resume the study of a :class:`StudySpec` and run its trials;
* :func:`best_under_budget`, :func:`pareto_front`, :func:`list_studies` -- read results;
* :func:`export_trial` -- write a chosen student (weights, spec, ONNX).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from structsearch.lazy import lazy_attributes
from structsearch.search.results import (
    TrialRecord,
    best_under_budget,
    pareto_front,
    scored,
    structsearch_studies,
    study_records,
)
from structsearch.search.spec import StudySpec, load_study_spec, parse_study_spec
from structsearch.search.storage import open_storage

if TYPE_CHECKING:  # pragma: no cover
    from structsearch.search.export import export_trial
    from structsearch.search.plot import plot_front
    from structsearch.search.runner import run_search

#: Names whose modules import torch and timm, loaded on first use, so that reading results
#: (``structsearch best``/``pareto``/``studies``) starts in a fraction of a second.
__getattr__ = lazy_attributes(__name__, {"export_trial": "export", "plot_front": "plot", "run_search": "runner"})


#: The embedded default: a study that needs no files (shipped as studies/digits_default.yaml too).
DEFAULT_SPEC: dict[str, Any] = {
    "name": "digits-default",
    "teacher": {"model": "cifar_resnet20", "kwargs": {"num_classes": 10}, "train_epochs": 30},
    "data": {"train": "digits", "val_size": 0.2, "input_size": 8, "hflip": False},
    "budget": {"flops": "50%"},
    "objectives": ["accuracy", "macs"],
    "sampler": "tpe",
    "trials": 20,
    "proxy": {"steps": 80, "batch_size": 64, "lr": 0.05},
    "seed": 0,
}


def default_spec() -> StudySpec:
    """The embedded default study (digits, a small CIFAR-ResNet teacher trained on first use)."""
    return parse_study_spec(DEFAULT_SPEC, "embedded default")


#: Study attributes ``list_studies`` shows as they are stored.
_LISTED_ATTRS = ("teacher", "data", "budget_flops", "budget_params", "budget_latency", "budget_memory")


def list_studies(storage_url: str | None = None) -> list[dict[str, Any]]:
    """One summary row per structsearch study in the storage."""
    rows = []
    for s in structsearch_studies(open_storage(storage_url, create=False)):
        recs = study_records(s)
        good = [r for r in scored(recs) if r.feasible]
        a = s.user_attrs
        rows.append(
            {
                "study": s.study_name,
                **{key: a.get(key) for key in _LISTED_ATTRS},
                "trials": len(recs),
                "trials_requested": a.get("trials_requested"),
                "trained": len(scored(recs)),
                "best_score": max((r.score for r in good), default=None),
            }
        )
    return rows


__all__ = [
    "DEFAULT_SPEC",
    "StudySpec",
    "TrialRecord",
    "best_under_budget",
    "default_spec",
    "export_trial",
    "list_studies",
    "load_study_spec",
    "open_storage",
    "pareto_front",
    "parse_study_spec",
    "plot_front",
    "run_search",
    "study_records",
]
