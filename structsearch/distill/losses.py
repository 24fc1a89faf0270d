"""Knowledge-distillation losses as pure functions (no state, no modules of their own).

Each function states its formula and the paper it comes from, so a reader can check the code
against the paper. Reductions are means over the batch, so the losses do not scale with the batch
size and one learning rate works for any ``batch_size``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _at_least_fp32(x: Tensor) -> Tensor:
    """Softmax and KL in half precision lose too much; float32/float64 inputs are kept as they are."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """Soft-target loss of Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network" (2015).

    ``KD = T² · mean_batch KL( softmax(t/T) ‖ softmax(s/T) )``

    with ``t`` the teacher's and ``s`` the student's logits. The ``T²`` factor is always applied: the
    gradients of the softened term scale as ``1/T²``, and without it changing ``T`` would silently
    change the balance against the cross-entropy term (the paper, section 2). Teacher logits are
    treated as constants (detached).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    t = _at_least_fp32(teacher_logits.detach())
    s = _at_least_fp32(student_logits)
    log_p_teacher = F.log_softmax(t / temperature, dim=-1)
    log_p_student = F.log_softmax(s / temperature, dim=-1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * (temperature**2)


def distill_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor | None,
    temperature: float,
    alpha: float,
) -> Tensor:
    """Hinton et al. (2015)'s combined objective: ``alpha · KD + (1 − alpha) · CE(s, y)``.

    ``KD`` is :func:`kd_loss` (already scaled by ``T²``), ``CE`` the ordinary cross-entropy with the
    hard labels. ``alpha = 1`` distils from the teacher alone (``labels`` may then be ``None``).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    loss = kd_loss(student_logits, teacher_logits, temperature)
    if alpha < 1.0:
        if labels is None:
            raise ValueError("labels are needed when alpha < 1")
        loss = alpha * loss + (1.0 - alpha) * F.cross_entropy(_at_least_fp32(student_logits), labels)
    return loss


def feature_kd_loss(
    student_feats: Sequence[Tensor],
    teacher_feats: Sequence[Tensor],
    adapters: Sequence[nn.Module] | nn.ModuleList,
) -> Tensor:
    """Hint loss of Romero et al., "FitNets: Hints for Thin Deep Nets" (ICLR 2015).

    ``L_feat = (1/K) · Σ_k MSE( adapter_k(s_k), t_k )`` over the ``K`` tapped stages, where
    ``adapter_k`` is a 1×1 convolution (the paper's regressor) when the student's stage is narrower
    than the teacher's and the identity otherwise. The adapters are trained with the student but
    belong to the distillation objective, never to the student model or its cost.
    """
    if not (len(student_feats) == len(teacher_feats) == len(adapters)) or not student_feats:
        raise ValueError(
            f"need one adapter per tapped stage: got {len(student_feats)} student, "
            f"{len(teacher_feats)} teacher features and {len(adapters)} adapters"
        )
    total = student_feats[0].new_zeros((), dtype=torch.float32)
    for s, t, adapter in zip(student_feats, teacher_feats, adapters):
        total = total + F.mse_loss(adapter(s).float(), t.detach().float())
    return total / len(student_feats)
