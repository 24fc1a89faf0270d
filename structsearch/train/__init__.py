"""The training engine every loop of the project runs on.

* :mod:`~structsearch.train.optim` -- optimizers through timm's factory, the warm-up + cosine schedule;
* :mod:`~structsearch.train.loop` -- the step loop, with hooks for the loss and the bookkeeping;
* :mod:`~structsearch.train.bn` -- BatchNorm recalibration;
* :mod:`~structsearch.train.checkpoint` -- atomic, settings-checked resumable checkpoints;
* :mod:`~structsearch.train.device` -- the on-device size limit and class-count probing;
* :mod:`~structsearch.train.rng` -- seeded runs that leave the caller's random streams alone;
* :mod:`~structsearch.train.precision` -- bfloat16 autocast (``precision: bf16``).

Users: the KD proxy (:class:`structsearch.distill.Distiller`), the fine-tune
(:mod:`structsearch.finetune`), teacher training (:mod:`structsearch.teachers`) and data-free
synthesis (:mod:`structsearch.distill.synthesis`).
"""

from typing import TYPE_CHECKING

from structsearch.lazy import lazy_attributes

if TYPE_CHECKING:  # pragma: no cover
    from structsearch.train.bn import batchnorms, recalibrate_bn
    from structsearch.train.checkpoint import load_checkpoint, save_checkpoint, settings_hash
    from structsearch.train.device import ON_DEVICE_LIMIT, fits_on_device, num_classes_of, probe_classes
    from structsearch.train.loop import AfterStep, LossFn, run_steps
    from structsearch.train.optim import OptimizerName, WarmupCosine, make_optimizer
    from structsearch.train.precision import Precision, autocast
    from structsearch.train.rng import seeded

#: Every name loads its module on first use: a study spec names ``Precision`` without importing
#: torch and timm (``structsearch.lazy``).
__getattr__ = lazy_attributes(
    __name__,
    {
        **dict.fromkeys(("batchnorms", "recalibrate_bn"), "bn"),
        **dict.fromkeys(("load_checkpoint", "save_checkpoint", "settings_hash"), "checkpoint"),
        **dict.fromkeys(("ON_DEVICE_LIMIT", "fits_on_device", "num_classes_of", "probe_classes"), "device"),
        **dict.fromkeys(("AfterStep", "LossFn", "run_steps"), "loop"),
        **dict.fromkeys(("OptimizerName", "WarmupCosine", "make_optimizer"), "optim"),
        **dict.fromkeys(("Precision", "autocast"), "precision"),
        "seeded": "rng",
    },
)

__all__ = [
    "ON_DEVICE_LIMIT",
    "AfterStep",
    "LossFn",
    "OptimizerName",
    "Precision",
    "WarmupCosine",
    "autocast",
    "batchnorms",
    "fits_on_device",
    "load_checkpoint",
    "make_optimizer",
    "num_classes_of",
    "probe_classes",
    "recalibrate_bn",
    "run_steps",
    "save_checkpoint",
    "seeded",
    "settings_hash",
]
