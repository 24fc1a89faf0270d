"""Request and response bodies of the REST API.

Responses are separate ``...Public`` models (never ORM rows or Optuna objects), so what the API
promises is written down here and in the OpenAPI document. The request body of
``POST /api/v1/searches`` is a study spec, validated by :func:`structsearch.search.parse_study_spec`
(its JSON schema is published as ``StudySpec``).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any, Generic, Literal, TypeVar

from fastapi import Response
from pydantic import BaseModel, ConfigDict, Field
from pydantic_core import to_json

from structsearch.search.results import BaselineGain, TrialRecord
from structsearch.service.searches import TrialCounts

T = TypeVar("T")


class ErrorPublic(BaseModel):
    """Every error: one readable line."""

    detail: str = Field(examples=["no search with id 6f0c..."])


class Page(BaseModel, Generic[T]):
    """A page of a list, newest or lowest-numbered first; ``total`` counts every match."""

    items: list[T]
    total: int
    offset: int
    limit: int
    next: int | None = Field(
        default=None, description="trial lists: pass as `after` for the next page (null on the last page)"
    )


class CandidatePublic(TrialRecord):
    """One candidate student, in the same fields as ``structsearch best --format json``."""


class TrialStateName(StrEnum):
    complete = "complete"
    pruned = "pruned"
    running = "running"
    waiting = "waiting"
    fail = "fail"


class TrialPublic(CandidatePublic):
    """A trial of a search (finished or not), with where its result came from."""

    duplicate_of: int | None = Field(
        default=None, description="an earlier trial of the same structure whose score was reused"
    )
    copied_from: str | None = Field(default=None, description="warm start: STUDY#TRIAL this trial was copied from")
    started_at: datetime | None = None
    completed_at: datetime | None = None


class TrialCountsPublic(TrialCounts):
    """The search's own trials by state (``copied`` warm-start trials are not among them)."""


class SearchStatusName(StrEnum):
    queued = "queued"
    running = "running"
    done = "done"
    cancelled = "cancelled"
    failed = "failed"


class SearchPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str = Field(description="the Optuna study name (shown in the dashboard)")
    requested_name: str = Field(description="the name in the submitted spec; differs from `name` when that was taken")
    status: SearchStatusName
    error: str | None = Field(description="why the search failed or was cancelled")
    warnings: list[str] = Field(
        default_factory=list, description="what looks wrong but did not stop the search, e.g. a teacher at chance"
    )
    teacher_score: float | None = Field(
        default=None, description="the teacher's score on the validation data (%), once the first trial measured it"
    )
    created_at: datetime
    updated_at: datetime
    spec: dict[str, Any]
    trials: TrialCountsPublic
    best: CandidatePublic | None = Field(description="the best feasible trained candidate so far")


class SearchAccepted(BaseModel):
    """Answer to a submission: the search is stored and its trials are queued."""

    id: uuid.UUID
    name: str
    requested_name: str
    renamed: bool
    status: SearchStatusName
    trials_requested: int
    message: str
    url: str


class RecheckEntryPublic(BaseModel):
    trial: int
    group: Literal["front", "random"]
    macs: int
    proxy_score: float
    long_score: float
    seconds: float


class RecheckPublic(BaseModel):
    """Proxy fidelity measured by `structsearch recheck`: proxy scores vs longer runs."""

    steps: int = Field(description="length of the longer runs, in steps")
    proxy_steps: int
    top: int
    entries: list[RecheckEntryPublic]
    tau: float | None = Field(description="Kendall's tau-b between proxy and longer scores")
    tau_p_value: float | None
    spearman: float | None
    same_winner: bool | None
    complete: bool


class BaselineGainPublic(BaselineGain):
    """The search's gain over one of its baselines: its best candidate at equal or lower MACs."""


class ParetoPublic(BaseModel):
    search_id: uuid.UUID
    study: str
    cost: Literal["macs", "params", "latency", "memory"]
    front: list[CandidatePublic] = Field(
        description="feasible trained candidates not dominated in (score up, cost down), by cost"
    )
    recheck: list[RecheckPublic] = Field(
        default_factory=list, description="proxy fidelity re-checks of this study, shortest first"
    )
    baselines: list[BaselineGainPublic] = Field(
        default_factory=list, description="the study's baselines and the search's gain over each"
    )


class FinetunePublic(BaseModel):
    """A student fine-tuned to completion by `structsearch finetune` (kept on the study).

    Only figures: where its files and data lie on the machine that ran it are left out.
    """

    model_config = ConfigDict(extra="ignore")

    trial: int
    epochs: int | None = None
    test_top1: float | None = Field(default=None, description="test top-1 (%) after fine-tuning")
    teacher_top1: float | None = Field(default=None, description="the teacher's test top-1 (%) on the same rows")
    test_map: float | None = Field(default=None, description="detection studies: test mAP@[.5:.95] (%)")
    test_map50: float | None = Field(default=None, description="detection studies: test mAP@.5 (%)")
    teacher_map: float | None = Field(default=None, description="detection studies: the teacher's test mAP (%)")
    teacher_map50: float | None = Field(default=None, description="detection studies: the teacher's mAP@.5 (%)")
    downstream_top1: float | None = None
    seconds: float | None = None
    seconds_per_epoch: float | None = None
    device: str | None = None
    input_size: int | None = None


class FamilyPublic(BaseModel):
    family: str
    description: str
    examples: list[str]


class HealthPublic(BaseModel):
    status: str
    database: str | None = None
    schema_revision: str | None = None


# -- bodies without a model per row ----------------------------------------------------------
# A page of 100 trials or searches validated into models took as long as its queries; the routes
# that list rows build the same bodies as plain dicts (the tests compare the bytes with the models').


def trial_columns(model: type[TrialRecord]) -> dict[str, str]:
    """A trial model's output fields, in order, and the ``ss_trials`` column each is read from."""
    return {name: "number" if name == "trial" else name for name, f in model.model_fields.items() if not f.exclude}


def trial_body(columns: dict[str, str], study: str, row: Any) -> dict[str, Any]:
    """A trial model's body as a plain dict (datetimes left as they are), straight from a row's
    columns (a ``TrialRow`` or a SQL row; already checked when written)."""
    return {name: study if name == "study" else getattr(row, col) for name, col in columns.items()}


def json_bytes(body: Any) -> bytes:
    """``body`` (plain dicts and lists) as the bytes FastAPI's own serializer writes for the
    route's response model."""
    return to_json(body, inf_nan_mode="null")


def json_response(body: bytes, headers: dict[str, str] | None = None) -> Response:
    """A JSON body already serialized (:func:`json_bytes`, a model's ``model_dump_json``, or kept)."""
    return Response(body, media_type="application/json", headers=headers)
