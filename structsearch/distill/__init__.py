"""Knowledge distillation: losses, the teacher-output cache and the short proxy trainer.

Usage, once per search::

    distiller = Distiller(teacher, data, train_idx, val_idx, Preprocess.from_model(teacher), config,
                          teacher_id=TeacherId.of(name, kwargs, checkpoint), cache=TeacherCache())
    result = distiller.score(build_student(teacher, spec))     # per candidate -> ProxyResult

The teacher stays in eval mode, its outputs on the deterministic augmented training stream come
from the on-disk :class:`TeacherCache`, and only the student's parameters (plus, with feature KD,
the 1×1 adapters that belong to the loss) are optimised.
"""

from structsearch.distill.cache import TeacherCache, cache_key, default_cache_dir
from structsearch.distill.evaluate import predict, top1
from structsearch.distill.losses import distill_loss, feature_kd_loss, kd_loss
from structsearch.distill.students import uniform_width_spec
from structsearch.distill.synthesis import SynthesisConfig, SynthesisResult, synthesize
from structsearch.distill.taps import FeatureKDError, FeatureTap, stage_names, tapped
from structsearch.distill.teacher import TeacherId, augmented_views, run_teacher
from structsearch.distill.trainer import (
    Distiller,
    ProxyConfig,
    ProxyConfigError,
    ProxyResult,
    resolve_device,
)
from structsearch.train import recalibrate_bn

__all__ = [
    "Distiller",
    "FeatureKDError",
    "FeatureTap",
    "ProxyConfig",
    "ProxyConfigError",
    "ProxyResult",
    "SynthesisConfig",
    "SynthesisResult",
    "TeacherCache",
    "TeacherId",
    "augmented_views",
    "cache_key",
    "default_cache_dir",
    "distill_loss",
    "feature_kd_loss",
    "kd_loss",
    "predict",
    "recalibrate_bn",
    "resolve_device",
    "run_teacher",
    "stage_names",
    "synthesize",
    "tapped",
    "top1",
    "uniform_width_spec",
]
