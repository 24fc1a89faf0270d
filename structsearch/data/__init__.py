"""Data for structure search: one `DataSpec`, decoded once per process, split deterministically.

Why this shape: a search runs hundreds of short distillation trials over the same few thousand
images. Keeping the whole dataset as one uint8 tensor in memory and indexing it with index batches
is far cheaper on CPU than a ``DataLoader``; decoding it once per process (cached on the files'
path, mtime and size) keeps per-trial start-up at a ``stat`` call.

Sources (``DataSpec.parse`` / ``str(spec)``; see :mod:`structsearch.data.spec` for the grammar)::

    npz:PATH                     x uint8 N×H×W×3 (or N×H×W grayscale), y int N, optional class_names
    imagefolder:PATH[?size=HxW]  one sub-folder per class; resized to the first image's size or HxW
    torchvision:NAME:ROOT[:test][?download=1]
                                 CIFAR10, CIFAR100, MNIST, FashionMNIST, KMNIST, SVHN, STL10, ...;
                                 the train split unless ``:test``; never downloads unless asked
    digits[:test]                scikit-learn's bundled digits: no files needed. ``digits`` is 80 %,
                                 ``digits:test`` a disjoint stratified 20 % (fixed seed)
    synthetic:N[?iters=K&...]    N images synthesised from the teacher (data-free); made by
                                 ``structsearch.distill.synthesis``, not by ``load_data``

Any of them takes a row slice ``[start:stop]``: for the CIFAR teachers, which memorised their
training set, select on ``npz:.../cifar10/test.npz[:5000]`` and report on ``test.npz[5000:]``.

Flow: ``load_data(spec)`` → :class:`LoadedData` (uint8 N×3×H×W, int64 labels) →
``split_train_val`` for a validation part of training data → ``batches`` of indices →
``Augment`` (training only) → ``Preprocess.from_model(teacher)`` right before the forward pass.
Every problem with user data raises :class:`structsearch.errors.DataError` with a one-line message,
before any training starts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from structsearch.data.spec import DataSpec
from structsearch.lazy import lazy_attributes

if TYPE_CHECKING:  # pragma: no cover
    from structsearch.data.loading import LoadedData, check_labels, clear_cache, fingerprint, load_data
    from structsearch.data.splits import batch_stream, batches, proportional_counts, split_train_val, train_val_rows
    from structsearch.data.transforms import Augment, Preprocess

#: Everything but the spec imports torch, loaded on first use: parsing a spec's data sources (the
#: API's admission of a study) must not pay torch's import time and memory in every API process.
__getattr__ = lazy_attributes(
    __name__,
    {
        **dict.fromkeys(("LoadedData", "check_labels", "clear_cache", "fingerprint", "load_data"), "loading"),
        **dict.fromkeys(
            ("batch_stream", "batches", "proportional_counts", "split_train_val", "train_val_rows"), "splits"
        ),
        **dict.fromkeys(("Augment", "Preprocess"), "transforms"),
    },
)

__all__ = [
    "Augment",
    "DataSpec",
    "LoadedData",
    "Preprocess",
    "batch_stream",
    "batches",
    "check_labels",
    "clear_cache",
    "fingerprint",
    "load_data",
    "proportional_counts",
    "split_train_val",
    "train_val_rows",
]
