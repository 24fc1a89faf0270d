"""What a trial stores: one typed record of its Optuna user attributes.

Every attribute a trial carries is a field of :class:`TrialAttrs`, named exactly as the stored key,
so studies written by earlier versions (and the service's Postgres data) read unchanged; a key an
older version did not write reads as its default. Writers -- the objective, the enqueueing of
baselines and pre-screened shapes, warm start, duplicates -- go through :meth:`TrialAttrs.write`
or :meth:`TrialAttrs.attrs`; readers through :meth:`TrialAttrs.read`. Only the fields a writer set
are stored (``None`` is never stored: an absent key and ``None`` read the same).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import optuna
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from structsearch.errors import StructsearchError

if TYPE_CHECKING:  # pragma: no cover
    from structsearch.cost import LatencyReport, MemoryReport


#: User attribute saying why a trial failed: the exception's type, or a guard's own message
#: (never an exception's text, which may carry paths or URLs). Set by the objective on a trial that
#: raised; read by the service's retry policy (:mod:`structsearch.service.faults`).
FAILURE_ATTR = "failure"


class TrialAttrs(BaseModel):
    """The user attributes of one trial (see the module docstring)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    # -- why the trial ran (set when it was enqueued or proposed) --------------------------------
    #: The baseline the trial scores (``uniform``, ``global_magnitude``, ``depth``; enqueued by ``open_study``).
    baseline: str | None = None
    #: Multi-objective studies: the fraction of the budget the proposal filled.
    target: float | None = None
    #: The quick score that got the shape enqueued by the pre-screen.
    prescreen_score: float | None = None
    # -- the candidate and its cost --------------------------------------------------------------
    #: The student's ``ArchSpec`` as a dict, and its identity (:func:`~structsearch.search.objective.spec_key`).
    spec: dict[str, Any] | None = None
    spec_key: str | None = None
    #: Student input resolution in px (only with a resolution dimension).
    resolution: Annotated[int, Field(strict=True, ge=1)] | None = None
    macs: int | None = None
    params: int | None = None
    # -- measured before training (when the study measures) -------------------------------------
    latency_ms: float | None = None
    latency_p90_ms: float | None = None
    latency_device: str | None = None
    latency_runtime: str | None = None
    latency_batch_size: int | None = None
    memory_bytes: int | None = None
    memory_device: str | None = None
    memory_method: str | None = None
    memory_batch_size: int | None = None
    # -- the KD proxy's result -------------------------------------------------------------------
    trained: bool = False
    #: Validation top-1 (%) after the proxy.
    score: float | None = None
    teacher_agreement: float | None = None
    #: Detection studies: mAP@.5 (%) beside the score, which is then mAP@[.5:.95] (%).
    map50: float | None = None
    proxy_seconds: float | None = None
    proxy_steps: int | None = None
    #: Directory of the saved student (weights, spec, surgery recipe).
    artifact: str | None = None
    # -- where the result came from --------------------------------------------------------------
    #: An earlier trial of this study with the same structure, whose result this one reuses.
    duplicate_of: int | None = None
    #: Warm start: ``STUDY#TRIAL`` this trial was copied from.
    copied_from: str | None = None

    @classmethod
    def read(cls, trial: optuna.Trial | optuna.trial.FrozenTrial) -> TrialAttrs:
        """The record of a trial (frozen or running); a malformed attribute is a one-line error."""
        try:
            return cls.model_validate(trial.user_attrs)
        except ValidationError as e:
            err = e.errors()[0]
            key = ".".join(str(p) for p in err["loc"])
            raise StructsearchError(
                f"trial {trial.number} has an invalid {key} attribute {err['input']!r}: {err['msg']}"
            ) from None

    def attrs(self) -> dict[str, Any]:
        """The user attributes to store: the fields a writer set, ``None`` left out."""
        return self.model_dump(exclude_unset=True, exclude_none=True)

    def write(self, trial: optuna.Trial) -> None:
        """Store the record on a running trial (only the attributes that changed are written)."""
        stored = trial.user_attrs
        for key, value in self.attrs().items():
            if stored.get(key) != value:
                trial.set_user_attr(key, value)

    def update(self, **changes: Any) -> TrialAttrs:
        """A validated copy with ``changes`` set (they are stored by the next :meth:`write`)."""
        return TrialAttrs.model_validate({**self.model_dump(exclude_unset=True), **changes})

    def with_runtime(self, latency: LatencyReport | None, memory: MemoryReport | None) -> TrialAttrs:
        """With the measured latency / memory, always with the device that produced them."""
        changes: dict[str, Any] = {}
        if latency is not None:
            changes |= {
                "latency_ms": round(latency.median_ms, 4),
                "latency_p90_ms": round(latency.p90_ms, 4),
                "latency_device": latency.device,
                "latency_runtime": latency.runtime,
                "latency_batch_size": latency.batch_size,
            }
        if memory is not None:
            changes |= {
                "memory_bytes": memory.peak_bytes,
                "memory_device": memory.device,
                "memory_method": memory.method,
                "memory_batch_size": memory.batch_size,
            }
        return self.update(**changes)

    def duplicate(self, original: TrialAttrs, number: int) -> TrialAttrs:
        """This trial's record once it is found to repeat ``original`` (trial ``number``, trained).

        The original's record is copied whole, except what belongs to this trial alone
        (:data:`OWN_FIELDS`): why it ran, its own latency / memory measurement (its constraints
        were set from it), and where its result came from (``duplicate_of`` is ``number``).
        """
        whole = original.model_dump(exclude=OWN_FIELDS, exclude_unset=True)
        return self.update(**whole, duplicate_of=number)


#: Fields a duplicate keeps from its own trial instead of copying them from the original.
OWN_FIELDS: set[str] = {"baseline", "target", "prescreen_score", "duplicate_of", "copied_from"} | {
    f for f in TrialAttrs.model_fields if f.startswith(("latency_", "memory_"))
}
