"""Everything a search needs, built once per process from a :class:`StudySpec`.

Two steps, so bad input is rejected before anything is stored or trained:

* :func:`plan_search` is cheap (models built with random weights, costs counted, data spec parsed):
  unknown models, malformed or impossible budgets and unreadable specs fail here, with one line.
  The API runs it before accepting a search.
* :func:`build_context` is heavy: it loads the data, loads (or trains, once, cached) the teacher and
  prepares the KD scorer whose teacher outputs are cached on disk.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from structsearch.cost import CostReport, default_input_size, format_count, measure_cost, parse_budget
from structsearch.data import DataSpec
from structsearch.errors import BudgetError, StructsearchError
from structsearch.models import create_model, file_hash
from structsearch.search.spec import StudySpec
from structsearch.space import Space, space_of
from structsearch.surgery import build_student


@dataclass
class SearchPlan:
    """The cheap facts of a search: its space, costs and resolved budgets."""

    spec: StudySpec
    space: Space
    base_model: str
    base_kwargs: dict[str, Any]
    inherit: bool
    input_size: tuple[int, int, int]
    teacher_cost: CostReport
    smallest_cost: CostReport
    max_macs: int | None
    max_params: int | None

    def study_attrs(self) -> dict[str, Any]:
        """What the study stores about itself (shown by ``structsearch studies`` and the dashboard)."""
        s = self.spec
        return {
            "teacher": s.teacher.model,
            "student_base": self.base_model,
            "data": s.data.train,
            "budget_flops": s.budget.flops,
            "budget_params": s.budget.params,
            "max_macs": self.max_macs,
            "max_params": self.max_params,
            "teacher_macs": self.teacher_cost.macs,
            "teacher_params": self.teacher_cost.params,
            "smallest_macs": self.smallest_cost.macs,
            "input_size": list(self.input_size),
            "convention": self.teacher_cost.convention,
            "fingerprint": s.fingerprint(),
            "trials_requested": s.trials,
        }


def _resolve(text: str | None, what: str, reference: int) -> int | None:
    if text is None:
        return None
    b = parse_budget(text, what)
    return b.resolve(reference) if b.relative else int(b.value)


def plan_search(spec: StudySpec) -> SearchPlan:
    """Check a spec against its models and budgets without training anything."""
    DataSpec.parse(spec.data.train)
    if spec.data.val:
        DataSpec.parse(spec.data.val)
    if spec.teacher.checkpoint and not Path(spec.teacher.checkpoint).is_file():
        raise StructsearchError(f"teacher checkpoint not found: {spec.teacher.checkpoint}")
    teacher = create_model(spec.teacher.model, **spec.teacher.kwargs).eval()
    size = (3, spec.data.input_size, spec.data.input_size) if spec.data.input_size else default_input_size(teacher)
    base_model = spec.student.model or spec.teacher.model
    base_kwargs = dict(spec.student.kwargs) if spec.student.model else dict(spec.teacher.kwargs)
    inherit = base_model == spec.teacher.model and base_kwargs == dict(spec.teacher.kwargs)
    if not inherit:
        base_kwargs.setdefault("num_classes", getattr(teacher, "num_classes", 1000))
    base = teacher if inherit else create_model(base_model, **base_kwargs).eval()
    space = space_of(base, base_model, base_kwargs)
    teacher_cost = measure_cost(teacher, size)
    smallest = measure_cost(build_student(base, space.smallest_spec()), size)
    max_macs = _resolve(spec.budget.flops, "flops", teacher_cost.macs)
    max_params = _resolve(spec.budget.params, "params", teacher_cost.params)
    if max_macs is not None and max_macs < smallest.macs:
        raise BudgetError(
            f"FLOPs budget {spec.budget.flops} ({format_count(max_macs)} MACs) is below the smallest "
            f"student of {base_model} ({format_count(smallest.macs)} MACs at {size[1]} px); raise the budget"
        )
    if max_params is not None and max_params < smallest.params:
        raise BudgetError(
            f"params budget {spec.budget.params} ({format_count(max_params)}) is below the smallest "
            f"student of {base_model} ({format_count(smallest.params)} params); raise the budget"
        )
    return SearchPlan(spec, space, base_model, base_kwargs, inherit, size, teacher_cost, smallest, max_macs, max_params)


@dataclass
class SearchContext:
    """The heavy, per-process state of a search: data, teacher, base model and KD scorer."""

    plan: SearchPlan
    base: nn.Module
    distiller: Any  # structsearch.distill.Distiller
    #: The teacher's own top-1 on the validation split: the reference every score is read against.
    teacher_score: float

    def score(self, student: nn.Module, report: Any = None) -> Any:
        """Train ``student`` in place with the short KD proxy; returns a ``ProxyResult``."""
        return self.distiller.score(student, report)

    def artifact_dir(self, study: str, trial: int) -> Path:
        from structsearch.search.storage import artifacts_dir

        return artifacts_dir() / study / f"trial-{trial:05d}"


def build_context(plan: SearchPlan) -> SearchContext:
    """Load data, load or train the teacher, prepare the cached KD scorer (once per process)."""
    from structsearch.data import Augment, Preprocess, fingerprint, load_data, split_train_val
    from structsearch.distill import Distiller, ProxyConfig, TeacherCache, TeacherId
    from structsearch.search.storage import home
    from structsearch.teachers import trained_teacher

    spec = plan.spec
    train_data = load_data(spec.data.train)
    if spec.data.val:
        val_data = load_data(spec.data.val)
        train_idx = torch.arange(len(train_data))
        if spec.data.train_size:
            train_idx, _ = split_train_val(train_data.y, 1, spec.seed, spec.data.train_size)
        val_idx = torch.arange(len(val_data))
    else:
        val_data = train_data
        train_idx, val_idx = split_train_val(train_data.y, spec.data.val_size, spec.seed, spec.data.train_size)

    # crop padding scaled to the images (CIFAR's 4 px at 32 px), flips as the data allows
    augment = Augment.for_size(train_data.x.shape[-2], hflip=spec.data.hflip)
    t = spec.teacher
    teacher = create_model(t.model, checkpoint=t.checkpoint, **t.kwargs).eval()
    preprocess = Preprocess.from_model(teacher, plan.input_size[1:])
    if t.checkpoint:
        teacher_id = TeacherId.of(t.model, t.kwargs, t.checkpoint)
    elif t.train_epochs:
        teacher, path = trained_teacher(
            t.model, t.kwargs, train_data, fingerprint(train_data), train_idx, preprocess, t.train_epochs, spec.seed,
            home() / "teachers", augment,
        )
        teacher_id = TeacherId(t.model, tuple(sorted(t.kwargs.items())), file_hash(path))
    else:
        teacher_id = None  # hashed from its (random) weights
    base = teacher if plan.inherit else create_model(plan.base_model, **plan.base_kwargs).eval()
    p = spec.proxy
    lr = p.lr if p.lr is not None else (0.003 if plan.inherit else 0.05)
    config = ProxyConfig(
        steps=p.steps, batch_size=p.batch_size, optimizer=p.optimizer, lr=lr, temperature=p.temperature,
        alpha=p.alpha, feature_kd=p.feature_kd and plan.inherit, seed=spec.seed, device=p.device,
        report_every=max(1, p.steps // 5),
    )
    distiller = Distiller(
        teacher, train_data, train_idx, val_idx, preprocess, config,
        val_data=val_data, teacher_id=teacher_id, cache=TeacherCache(), augment=augment,
    )
    teacher_score, _ = distiller.evaluate(teacher)
    return SearchContext(plan, base, distiller, teacher_score)
