"""`StudySpec`: everything that defines a search, validated by Pydantic.

A spec comes from a YAML file in ``studies/`` (read with ``yaml.safe_load``), from CLI flags, or
from ``POST /api/v1/searches`` as JSON; all three end up here, so validation happens in one place.
Validation here is *structural* (types, names, budget syntax); checks that need models or data
(unknown model, a budget below the smallest student) happen when the search context is built,
still before anything is stored or trained.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from structsearch.cost import parse_budget
from structsearch.errors import BudgetError, StructsearchError, one_line
from structsearch.train.precision import Precision

Objective = Literal["accuracy", "macs", "params", "latency", "memory"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TeacherSpec(_Strict):
    """The teacher: a timm name, its kwargs, and a checkpoint or a short training run to make one."""

    model: str
    checkpoint: str | None = None
    kwargs: dict[str, Any] = Field(default_factory=dict)
    #: Without a checkpoint the teacher is trained on the training split for this many epochs first
    #: (cached on disk, so only the first search pays for it). 0 means: use it as initialised.
    train_epochs: int = Field(default=0, ge=0, le=1000)


class StudentSpec(_Strict):
    """The student's base architecture; ``None`` model means the teacher's own (weights inherited)."""

    model: str | None = None
    kwargs: dict[str, Any] = Field(default_factory=dict)
    #: False: students of the teacher's own structure start from a fresh initialisation instead of its
    #: weights (the ablation that measures what inheritance is worth). Another model never inherits.
    inherit: bool = True


class DataSection(_Strict):
    """Training data for the proxy and the held-out split that scores it."""

    train: str = "digits"
    #: A separate validation source (e.g. ``npz:test.npz[:5000]``); otherwise carved from ``train``.
    val: str | None = None
    val_size: int | float = Field(default=0.2, gt=0)
    train_size: int | None = Field(default=None, gt=0)
    #: Input resolution in pixels; default: the size the teacher checkpoint was trained at when a
    #: ``structsearch teach`` sidecar beside it says so, else the teacher model's own (timm's config).
    input_size: int | None = Field(default=None, ge=8, le=1024)
    #: Student input resolutions to search over (px), e.g. ``[24, 28, 32]``; absent: no resolution
    #: dimension, every student runs at ``input_size``. The teacher keeps ``input_size`` (its cached
    #: outputs are those of its own resolution); a student sees the same batch resized.
    resolutions: tuple[int, ...] | None = None
    #: Random horizontal flips in training (off for digits and text, where a flip changes the class).
    hflip: bool = True

    @field_validator("resolutions")
    @classmethod
    def _resolutions(cls, v: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if v is None:
            return None
        if not v:
            raise ValueError("give at least one resolution, e.g. [24, 28, 32], or leave resolutions out")
        bad = [r for r in v if not 8 <= r <= 1024]
        if bad:
            raise ValueError(f"resolutions must be between 8 and 1024 px, got {bad}")
        if len(set(v)) != len(v):
            raise ValueError(f"resolutions must not repeat, got {list(v)}")
        return tuple(sorted(v))


class BudgetSection(_Strict):
    """Hard budgets: ``300M``, ``1.2G``, ``60%`` (of the teacher). At least one is usually set.

    ``flops`` counts MACs (fvcore's convention: one multiply-add is one flop; see
    :mod:`structsearch.cost`), the figure stored on every trial as ``macs``.

    ``latency`` (``5ms``, ``800us``) and ``memory`` (peak activations, ``50MB``, ``64MiB``) are read
    against figures measured on the device of the ``measure`` section; ``60%`` means 60% of the
    teacher's figure measured the same way.
    """

    flops: str | None = None
    params: str | None = None
    latency: str | None = None
    memory: str | None = None
    #: Proposals fill the flops (MACs) budget (the params budget when there is none) to at least this
    #: fraction: every trained candidate lies in ``[fill x budget, budget]`` where the space allows.
    fill: float = Field(default=0.9, gt=0, le=1)

    @field_validator("flops", "params", "latency", "memory", mode="before")
    @classmethod
    def _as_text(cls, v: Any) -> Any:
        return None if v is None else str(v)

    @model_validator(mode="after")
    def _parse(self) -> BudgetSection:
        for what in ("flops", "params", "latency", "memory"):
            text = getattr(self, what)
            if text is not None:
                parse_budget(text, what)
        return self


class MeasureSection(_Strict):
    """How latency and peak activation memory of every feasible candidate are measured.

    Every figure is stored with the device it was measured on. ``device: cpu`` by default, even
    where the proxy trains on a GPU: a budget like ``5ms`` should mean one thing for the whole
    study. Both measurements run before training, so an over-latency or over-memory candidate is
    never trained.
    """

    #: Measure latency / peak activation memory at all (a latency/memory budget or objective needs it).
    latency: bool = True
    memory: bool = True
    runtime: Literal["torch", "onnxruntime"] = "torch"
    #: ``cpu``, ``cuda``, ``cuda:N`` (or ``auto``: CUDA when the measuring machine has it).
    device: str = Field(default="cpu", pattern=r"^(cpu|auto|cuda(:\d+)?)$")
    batch_size: int = Field(default=1, ge=1, le=1024)
    #: CPU intra-op threads; default: torch's setting in the measuring process.
    threads: int | None = Field(default=None, ge=1, le=1024)
    warmup: int = Field(default=3, ge=0, le=1000)
    repeats: int = Field(default=20, ge=1, le=10_000)


class ProxySection(_Strict):
    """Short KD proxy settings (see ``structsearch.distill.ProxyConfig`` for their meaning)."""

    steps: int = Field(default=200, ge=1, le=1_000_000)
    batch_size: int = Field(default=64, ge=1, le=4096)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    #: Default (``None``): ``distill.trainer.default_lr`` -- low when the student inherits the
    #: teacher's weights (a gentle fine-tune keeps what it inherited), high from scratch.
    lr: float | None = Field(default=None, gt=0)
    temperature: float = Field(default=4.0, gt=0)
    alpha: float = Field(default=0.9, ge=0, le=1)
    feature_kd: bool = False
    #: ``bf16``: bfloat16 autocast for the students' training steps -- 1.2-1.3x faster proxies on a CPU
    #: with AVX512-BF16 (measured), slower on CPUs without it (``structsearch.train.precision``).
    precision: Precision = "fp32"
    device: str = "auto"


class PrescreenSection(_Strict):
    """Rank many candidates without training before the KD proxy (see ``structsearch.search.prescreen``).

    ``candidates`` random shapes at the budget are scored by their top-1 on ``images`` validation
    images after BatchNorm recalibration on ``batches`` training batches; the best ``keep``
    fraction become the study's first searched trials. 0 candidates: off.
    """

    candidates: int = Field(default=0, ge=0, le=5000)
    keep: float = Field(default=0.1, gt=0, le=1)
    images: int = Field(default=512, ge=16, le=100_000)
    batches: int = Field(default=4, ge=1, le=100)


class StudySpec(_Strict):
    """A whole search. ``name`` identifies its Optuna study (re-running the spec resumes it)."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}$")
    teacher: TeacherSpec
    student: StudentSpec = Field(default_factory=StudentSpec)
    data: DataSection = Field(default_factory=DataSection)
    budget: BudgetSection = Field(default_factory=BudgetSection)
    measure: MeasureSection = Field(default_factory=MeasureSection)
    objectives: tuple[Objective, ...] = ("accuracy", "macs")
    sampler: Literal["tpe", "nsga2", "random"] = "tpe"
    trials: int = Field(default=20, ge=1, le=100_000)
    proxy: ProxySection = Field(default_factory=ProxySection)
    prescreen: PrescreenSection = Field(default_factory=PrescreenSection)
    importance: Literal["l1", "random"] = "l1"
    #: Structures every study scores first, so its front can never be worse than them and its gain
    #: over each is reported: ``uniform`` width scaling to the budget, ``global_magnitude`` ranking
    #: of all block widths (structured pruning's yardstick), ``depth`` (stage-uniform block dropping).
    baselines: tuple[Literal["uniform", "global_magnitude", "depth"], ...] = ("uniform", "global_magnitude", "depth")
    #: Seeds every random choice of the study; NumPy and Optuna's samplers take 32-bit seeds.
    seed: int = Field(default=0, ge=0, le=2**32 - 1)
    #: Start a new study from earlier trials of the same teacher, data and proxy in the storage.
    warm_start: bool = True
    #: ``detection``: the teacher is a detector (``fcos_detector``), the data ``coco:``/``mosaic:``/``synthetic:``
    #: sources (:mod:`structsearch.detection.data`) and the score mAP@[.5:.95] (see ``search.detection``).
    task: Literal["classification", "detection"] = "classification"

    @field_validator("objectives")
    @classmethod
    def _objectives(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v or v[0] != "accuracy" or len(set(v)) != len(v) or len(v) > 2:
            raise ValueError(
                "objectives must be [accuracy] or [accuracy, X] with X one of macs, params, latency, memory"
            )
        return v

    @model_validator(mode="after")
    def _measured_when_needed(self) -> StudySpec:
        """A latency/memory budget or objective needs that measurement switched on; feature KD
        needs the student's stage maps at the teacher's size, which other resolutions break."""
        for what in ("latency", "memory"):
            wanted = getattr(self.budget, what) is not None or what in self.objectives
            if wanted and not getattr(self.measure, what):
                raise ValueError(f"measure.{what} is off but the {what} budget or objective needs it")
        if self.task == "detection" and self.data.resolutions:
            raise ValueError(
                "detection studies run every student at the teacher's input size: leave data.resolutions out"
            )
        if self.data.resolutions and self.proxy.feature_kd:
            raise ValueError("proxy.feature_kd cannot be combined with data.resolutions (stage maps differ in size)")
        if self.task == "detection" and self.proxy.precision != "fp32":
            raise ValueError("detection proxies train in fp32: leave proxy.precision out (bf16 is for classification)")
        return self

    @property
    def single_objective(self) -> bool:
        return len(self.objectives) == 1

    def fingerprint(self) -> str:
        """Hash of what makes scores comparable: teacher, student base, data, proxy, importance, seed."""
        key = self.model_dump(include={"teacher", "student", "data", "proxy", "importance", "seed"})
        if key["data"].get("resolutions") is None:  # absent: the same hash as before the field existed
            key["data"].pop("resolutions", None)
        if key["proxy"]["precision"] == "fp32":  # the default: the same hash as before the field existed
            del key["proxy"]["precision"]
        if self.task != "classification":  # classification studies keep the hash they had before tasks
            key["task"] = self.task
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]

    def with_overrides(self, **changes: Any) -> StudySpec:
        """A copy with top-level or dotted (``budget.flops``) fields replaced, validated again."""
        data = self.model_dump()
        for key, value in changes.items():
            if value is None:
                continue
            node = data
            *parents, leaf = key.split(".")
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = value
        return parse_study_spec(data)


def parse_study_spec(data: Any, source: str = "study spec") -> StudySpec:
    """Validate a dict into a :class:`StudySpec`; errors become one readable line."""
    if not isinstance(data, dict):
        raise StructsearchError(f"{source}: expected a mapping of fields, got {type(data).__name__}")
    try:
        return StudySpec.model_validate(data)
    except ValidationError as e:
        raise StructsearchError(f"{source}: {one_line(e)}") from None
    except BudgetError as e:
        raise BudgetError(f"{source}: {e}") from None


def load_study_spec(path: str | Path) -> StudySpec:
    """Read a YAML study spec safely (``yaml.safe_load``) and validate it."""
    p = Path(path)
    if not p.is_file():
        raise StructsearchError(f"study spec not found: {p}")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise StructsearchError(f"{p} is not valid YAML: {one_line(e)}") from None
    return parse_study_spec(data, str(p))
