"""Everything a search needs, built once per process from a :class:`StudySpec`.

Two steps, so bad input is rejected before anything is stored or trained:

* :func:`plan_search` is cheap (models built with random weights, costs counted, data spec parsed):
  unknown models, malformed or impossible budgets and unreadable specs fail here, with one line.
  The API runs it before accepting a search.
* :func:`build_context` is heavy: it loads the data, loads (or trains, once, cached) the teacher and
  prepares the KD scorer whose teacher outputs are cached on disk.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from structsearch.cost import (
    CostReport,
    LatencyReport,
    MemoryReport,
    default_input_size,
    format_bytes,
    format_count,
    format_ms,
    measure_cost,
    measure_latency,
    measure_memory,
    parse_budget,
)
from structsearch.data import DataSpec
from structsearch.distill.taps import check_feature_pair
from structsearch.errors import BudgetError, StructsearchError
from structsearch.models import create_model, file_hash
from structsearch.search.baselines import enqueued_params
from structsearch.search.costmodel import CostModel
from structsearch.search.datafree import check_synthetic, load_train_data
from structsearch.search.detection import build_detection_scorer, check_detection_spec
from structsearch.search.proposal import ProposalSpace
from structsearch.search.spec import StudySpec
from structsearch.space import Space, space_of
from structsearch.surgery import build_student
from structsearch.teach.run import input_side

if TYPE_CHECKING:  # pragma: no cover
    from structsearch.distill import Distiller


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
    #: Student resolutions searched over (``data.resolutions``); None: every student at ``input_size``.
    resolutions: tuple[int, ...] | None = None
    #: Resolved latency budget in ms / memory budget in bytes (measured per ``spec.measure``).
    max_latency_ms: float | None = None
    max_memory_bytes: int | None = None
    #: The teacher measured at ``input_size``; only when a relative latency/memory budget needed it.
    teacher_latency: LatencyReport | None = None
    teacher_memory: MemoryReport | None = None
    #: The base model students are cut from (the teacher itself when they inherit its weights).
    base: nn.Module | None = None
    #: Content hash of ``teacher.checkpoint``: a retrained teacher at the same path is another teacher,
    #: so a study never resumes or warm-starts across it (:mod:`structsearch.search.study`).
    teacher_checkpoint: str | None = None
    _proposals: dict[int | None, ProposalSpace] = field(default_factory=dict, init=False, repr=False, compare=False)

    def proposals(self, resolution: int | None = None) -> ProposalSpace:
        """The budget-filling proposal space at a student resolution (calibrated once, then cached)."""
        if resolution not in self._proposals:
            assert self.base is not None, "plan_search sets the base model"
            model = CostModel.calibrate(self.base, self.space, self.student_input_size(resolution))
            primary, count = (
                (self.max_macs, model.macs) if self.max_macs is not None else (self.max_params, model.params)
            )
            smallest = count(self.space.smallest_spec())
            self._proposals[resolution] = ProposalSpace(
                self.space,
                model,
                self.max_macs,
                self.max_params,
                self.spec.budget.fill,
                vary_target=not self.spec.single_objective,
                min_target=smallest / primary if primary else 0.0,
            )
        return self._proposals[resolution]

    def student_base(self, teacher: nn.Module) -> nn.Module:
        """The model students are cut from: the teacher, or the student base model initialised from
        the study's seed (so a search, its recheck and its fine-tune start from the same weights)."""
        return (
            teacher if self.inherit else create_model(self.base_model, seed=self.spec.seed, **self.base_kwargs).eval()
        )

    def baseline_trials(self) -> list[tuple[str, dict[str, Any]]]:
        """``(name, parameters)`` of the baselines a new study enqueues, at the largest resolution."""
        resolution = max(self.resolutions) if self.resolutions else None
        fixed = {"resolution": resolution} if resolution is not None else {}
        return [
            (name, {**params, **fixed})
            for name, params in enqueued_params(self.spec.baselines, self.proposals(resolution))
        ]

    def student_input_size(self, resolution: int | None) -> tuple[int, int, int]:
        """``(C, H, W)`` a student runs at: its trial's resolution, else the teacher's size."""
        return self.input_size if resolution is None else (self.input_size[0], resolution, resolution)

    def measure_runtime(
        self, model: nn.Module, resolution: int | None = None
    ) -> tuple[LatencyReport | None, MemoryReport | None]:
        """Latency and peak activation memory of ``model`` as the spec's ``measure`` section says.

        One place, so candidates, the teacher and the smallest student are measured alike.
        """
        m = self.spec.measure
        size = self.student_input_size(resolution)
        latency = measure_latency(model, size, **m.model_dump(exclude={"latency", "memory"})) if m.latency else None
        memory = measure_memory(model, size, device=m.device, batch_size=m.batch_size) if m.memory else None
        return latency, memory

    def study_attrs(self) -> dict[str, Any]:
        """What the study stores about itself (shown by ``structsearch studies`` and the dashboard)."""
        s = self.spec
        measured: dict[str, Any] = {
            "budget_latency": s.budget.latency,
            "budget_memory": s.budget.memory,
            "max_latency_ms": self.max_latency_ms,
            "max_memory_bytes": self.max_memory_bytes,
            "resolutions": list(self.resolutions) if self.resolutions else None,
            "measure": s.measure.model_dump(),
        }
        if self.teacher_latency is not None:
            measured["teacher_latency_ms"] = self.teacher_latency.median_ms
            measured["latency_device"] = self.teacher_latency.device
        if self.teacher_memory is not None:
            measured["teacher_memory_bytes"] = self.teacher_memory.peak_bytes
            measured["memory_device"] = self.teacher_memory.device
        return measured | {
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
            "teacher_checkpoint": self.teacher_checkpoint,
            "trials_requested": s.trials,
        }


