"""Creating teachers and base models by name, with optional checkpoints.

Every model structsearch works with is a timm model found by name; importing this package also
registers structsearch's own timm models (the CIFAR ResNets, ``cifar_vit``). Errors are one line: an unknown name
suggests close matches, a checkpoint that does not fit lists the mismatched keys.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import os
from pathlib import Path
from typing import Any

import timm
import torch
from timm.models import register_model
from torch import nn

from structsearch.errors import CheckpointError, UnknownModelError, one_line
from structsearch.models import cifar_resnet as _cifar_resnet  # noqa: F401  (registers cifar_resnet*)
from structsearch.models import cifar_vit as _cifar_vit  # noqa: F401  (registers cifar_vit)
from structsearch.models.detector import Detector


def check_model_name(name: str) -> None:
    """Raise :class:`UnknownModelError` (with suggestions) unless timm knows ``name``.

    ``timm.is_model`` ignores a pretrained tag (``vit_small_patch16_224.dinov2`` passes it), and timm
    then raises deep inside ``create_model``; a tag is checked against the architecture's own tags.
    """
    arch, _, tag = name.partition(".")
    if tag and timm.is_model(arch):
        tags = [t.partition(".")[2] for t in timm.list_pretrained(f"{arch}.*")]
        if tag in tags:
            return
        close = difflib.get_close_matches(tag, tags, n=3, cutoff=0.5)
        if close:
            hint = f"did you mean {', '.join(f'{arch}.{t}' for t in close)}?"
        else:
            hint = f"known tags: {', '.join(tags)}" if tags else f"it has none: use '{arch}'"
        raise UnknownModelError(f"unknown pretrained tag {tag[:100]!r} for '{arch}'; {hint}")
    if timm.is_model(name):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else "; `timm.list_models()` lists the known names"
    raise UnknownModelError(f"unknown model {name[:100]!r}{hint}")  # repr: one line, whatever was sent


def create_model(
    name: str,
    checkpoint: str | Path | None = None,
    pretrained: bool = False,
    seed: int | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a timm model by name; ``checkpoint`` loads a local state dict (safely, ``weights_only``).

    ``pretrained=True`` downloads timm's weights from the hub (needs internet); structsearch itself
    never sets it. ``seed`` draws the fresh initialisation from that seed, leaving the caller's random
    streams alone: torch's global generator is seeded differently in every process, so a model that
    is trained (or distilled into) from scratch must be seeded for two runs to agree.
    """
    check_model_name(name)
    try:
        with torch.random.fork_rng(devices=[], enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            model = timm.create_model(name, pretrained=pretrained, **kwargs)
    except (TypeError, ValueError) as e:  # a kwarg the model does not accept, or a value it refuses
        raise UnknownModelError(f"cannot build '{name}' with {kwargs}: {one_line(e)}") from None
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    return model


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint's state dict: unwraps ``state_dict``/``model`` keys, strips ``module.``.

    A ``.safetensors`` file (how shipped teachers are stored: no pickle, fp16) is read as it is;
    half-precision tensors are loaded into the model's float parameters by ``load_state_dict``.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint not found: {p}")
    if p.suffix == ".safetensors":
        return _read_safetensors(p)
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for corrupt files
        raise CheckpointError(f"cannot read checkpoint {p}: {one_line(e)}") from None
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "state_dict_ema"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"checkpoint {p} holds no state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _read_safetensors(p: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(p, device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"cannot read checkpoint {p}: {one_line(e)}") from None


def load_checkpoint(model: nn.Module, path: str | Path) -> None:
    """Load a checkpoint into ``model`` strictly; a mismatch is a one-line :class:`CheckpointError`."""
    state = read_state_dict(path)
    own = model.state_dict()
    # old checkpoints lack BatchNorm's step counter; it does not affect the model's function
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} with other shapes (e.g. {k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)})")
        raise CheckpointError(
            f"checkpoint {path} does not fit {type(model).__name__}: keys {'; '.join(parts)}; "
            "check the model name and its kwargs (e.g. num_classes)"
        )
    model.load_state_dict(state, strict=False)


def file_hash(path: str | Path, length: int = 16) -> str:
    """Short sha256 of a file: identifies a checkpoint in cache keys and stored results.

    Remembered per process by path, inode, size and modification time: a worker plans, scores and
    records against the same checkpoint many times, and an ImageNet teacher is hundreds of MB.
    """
    st = os.stat(path)
    return _sha256_of(str(Path(path).resolve()), st.st_ino, st.st_size, st.st_mtime_ns)[:length]


@functools.lru_cache(maxsize=64)
def _sha256_of(path: str, inode: int, size: int, mtime_ns: int) -> str:
    """sha256 of the file at ``path``; the other arguments only key the memo (a rewritten file misses it)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@register_model
def fcos_detector(
    pretrained: bool = False,
    backbone: str = "",
    backbone_kwargs: dict[str, Any] | None = None,
    backbone_checkpoint: str | None = None,
    **kwargs: Any,
) -> Detector:
    """An FCOS detector (:class:`~structsearch.models.detector.Detector`) over the classifier
    ``backbone`` built by name, optionally started from a classification checkpoint; ``kwargs`` are
    the detector's (``num_classes``, ``image_size``, ``stages``, ``fpn_channels`` ...)."""
    if pretrained:
        raise ValueError("fcos_detector has no pretrained weights")
    for timm_only in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
        kwargs.pop(timm_only, None)
    if not backbone:
        raise TypeError("fcos_detector needs a backbone, e.g. backbone='cifar_resnet20'")
    return Detector(create_model(backbone, checkpoint=backbone_checkpoint, **(backbone_kwargs or {})), **kwargs)
