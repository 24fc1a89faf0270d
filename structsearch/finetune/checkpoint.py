"""What a fine-tuning run writes where, the epoch statistics a phase's checkpoint carries, and the
atomic save of a trained student.

Both phases checkpoint atomically after every epoch and every ``checkpoint_every`` steps: model,
optimizer, scheduler, step, the epoch's running statistics, torch's RNG states and the settings with
their hash. A checkpoint written with other settings is refused, never silently continued.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import optuna
import torch
from torch import Tensor, nn

from structsearch.atomic import atomic_write

#: Bump when the meaning of a checkpoint's contents changes; part of the settings hash.
CHECKPOINT_FORMAT = 1
CHECKPOINT_FILE = "checkpoint.pt"
#: Downstream checkpoints are named by their settings hash (``downstream-<hash>.pt``): a new downstream
#: dataset or setting is a new experiment on the same fine-tuned student, not a conflict with the old one.
DOWNSTREAM_CHECKPOINT_PREFIX = "downstream-"
DOWNSTREAM_DIR = "downstream"
RESULT_FILE = "result.json"
#: Study user attribute holding every trial's fine-tuning outcome.
STUDY_ATTR = "finetune"


class Running:
    """Loss and accuracy sums over the current epoch, kept on the device (no sync per step)."""

    def __init__(self, loss_sum: float = 0.0, correct: int = 0, seen: int = 0) -> None:
        self.loss_sum: Tensor | float = loss_sum
        self.correct: Tensor | int = correct
        self.seen = seen

    def add(self, loss: Tensor, correct: Tensor, n: int) -> None:
        self.loss_sum = self.loss_sum + loss.float() * n
        self.correct = self.correct + correct
        self.seen += n

    def loss(self) -> float:
        return float(self.loss_sum) / self.seen if self.seen else float("nan")

    def top1(self) -> float:
        return 100.0 * float(self.correct) / self.seen if self.seen else float("nan")

    def state(self) -> dict[str, float | int]:
        return {"loss_sum": float(self.loss_sum), "correct": int(self.correct), "seen": self.seen}


def save_student_atomically(directory: Path, student: nn.Module, arch: Any) -> nn.Module:
    """Save the student (moved to the CPU, contiguous, eval mode: returned) into a temporary sibling
    directory, then move its files into place one by one (each an atomic ``os.replace``), so a
    reader never sees a half-written ``student.pt``."""
    from structsearch.surgery import save_student

    student = student.to("cpu").to(memory_format=torch.contiguous_format).eval()
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
    return student


def record_result(result: Any, out_dir: Path, storage: optuna.storages.BaseStorage) -> None:
    """Write a finished run's ``result.json`` (a ``FinetuneResult``) and keep its summary on the study."""
    text = json.dumps(result.to_dict(), indent=2, default=str) + "\n"
    atomic_write(out_dir / RESULT_FILE, lambda f: f.write(text.encode()))
    # read-modify-write of the study's record: two fine-tunings of one study finishing at the same
    # instant could drop one entry; each run's full record stays in its own result.json
    on_study = optuna.load_study(study_name=result.study, storage=storage)
    on_study.set_user_attr(
        STUDY_ATTR, {**(on_study.user_attrs.get(STUDY_ATTR) or {}), str(result.trial): result.study_summary()}
    )
