"""Fine-tuning after the search: train a chosen trial's student to completion, then (optionally)
transfer it to another dataset (see :mod:`structsearch.finetune.run` for the whole story).

* :mod:`~structsearch.finetune.config` -- settings, progress events, results;
* :mod:`~structsearch.finetune.stored` -- opening the stored trial and its starting student;
* :mod:`~structsearch.finetune.phases` -- the KD and downstream phases on the training engine;
* :mod:`~structsearch.finetune.checkpoint` -- output names and a phase's resumable checkpoint;
* :mod:`~structsearch.finetune.outputs` -- atomic writes of the student, ``result.json``, the study record;
* :mod:`~structsearch.finetune.run` -- :func:`finetune_trial`, the entry point.
"""

from structsearch.finetune.checkpoint import (
    CHECKPOINT_FILE,
    DOWNSTREAM_CHECKPOINT_PREFIX,
    DOWNSTREAM_DIR,
    RESULT_FILE,
    STUDY_ATTR,
)
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
    "DOWNSTREAM_CHECKPOINT_PREFIX",
    "DOWNSTREAM_DIR",
    "RESULT_FILE",
    "STUDY_ATTR",
    "FinetuneConfig",
    "FinetuneError",
    "FinetuneResult",
    "PhaseResult",
    "ProgressEvent",
    "default_out_dir",
    "finetune_trial",
]
