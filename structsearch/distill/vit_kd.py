"""Feature KD for Vision Transformers: token hidden states and attention maps of mapped blocks.

A ViT student drops whole blocks and heads, so student block ``j`` is not teacher block ``j``.
The ViT adapter records where every kept part came from (``block.teacher_index``,
``attn.teacher_heads``); a student without those tags (another ViT trained from scratch) is
mapped evenly (student block ``j`` of ``S`` <-> teacher block ``ceil((j + 1) T / S) - 1``) and, when
the head counts differ, compares head-averaged maps. Two terms, summed:

* **hidden states** (token-level FitNets, as in TinyBERT's hidden-state loss): ``MSE(W s_j, t_o(j))``
  over every token of block ``j``'s output, ``W`` a learned linear projection when the widths differ
  (trained with the student, never part of it);
* **attention maps** (TinyBERT / MiniLM): ``KL(p_t || p_s)`` per kept head, averaged over queries, on
  the attention probabilities ``softmax(q k^T * scale)``. timm's ``Attention`` runs fused SDPA and never
  forms them, so a hook on ``attn.qkv`` recomputes them from its output (with the block's
  ``q_norm``/``k_norm``) -- only while this module is attached, i.e. only when attention KD is on.
  Eva ViTs (DINOv3, EVA-02) apply rotary embeddings inside their attention, so their maps cannot be
  recomputed that way: their feature KD is the hidden-state term alone (:func:`maps_computable`).

The teacher's maps cannot come from the on-disk cache (every block's token states and attention
maps of every view would take gigabytes at CIFAR scale), so ViT feature KD runs the teacher on
every batch (:class:`ViTTeacherTaps`).
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from timm.layers import Attention
from torch import Tensor, nn

from structsearch.distill.taps import Hooks


def block_origins(teacher: nn.Module, student: nn.Module) -> list[int]:
    """The teacher block each student block is distilled from (its origin, or an even spread)."""
    t_depth, blocks = len(teacher.blocks), list(student.blocks)  # type: ignore[arg-type]
    if all(hasattr(b, "teacher_index") for b in blocks) and len(blocks) <= t_depth:
        return [int(b.teacher_index) for b in blocks]
    return [math.ceil((j + 1) * t_depth / len(blocks)) - 1 for j in range(len(blocks))]


def head_origins(teacher_attn: nn.Module, student_attn: nn.Module) -> list[int] | None:
    """The teacher heads a student's heads came from; None: compare head-averaged maps."""
    heads = getattr(student_attn, "teacher_heads", None)
    if heads is not None and len(heads) == student_attn.num_heads:
        return [int(h) for h in heads]
    n = int(student_attn.num_heads)  # type: ignore[arg-type]  # timm's Attention: an int attribute
    return list(range(n)) if n == teacher_attn.num_heads else None


def maps_computable(model: nn.Module) -> bool:
    """Whether every block's attention is timm's ``Attention``, whose maps :func:`attention_log_probs`
    recomputes from ``qkv``. Eva ViTs (DINOv3, EVA-02) rotate q and k inside their attention, out of a
    hook's reach: their feature KD compares token states only."""
    return all(type(b.get_submodule("attn")) is Attention for b in model.blocks)  # type: ignore[union-attr]


def attention_log_probs(attn: Attention, qkv_out: Tensor) -> Tensor:
    """``log softmax(q k^T * scale)`` of timm's ``Attention`` from its ``qkv`` output: B x heads x N x N.

    Always in float32, also inside a bfloat16-autocast training step: the KL between attention maps
    compares log-probabilities, which bfloat16's 8-bit mantissa would round to about 3 digits.
    """
    b, n, _ = qkv_out.shape
    q, k, _v = qkv_out.reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    with torch.autocast(qkv_out.device.type, enabled=False):
        return torch.log_softmax((q.float() * attn.scale) @ k.float().transpose(-2, -1), dim=-1)