def _resolve(text: str | None, what: str, reference: int) -> int | None:
    if text is None:
        return None
    b = parse_budget(text, what)
    return round(b.resolve(reference)) if b.relative else int(b.value)  # a count: already whole


def inherits(spec: StudySpec) -> bool:
    """Whether the study's students are cut from the teacher itself (no other ``student:`` model or
    kwargs, and ``student.inherit`` left on) and so start from its weights; else they train from scratch."""
    if not spec.student.inherit:
        return False
    if not spec.student.model:
        return True
    return spec.student.model == spec.teacher.model and dict(spec.student.kwargs) == dict(spec.teacher.kwargs)


def plan_search(spec: StudySpec) -> SearchPlan:
    """Check a spec against its models and budgets without training anything."""
    detection = spec.task == "detection"
    if not detection:
        DataSpec.parse(spec.data.train)
        if spec.data.val:
            DataSpec.parse(spec.data.val)
    if spec.teacher.checkpoint and not Path(spec.teacher.checkpoint).is_file():
        raise StructsearchError(f"teacher checkpoint not found: {spec.teacher.checkpoint}")
    teacher = create_model(spec.teacher.model, **spec.teacher.kwargs).eval()
    if detection:
        check_detection_spec(spec, teacher)  # coco:/mosaic:/synthetic: sources, a detector teacher
    check_synthetic(spec, teacher)  # synthetic:N data needs a checkpoint and a method that fits the teacher
    side = input_side(spec.data.input_size, spec.teacher.checkpoint)
    size = (3, side, side) if side else default_input_size(teacher)
    base_model = spec.student.model or spec.teacher.model
    base_kwargs = dict(spec.student.kwargs) if spec.student.model else dict(spec.teacher.kwargs)
    inherit = inherits(spec)
    if not inherit:
        base_kwargs.setdefault("num_classes", getattr(teacher, "num_classes", 1000))
    base = teacher if inherit else create_model(base_model, **base_kwargs).eval()
    space = space_of(base, base_model, base_kwargs)
    if spec.proxy.feature_kd and inherit and not detection:  # the trainer's first check, before a study exists
        check_feature_pair(teacher, teacher)
    teacher_cost = measure_cost(teacher, size)
    resolutions = spec.data.resolutions
    smallest_size = (size[0], resolutions[0], resolutions[0]) if resolutions else size
    smallest_student = build_student(base, space.smallest_spec())
    smallest = measure_cost(smallest_student, smallest_size)
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
    plan = SearchPlan(
        spec,
        space,
        base_model,
        base_kwargs,
        inherit,
        size,
        teacher_cost,
        smallest,
        max_macs,
        max_params,
        resolutions=resolutions,
        base=base,
        teacher_checkpoint=file_hash(spec.teacher.checkpoint) if spec.teacher.checkpoint else None,
    )
    _resolve_measured_budgets(plan, teacher, smallest_student)
    return plan


