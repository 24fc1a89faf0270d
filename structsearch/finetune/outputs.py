"""Writing a fine-tune's outputs: the student (atomically), ``result.json`` and the study's record."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from torch import nn

from structsearch.finetune.checkpoint import STUDY_ATTR


def save_student_atomically(directory: Path, student: nn.Module, arch: Any) -> None:
    """Save into a temporary sibling directory, then move its files into place one by one (each an
    atomic ``os.replace``), so a reader never sees a half-written ``student.pt``."""
    from structsearch.surgery import save_student

    directory.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=directory, prefix=".save-"))
    try:
        save_student(tmp, student, arch)
        for f in tmp.iterdir():
            os.replace(f, directory / f.name)
    finally:
        for f in tmp.iterdir() if tmp.exists() else ():
            f.unlink()
        if tmp.exists():
            tmp.rmdir()


def write_json_atomically(path: Path, data: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def record_on_study(study: Any, trial: int, summary: dict[str, Any]) -> None:
    """Merge this trial's outcome into the study's ``finetune`` attribute (keyed by trial number).

    Read-modify-write: two fine-tunings of the same study finishing at the same instant could drop
    one entry; each run's full record stays in its own ``result.json``.
    """
    study_attrs = study.user_attrs  # fresh read
    merged = dict(study_attrs.get(STUDY_ATTR) or {})
    merged[str(trial)] = summary
    study.set_user_attr(STUDY_ATTR, merged)
