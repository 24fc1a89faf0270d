"""The student a fine-tune starts from, out of a :class:`~structsearch.search.stored.StoredTrial`."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:  # pragma: no cover
    from structsearch.search.context import SearchPlan
    from structsearch.search.stored import StoredTrial
    from structsearch.space import ArchSpec


def start_student(stored: StoredTrial, plan: SearchPlan, teacher: nn.Module) -> tuple[ArchSpec, nn.Module, str]:
    """The trial's structure and its starting weights: the proxy-trained artifact when it is on
    this machine, else the structure rebuilt from the spec (inherited teacher weights, or the base
    model's fresh initialisation for a student of another family)."""
    from structsearch.models import create_model
    from structsearch.surgery import get_importance

    if stored.saved() is not None:
        return stored.arch, stored.load(), "artifact"
    spec = stored.study_spec
    torch.manual_seed(spec.seed)  # a from-scratch base is initialised reproducibly
    base = teacher if plan.inherit else create_model(plan.base_model, **plan.base_kwargs).eval()
    return stored.arch, stored.rebuild(base, get_importance(spec.importance, spec.seed)), "rebuilt"
