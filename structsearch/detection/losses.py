"""Distillation losses on a dense detector's outputs (FCOS: sigmoid class logits, box regression, centerness).

FCOS scores every class of every location with an independent sigmoid, so the classification
term is the *binary* KL divergence at temperature ``T`` between the teacher's and the student's
per-class probabilities, ``sum_c KL(Bern(sigmoid(t_c / T)) || Bern(sigmoid(s_c / T))) * T^2``,
averaged over locations (Hinton et al., 2015, applied per class as in dense-detector KD, e.g.
"Distilling Object Detectors with Fine-grained Feature Imitation", Wang et al., CVPR 2019, and
"General Instance Distillation", Dai et al., CVPR 2021). It is computed as BCE minus the teacher's
own entropy, so it is 0 exactly when the student matches the teacher.

Box regression (FCOS' left/top/right/bottom distances, in units of the level's stride, so levels
weigh alike) is pulled toward the teacher's with L1, and centerness toward the teacher's with the
same binary KL, only at locations where the teacher is confident (its highest class probability
above ``confidence``): elsewhere the teacher's boxes describe background and are noise.

Optional feature imitation: mean squared error between the student's and the teacher's FPN levels
(same widths: the FPN is not searched), FitNets-style (Romero et al., ICLR 2015).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from structsearch.models.detector import HeadOutputs


def binary_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Elementwise KL(Bern(sigmoid(t/T)) || Bern(sigmoid(s/T))) * T^2 (0 where they agree)."""
    t = teacher_logits / temperature
    p = torch.sigmoid(t)
    bce = F.binary_cross_entropy_with_logits(student_logits / temperature, p, reduction="none")
    entropy = F.binary_cross_entropy_with_logits(t, p, reduction="none")
    return (bce - entropy) * temperature**2


def detection_kd_loss(
    student: HeadOutputs, teacher: HeadOutputs, temperature: float = 1.0, confidence: float = 0.3
) -> Tensor:
    """Class KL over every location plus box and centerness terms where the teacher is confident."""
    s_cls, s_box, s_ctr = student
    t_cls, t_box, t_ctr = (t.to(s.dtype) for t, s in zip(teacher, student))
    cls = binary_kl(s_cls, t_cls, temperature).sum(-1).mean()
    mask = torch.sigmoid(t_cls).amax(-1) > confidence
    if not bool(mask.any()):
        return cls
    box = F.l1_loss(s_box[mask], t_box[mask])
    ctr = binary_kl(s_ctr[mask], t_ctr[mask]).mean()
    return cls + box + ctr


def fpn_imitation_loss(student: Sequence[Tensor], teacher: Sequence[Tensor]) -> Tensor:
    """Mean over FPN levels of the MSE between student and teacher maps (same shapes)."""
    return torch.stack([F.mse_loss(s, t.to(s.dtype)) for s, t in zip(student, teacher)]).mean()