def _resolve_measured_budgets(plan: SearchPlan, teacher: nn.Module, smallest: nn.Module) -> None:
    """Resolve the latency/memory budgets and check the smallest student can meet them.

    The teacher is measured (at its own size) only when a budget is a percentage of it; the
    smallest student (at the smallest resolution) whenever there is such a budget, so an impossible
    budget is refused before anything is stored. Where the measuring device is missing (a CPU-only
    API server validating a spec measured on ``cuda``) the checks are left to the workers, whose
    trials then fail with that one-line reason if they lack it too.
    """
    spec, b = plan.spec, plan.spec.budget
    if b.latency is None and b.memory is None:
        return
    lat_budget = parse_budget(b.latency, "latency") if b.latency else None
    mem_budget = parse_budget(b.memory, "memory") if b.memory else None
    if spec.measure.device.startswith("cuda") and not torch.cuda.is_available():
        if lat_budget is not None and not lat_budget.relative:
            plan.max_latency_ms = float(lat_budget.value)
        if mem_budget is not None and not mem_budget.relative:
            plan.max_memory_bytes = round(mem_budget.value)
        return
    if (lat_budget and lat_budget.relative) or (mem_budget and mem_budget.relative):
        plan.teacher_latency, plan.teacher_memory = plan.measure_runtime(teacher)
    if lat_budget is not None:
        ref = plan.teacher_latency.median_ms if plan.teacher_latency else 0.0
        plan.max_latency_ms = float(lat_budget.resolve(ref))
    if mem_budget is not None:
        ref_bytes = plan.teacher_memory.peak_bytes if plan.teacher_memory else 0
        plan.max_memory_bytes = int(mem_budget.resolve(ref_bytes))
    latency, memory = plan.measure_runtime(smallest, plan.resolutions[0] if plan.resolutions else None)
    px = plan.student_input_size(plan.resolutions[0] if plan.resolutions else None)[1]
    if plan.max_latency_ms is not None and latency is not None and latency.median_ms > plan.max_latency_ms:
        raise BudgetError(
            f"latency budget {b.latency} ({format_ms(plan.max_latency_ms)}) is below the smallest student of "
            f"{plan.base_model} ({format_ms(latency.median_ms)} at {px} px on {latency.device}, {latency.runtime}); "
            "raise the budget"
        )
    if plan.max_memory_bytes is not None and memory is not None and memory.peak_bytes > plan.max_memory_bytes:
        raise BudgetError(
            f"memory budget {b.memory} ({format_bytes(plan.max_memory_bytes)}) is below the peak activation memory of "
            f"the smallest student of {plan.base_model} ({format_bytes(memory.peak_bytes)} at {px} px on {memory.device}); "
            "raise the budget"
        )


@dataclass
class SearchContext:
    """The heavy, per-process state of a search: data, teacher, base model and KD scorer."""

    plan: SearchPlan
    base: nn.Module
    #: Scores a candidate: :meth:`Distiller.score` trains it in place with the short KD proxy.
    distiller: Distiller
    #: The teacher's own top-1 on the validation split: the reference every score is read against.
    teacher_score: float
    #: Where trained students are saved, a folder per trial; ``None``: this context saves none (recheck).
    artifacts: Path | None = None

    def artifact_dir(self, study: str, trial: int) -> Path:
        if self.artifacts is None:
            raise RuntimeError("this search context was built without an artifacts directory")
        return self.artifacts / study / f"trial-{trial:05d}"


