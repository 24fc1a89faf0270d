"""Deterministic stratified splits and index batches over in-memory tensors.

Why not scikit-learn's ``train_test_split`` or a ``DataLoader``: the split must be a pure function
of (labels, sizes, seed) -- exact integer quotas plus one permutation from torch's CPU generator --
because search results are compared across runs and machines; and for datasets that fit in memory as one uint8 tensor,
indexing that tensor with an index batch is several times faster on CPU than a DataLoader's
per-item collation.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import torch

from structsearch.errors import DataError


def split_train_val(
    y: torch.Tensor,
    val_size: int | float,
    seed: int,
    train_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split row indices of a labelled *training* set into (train, val), stratified by class.

    ``val_size`` is a row count (int) or a fraction in (0, 1) (float). Each class gets its
    proportional share of the validation rows (largest-remainder rounding, so every class count is
    within 1 of ``val_size * class_count / n``); ``train_size``, when given, caps the training part
    the same way, proportionally over the rows that are left. Both results are sorted int64 index
    tensors, disjoint, and depend only on ``(y, val_size, seed, train_size)``. The validation part
    depends on ``(y, val_size, seed)`` only, so capping the training set for a cheaper proxy never
    changes which rows the candidates are scored on.

    Carve validation from the training data or from a dedicated validation source (for the CIFAR
    teachers that memorised their training set: ``test.npz[:5000]``). The test split is never an
    input here: selecting structures on the rows you report would overstate the result.
    """
    labels = _check_labels_1d(y)
    n = labels.numel()
    n_val = _resolve_val_size(val_size, n)
    counts = torch.bincount(labels).tolist() if n else []
    val_counts = proportional_counts(counts, n_val)
    left = [c - v for c, v in zip(counts, val_counts)]
    n_train = n - n_val if train_size is None else _resolve_train_size(train_size, n - n_val)
    train_counts = proportional_counts(left, n_train)

    order = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    by_class = _group_in_order(labels[order], order, len(counts))
    val = [idx[:v] for idx, v in zip(by_class, val_counts)]
    train = [idx[v : v + t] for idx, v, t in zip(by_class, val_counts, train_counts)]
    return _sorted_cat(train), _sorted_cat(val)


def train_val_rows(
    train_y: torch.Tensor,
    val_rows: int | None,
    val_size: int | float,
    seed: int,
    train_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The training rows a proxy trains on and the validation rows it is scored on.

    ``val_rows`` is the length of a separate validation source, every row of which is scored;
    ``None`` carves ``val_size`` validation rows from the training data (:func:`split_train_val`).
    With a separate source, a ``train_size`` below the number of training rows caps them the same
    stratified way; otherwise every training row is used. The search, ``recheck``, ``finetune``
    and the ``proxy`` command all split here, so they agree on the rows.
    """
    if val_rows is None:
        return split_train_val(train_y, val_size, seed, train_size)
    train_idx = torch.arange(len(train_y))
    if train_size is not None and train_size < len(train_y):
        train_idx, _ = split_train_val(train_y, 1, seed, train_size)
    return train_idx, torch.arange(val_rows)


def proportional_counts(counts: list[int], total: int) -> list[int]:
    """Share ``total`` over groups proportionally to ``counts`` (Hamilton / largest remainder).

    Exact integer arithmetic, ties broken towards the lower group index, so the result is the same
    everywhere; each share is within 1 of its exact quota and never exceeds its group's count.
    """
    whole = sum(counts)
    if total == 0 or whole == 0:
        return [0] * len(counts)
    shares = [total * c // whole for c in counts]
    remainders = [total * c % whole for c in counts]
    extra = total - sum(shares)
    for i in sorted(range(len(counts)), key=lambda i: (-remainders[i], i))[:extra]:
        shares[i] += 1
    return shares


def batches(
    n: int,
    batch_size: int,
    generator: torch.Generator | None,
    drop_last: bool,
) -> Iterator[torch.Tensor]:
    """Yield int64 index tensors covering ``range(n)`` in batches of ``batch_size``.

    With a generator the order is a fresh permutation drawn from it (so an epoch is reproducible
    from the generator's state); without one it is ``0..n-1`` in order, for evaluation.
    ``drop_last`` drops a final short batch, which keeps BatchNorm statistics of training steps
    from being computed on a handful of images.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise DataError(f"number of rows must be a non-negative integer, got {n!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise DataError(f"batch size must be a positive integer, got {batch_size!r}")
    if generator is not None:
        order = torch.randperm(n, generator=generator, device=generator.device).cpu()
    else:
        order = torch.arange(n)
    stop = n - n % batch_size if drop_last else n
    for begin in range(0, stop, batch_size):
        yield order[begin : begin + batch_size]


def batch_stream(n: int, batch_size: int, generator: torch.Generator, count: int) -> Iterator[torch.Tensor]:
    """``count`` training batches of ``range(n)``, epoch after epoch: each epoch a fresh permutation
    drawn from ``generator`` (only when a batch of it is taken), its final short batch dropped.

    The fixed-length step stream of the KD proxies (classification and detection), whose runs
    are measured in steps rather than epochs.
    """
    if batch_size > n:
        raise DataError(f"batch size {batch_size} is larger than the {n} rows to draw from")

    def epochs() -> Iterator[torch.Tensor]:
        while True:
            yield from batches(n, batch_size, generator, drop_last=True)

    return itertools.islice(epochs(), count)


# -- helpers ---------------------------------------------------------------------------------------


def _check_labels_1d(y: torch.Tensor) -> torch.Tensor:
    if not isinstance(y, torch.Tensor) or y.ndim != 1 or y.dtype.is_floating_point or y.dtype == torch.bool:
        raise DataError("labels to split must be a 1-D integer tensor")
    labels = y.detach().to("cpu", torch.int64)
    if labels.numel() and int(labels.min()) < 0:
        raise DataError(f"labels must be non-negative, got {int(labels.min())}")
    return labels


def _resolve_val_size(val_size: int | float, n: int) -> int:
    """The validation row count: an int as is, a fraction of ``n`` rounded to the nearest row."""
    if isinstance(val_size, bool) or not isinstance(val_size, (int, float)):
        raise DataError(f"validation size must be a row count or a fraction in (0, 1), got {val_size!r}")
    if isinstance(val_size, float):
        if not 0.0 < val_size < 1.0:
            raise DataError(f"validation fraction must be in (0, 1), got {val_size}")
        count = int(round(val_size * n))
    else:
        count = val_size
    if not 1 <= count <= n - 1:
        raise DataError(
            f"validation size {val_size!r} gives {count} of {n} rows; need at least 1 for validation and 1 for training"
        )
    return count


def _resolve_train_size(train_size: int, available: int) -> int:
    if isinstance(train_size, bool) or not isinstance(train_size, int) or train_size < 1:
        raise DataError(f"training size must be a positive row count, got {train_size!r}")
    return min(train_size, available)


def _group_in_order(labels_in_order: torch.Tensor, order: torch.Tensor, num_classes: int) -> list[torch.Tensor]:
    """For each class, its row indices in the order given (a stable sort keeps that order)."""
    sorted_labels, perm = torch.sort(labels_in_order, stable=True)
    rows = order[perm]
    sizes = torch.bincount(sorted_labels, minlength=num_classes).tolist()
    return list(torch.split(rows, sizes))


def _sorted_cat(parts: list[torch.Tensor]) -> torch.Tensor:
    if not parts:
        return torch.empty(0, dtype=torch.int64)
    return torch.sort(torch.cat(parts)).values
