"""Teachers: load a checkpoint, or train a small teacher once and cache it.

The embedded default has no pretrained teacher (nothing may be downloaded), so the study spec can
ask for one to be trained on the training split first (``teacher.train_epochs``). The result is
cached under ``$STRUCTSEARCH_HOME/teachers`` keyed by everything that determines it, so only the
first search pays for it and every later search, process and worker reuses the same weights.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from structsearch.atomic import atomic_write
from structsearch.data import Augment, LoadedData, Preprocess, batches
from structsearch.distill.teacher import TeacherId
from structsearch.models import create_model, file_hash, load_checkpoint
from structsearch.paths import home
from structsearch.train import make_optimizer, run_steps


def fit_epochs(
    model: nn.Module,
    loss_fn: Callable[[Tensor, torch.Generator], Tensor],
    n: int,
    epochs: int,
    seed: int,
    batch_size: int,
    opt: torch.optim.Optimizer,
    steps: int,
    **one_cycle: Any,
) -> nn.Module:
    """Train ``model`` from scratch for ``epochs`` passes over ``n`` rows; returns it in eval mode.

    ``loss_fn(idx, g)`` is the loss of the batch of row positions ``idx``; ``g`` is the run's
    generator, seeded by ``seed``, which also shuffles the rows (the last short batch of each epoch
    is dropped). The rate follows a one-cycle schedule of ``steps`` steps up to ``opt``'s rate
    (``one_cycle``: more of its settings). Deterministic on CPU for a given seed.
    """
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=opt.defaults["lr"], total_steps=steps, **one_cycle)
    model.train()
    epoch_batches = (idx for _ in range(epochs) for idx in batches(n, batch_size, g, drop_last=True))
    run_steps(epoch_batches, lambda idx: (loss_fn(idx, g), None), opt, sched)
    return model.eval()


def fit_teacher(
    model: nn.Module,
    data: LoadedData,
    train_idx: Tensor,
    preprocess: Preprocess,
    epochs: int,
    seed: int = 0,
    batch_size: int = 64,
    lr: float = 0.1,
    augment: Augment | None = None,
) -> nn.Module:
    """Train ``model`` from scratch with cross-entropy (Nesterov SGD, one-cycle, crop+flip); deterministic on CPU."""
    augment = augment or Augment.for_size(data.x.shape[-2])
    opt = make_optimizer(model.parameters(), "nesterov", lr, weight_decay=5e-4, momentum=0.9)

    def loss_fn(idx: Tensor, g: torch.Generator) -> Tensor:
        rows = train_idx[idx]
        return F.cross_entropy(model(preprocess(augment(data.x[rows], g))), data.y[rows])

    steps = max(1, epochs * math.ceil(len(train_idx) / batch_size))
    return fit_epochs(model, loss_fn, len(train_idx), epochs, seed, batch_size, opt, steps)


def trained_teacher(
    model: str,
    kwargs: dict[str, Any],
    data: Any,
    data_key: str,
    train_idx: torch.Tensor,
    preprocess: Preprocess,
    epochs: int,
    seed: int,
    cache_dir: Path,
    augment: Augment | None = None,
    fit: Callable[..., nn.Module] | None = None,
) -> tuple[nn.Module, Path]:
    """The teacher trained by ``fit`` (default :func:`fit_teacher`; ``data`` is what it takes, e.g.
    :class:`LoadedData`), from the cache when the same one exists."""
    key_src = json.dumps(
        {
            "model": model,
            "kwargs": kwargs,
            "data": data_key,
            "train": hashlib.sha256(train_idx.numpy().tobytes()).hexdigest(),
            "preprocess": repr(preprocess),
            "augment": repr(augment),
            "epochs": epochs,
            "seed": seed,
            "v": 2,  # 2: the initial weights are seeded too (v1 teachers depended on the process)
            **({"fit": f"{fit.__module__}.{fit.__qualname__}"} if fit is not None else {}),
        },
        sort_keys=True,
    )
    path = cache_dir / f"{model}-{hashlib.sha256(key_src.encode()).hexdigest()[:16]}.pt"
    # the initial weights come from the seed too, or two searches would train different teachers
    net = create_model(model, seed=seed, **kwargs)
    if path.is_file():
        try:
            load_checkpoint(net, path)
            return net.eval(), path
        except Exception:  # noqa: BLE001 - a corrupt cache entry is retrained, never fatal
            path.unlink(missing_ok=True)
    (fit or fit_teacher)(net, data, train_idx, preprocess, epochs, seed, augment=augment)
    atomic_write(path, partial(torch.save, net.state_dict()))  # concurrent workers never read half a file
    return net, path


def study_teacher(
    t: Any,
    seed: int,
    teacher: nn.Module,
    data: Any,
    data_key: Callable[[], str],
    train_idx: torch.Tensor,
    preprocess: Preprocess,
    **fit: Any,
) -> tuple[nn.Module, TeacherId | None]:
    """``(teacher, its identity in cache keys)`` for a study's teacher section ``t``.

    ``teacher`` is the model ``t`` names (built by the caller), returned with its checkpoint's id;
    with ``t.train_epochs`` and no checkpoint, the teacher :func:`trained_teacher` trains once on
    ``train_idx`` (``fit`` goes to it) and caches under ``$STRUCTSEARCH_HOME/teachers``; otherwise
    ``teacher`` as initialised and ``None`` (the caller hashes its random weights).
    """
    if t.checkpoint:
        return teacher, TeacherId.of(t.model, t.kwargs, t.checkpoint)
    if not t.train_epochs:
        return teacher, None
    teacher, path = trained_teacher(
        t.model, t.kwargs, data, data_key(), train_idx, preprocess, t.train_epochs, seed, home() / "teachers", **fit
    )
    return teacher, TeacherId(t.model, tuple(sorted(t.kwargs.items())), file_hash(path))
