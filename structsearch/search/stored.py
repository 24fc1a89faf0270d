"""One stored trial, opened by study name and number: checked once, its student rebuilt on demand.

``structsearch export``, ``recheck``, ``finetune`` and the API's artifact download all start from
"trial N of study S": :meth:`StoredTrial.open` finds both, checks that the trial finished trained
with a structure, and raises a one-line :class:`StructsearchError` otherwise. It reads that one
trial, not the whole study, so it is cheap on a large study too.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import optuna
from torch import nn

from structsearch.errors import NotFound, StructsearchError
from structsearch.search.record import TrialAttrs
from structsearch.search.results import STUDY_MARKER, TrialRecord, record_of, study_id
from structsearch.search.spec import StudySpec, parse_study_spec
from structsearch.search.storage import open_storage
from structsearch.space import ArchSpec
from structsearch.surgery import SPEC_FILE, WEIGHTS_FILE, Importance, build_student, get_importance, load_student


def stored_study_spec(study: str, study_attrs: dict[str, Any]) -> StudySpec:
    """The spec a structsearch study was created from (a one-line error for another tool's study)."""
    raw = study_attrs.get(STUDY_MARKER)
    if raw is None:
        raise StructsearchError(f"study '{study}' was not created by structsearch")
    return parse_study_spec(json.loads(raw), f"stored spec of study '{study}'")


@dataclass(frozen=True)
class StoredTrial:
    """A completed, trained trial with a structure, and the study it belongs to."""

    study: str
    number: int
    storage: optuna.storages.BaseStorage
    study_attrs: dict[str, Any]
    trial: optuna.trial.FrozenTrial
    attrs: TrialAttrs
    record: TrialRecord

    @classmethod
    def open(cls, study: str, number: int, storage: optuna.storages.BaseStorage | str | None = None) -> StoredTrial:
        """Trial ``number`` of ``study`` in ``storage`` (a storage, a URL, or ``None``: the default)."""
        if not isinstance(storage, optuna.storages.BaseStorage):
            storage = open_storage(storage, create=False)
        sid = study_id(study, storage)
        n = storage.get_n_trials(sid)  # trials are numbered 0..n-1 and never deleted
        if not 0 <= number < n:
            hint = f"trials 0..{n - 1}" if n else "it has no trials yet"
            raise NotFound(f"study '{study}' has no trial {number} ({hint})")
        trial = storage.get_trial(storage.get_trial_id_from_study_id_trial_number(sid, number))
        record = record_of(study, trial)
        if not record.trained or record.state != "complete":
            raise NotFound(
                f"trial {number} of '{study}' was not trained (over budget, pruned or unfinished); "
                f"pick a trained trial (`structsearch pareto --study {study}` lists them)"
            )
        if not record.spec:
            raise NotFound(f"trial {number} of '{study}' stores no structure (spec); it cannot be rebuilt")
        attrs = TrialAttrs.read(trial)
        return cls(study, number, storage, storage.get_study_user_attrs(sid), trial, attrs, record)

    @cached_property
    def study_spec(self) -> StudySpec:
        """The study's own spec (teacher, data, proxy) as it was stored."""
        return stored_study_spec(self.study, self.study_attrs)

    @property
    def arch(self) -> ArchSpec:
        """The student's structure."""
        return ArchSpec.from_dict(self.record.spec or {})

    @property
    def input_size(self) -> list[int] | None:
        """``[C, H, W]`` the student runs at (its own resolution in a resolution search)."""
        size = self.study_attrs.get("input_size")
        if size and self.record.resolution is not None:
            return [size[0], self.record.resolution, self.record.resolution]
        return size

    def saved(self) -> Path | None:
        """The directory of the student the proxy trained, when its weights and spec are on this machine."""
        d = Path(self.attrs.artifact) if self.attrs.artifact else None
        return d if d is not None and (d / WEIGHTS_FILE).is_file() and (d / SPEC_FILE).is_file() else None

    def require_saved(self) -> Path:
        """:meth:`saved`, or a one-line error naming where the files were written."""
        d = self.saved()
        if d is None:
            raise NotFound(
                f"the trained weights of trial {self.number} are not on this machine ({self.attrs.artifact}); "
                "export it where the search ran"
            )
        return d

    def load(self) -> nn.Module:
        """The student the proxy trained, from its saved files."""
        return load_student(self.require_saved())

    def rebuild(self, base: nn.Module, importance: Importance) -> nn.Module:
        """The structure rebuilt from ``base`` (the teacher, or the study's student base) with its weights."""
        return build_student(base, self.arch, importance)

    def starting_student(self, base: Callable[[], nn.Module]) -> tuple[nn.Module, str]:
        """``(student, start)`` a fine-tune starts from: the proxy-trained student when it is on this
        machine (``"artifact"``), else the structure rebuilt from ``base()`` with the study's importance
        (``"rebuilt"``; ``base`` is only called then)."""
        if self.saved() is not None:
            return self.load(), "artifact"
        spec = self.study_spec
        return self.rebuild(base(), get_importance(spec.importance, spec.seed)), "rebuilt"