@dataclass
class StudyData:
    """A study's teacher and data, loaded exactly as its search loads them.

    Shared by the search (:func:`build_context`), ``recheck`` and ``finetune``, so all three
    train on the same rows and hold out the same validation rows.
    """

    teacher: nn.Module
    #: The teacher's identity in cache keys; ``None`` for a randomly initialised teacher.
    teacher_id: Any
    preprocess: Any  # structsearch.data.Preprocess
    train: Any  # structsearch.data.LoadedData
    val: Any
    train_idx: torch.Tensor
    val_idx: torch.Tensor
    augment: Any  # structsearch.data.Augment


def load_study_data(plan: SearchPlan) -> StudyData:
    """Load the data and load (or train once, cached) the teacher of a planned search."""
    from structsearch.data import Augment, Preprocess, fingerprint, load_data, train_val_rows
    from structsearch.teachers import study_teacher

    spec = plan.spec
    t = spec.teacher
    # seeded: an untrained teacher (no checkpoint) or one trained below starts the same in every run
    teacher = create_model(t.model, checkpoint=t.checkpoint, seed=spec.seed, **t.kwargs).eval()
    preprocess = Preprocess.from_model(teacher, plan.input_size[1:])
    # files, or synthetic:N made from the teacher (validation then carved from it: see search.datafree)
    train_data = load_train_data(spec, teacher, preprocess)
    val_data = load_data(spec.data.val) if spec.data.val else train_data
    val_rows = len(val_data) if spec.data.val else None
    train_idx, val_idx = train_val_rows(train_data.y, val_rows, spec.data.val_size, spec.seed, spec.data.train_size)

    # crop padding scaled to the images (CIFAR's 4 px at 32 px), flips as the data allows
    augment = Augment.for_size(train_data.x.shape[-2], hflip=spec.data.hflip)
    teacher, teacher_id = study_teacher(
        t, spec.seed, teacher, train_data, lambda: fingerprint(train_data), train_idx, preprocess, augment=augment
    )
    return StudyData(teacher.eval(), teacher_id, preprocess, train_data, val_data, train_idx, val_idx, augment)


def build_context(plan: SearchPlan, artifacts: Path | None = None) -> SearchContext:
    """Load data, load or train the teacher, prepare the cached KD scorer (once per process).

    ``artifacts``: where trials save their trained students (see :attr:`SearchContext.artifacts`).
    """
    from structsearch.distill import Distiller, ProxyConfig, TeacherCache
    from structsearch.distill.trainer import default_lr

    if plan.spec.task == "detection":
        teacher, scorer, score = build_detection_scorer(plan)
        return SearchContext(plan, teacher, scorer, score, artifacts)
    spec = plan.spec
    d = load_study_data(plan)
    teacher, preprocess, augment = d.teacher, d.preprocess, d.augment
    base = plan.student_base(teacher)
    p = spec.proxy
    lr = p.lr if p.lr is not None else default_lr(plan.inherit)
    config = ProxyConfig(
        **p.model_dump(exclude={"lr", "feature_kd"}),
        lr=lr,
        feature_kd=p.feature_kd and plan.inherit,
        seed=spec.seed,
        report_every=max(1, p.steps // 5),
    )
    distiller = Distiller(
        teacher,
        d.train,
        d.train_idx,
        d.val_idx,
        preprocess,
        config,
        val_data=d.val,
        teacher_id=d.teacher_id,
        cache=TeacherCache(),
        augment=augment,
    )
    teacher_score, _ = distiller.evaluate(teacher)
    return SearchContext(plan, base, distiller, teacher_score, artifacts)
