"""Device names from users (``cpu``, ``cuda``, ``cuda:N``, ``auto``) checked in one place.

The proxy trainer, fine-tuning, data-free synthesis and the latency/memory measurements all take a
device string from a spec or a flag; they all resolve it here, so every command accepts the same
spellings and fails with the same one-line message.
"""

from __future__ import annotations

import torch

from structsearch.errors import DeviceError

__all__ = ["DeviceError", "resolve_device"]

_FORMS = "use cpu, cuda, cuda:N or auto"


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; ``"cpu"``, ``"cuda"``, ``"cuda:1"`` checked.

    A CUDA device comes back with its index (``cuda`` -> ``cuda:0``), so results name one device.
    """
    if isinstance(device, torch.device):
        device = str(device)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise DeviceError(f"unknown device {device!r}; {_FORMS}") from None
    if dev.type not in ("cpu", "cuda"):
        raise DeviceError(f"unsupported device {device!r}; {_FORMS}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {device!r} was asked for but CUDA is not available here; use cpu")
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        if index >= torch.cuda.device_count():
            raise DeviceError(
                f"device {device!r} does not exist: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
        dev = torch.device("cuda", index)
    return dev