class _BlockTaps(Hooks):
    """Every block's output tokens and (optionally) attention log-probabilities of one forward pass."""

    def __init__(self, model: nn.Module, attention: bool) -> None:
        blocks = list(model.blocks)  # type: ignore[arg-type]
        self.hidden: list[Tensor | None] = [None] * len(blocks)
        self.attn: list[Tensor | None] = [None] * len(blocks)
        self.handles = [b.register_forward_hook(partial(self._keep_hidden, j)) for j, b in enumerate(blocks)]
        if attention and maps_computable(model):
            self.handles += [
                b.attn.qkv.register_forward_hook(partial(self._keep_attn, j, b.attn)) for j, b in enumerate(blocks)
            ]

    def _keep_hidden(self, j: int, _m: nn.Module, _i: object, out: Tensor) -> None:
        self.hidden[j] = out

    def _keep_attn(self, j: int, attn: Attention, _m: nn.Module, _i: object, out: Tensor) -> None:
        self.attn[j] = attention_log_probs(attn, out)

    def take(self) -> tuple[list[Tensor], list[Tensor]]:
        hidden, attn = [h for h in self.hidden if h is not None], [a for a in self.attn if a is not None]
        self.clear()
        return hidden, attn

    def clear(self) -> None:
        self.hidden = [None] * len(self.hidden)
        self.attn = [None] * len(self.attn)


class ViTTeacherTaps:
    """The teacher on a batch: logits, then every block's tokens followed by every block's attention maps."""

    def __init__(self, teacher: nn.Module, attention: bool) -> None:
        self.teacher, self.attention = teacher, attention

    def __call__(self, pairs: Tensor, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        taps = _BlockTaps(self.teacher, self.attention)
        try:
            with torch.no_grad():
                logits = self.teacher(x)
            hidden, attn = taps.take()
        finally:
            taps.remove()
        return logits, hidden + attn


class ViTHints(nn.Module):
    """The student side: hooks, the projections, and :meth:`loss` against :class:`ViTTeacherTaps` output."""

    def __init__(self, teacher: nn.Module, student: nn.Module, attention_weight: float) -> None:
        super().__init__()
        self.origins = block_origins(teacher, student)
        t_blocks, s_blocks = list(teacher.blocks), list(student.blocks)  # type: ignore[arg-type]
        self.t_depth = len(t_blocks)
        self.heads = [head_origins(t_blocks[o].attn, s.attn) for o, s in zip(self.origins, s_blocks)]
        s_dim, t_dim = int(student.embed_dim), int(teacher.embed_dim)  # type: ignore[arg-type]
        self.proj = nn.ModuleList(
            nn.Identity() if s_dim == t_dim else nn.Linear(s_dim, t_dim, bias=False) for _ in s_blocks
        )
        self.attention_weight = attention_weight if maps_computable(teacher) and maps_computable(student) else 0.0
        self.taps = _BlockTaps(student, self.attention_weight > 0)

    def loss(self, teacher_feats: list[Tensor]) -> Tensor:
        """Hidden-state MSE plus ``attention_weight`` x attention KL, each averaged over the student's blocks."""
        hidden, attn = self.taps.take()
        t_hidden, t_attn = teacher_feats[: self.t_depth], teacher_feats[self.t_depth :]
        total = sum(
            (F.mse_loss(p(s).float(), t_hidden[o].float()) for p, s, o in zip(self.proj, hidden, self.origins)),
            start=hidden[0].new_zeros((), dtype=torch.float32),
        ) / len(hidden)
        if self.attention_weight > 0:
            kl = [attention_kd_loss(s, t_attn[o], h) for s, o, h in zip(attn, self.origins, self.heads)]
            total = total + self.attention_weight * torch.stack(kl).mean()
        return total

    def clear(self) -> None:
        self.taps.clear()

    def remove(self) -> None:
        self.taps.remove()


def attention_kd_loss(student_logp: Tensor, teacher_logp: Tensor, heads: list[int] | None) -> Tensor:
    """``mean_{batch, head, query} KL(p_t || p_s)`` over the teacher's ``heads`` (head-averaged maps when None)."""
    t = teacher_logp.detach().float()
    s = student_logp.float()
    if heads is None:
        t = torch.logsumexp(t, dim=1, keepdim=True) - math.log(t.shape[1])
        s = torch.logsumexp(s, dim=1, keepdim=True) - math.log(s.shape[1])
    else:
        t = t[:, heads]
    return (t.exp() * (t - s)).sum(-1).mean()
