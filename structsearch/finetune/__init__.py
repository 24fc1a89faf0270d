"""Fine-tuning after the search: train a chosen trial's student to completion, then (optionally)
transfer it to another dataset (see :mod:`structsearch.finetune.run` for the whole story).

* :mod:`~structsearch.finetune.config` -- settings, progress events, results;
* :mod:`~structsearch.finetune.phases` -- the KD and downstream phases on the training engine;
* :mod:`~structsearch.finetune.checkpoint` -- output names, a phase's resumable checkpoint, the saved student;
* :mod:`~structsearch.finetune.run` -- :func:`finetune_trial`, the entry point: the stored trial and its
  starting student, the phases, ``result.json`` and the study's record.
"""

from structsearch.finetune.checkpoint import CHECKPOINT_FILE, RESULT_FILE
from structsearch.finetune.config import (
    FinetuneConfig,
    FinetuneError,
    FinetuneResult,
    PhaseResult,
    ProgressEvent,
    default_out_dir,
)
from structsearch.finetune.run import finetune_trial

__all__ = [
    "CHECKPOINT_FILE",
    "RESULT_FILE",
    "FinetuneConfig",
    "FinetuneError",
    "FinetuneResult",
    "PhaseResult",
    "ProgressEvent",
    "default_out_dir",
    "finetune_trial",
]
