"""Resumable training checkpoints: written atomically, refused when the settings differ.

A checkpoint holds the model, optimizer and scheduler states, the step, torch's RNG states, the
settings (as JSON) with their hash, and whatever bookkeeping the caller adds (``extra``). It is
written to a temporary file in the same directory and moved into place with ``os.replace``, so an
interruption mid-write leaves the previous checkpoint intact, never half a file.
"""

from __future__ import annotations

import hashlib
import json
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from structsearch.atomic import atomic_write
from structsearch.errors import CheckpointError, one_line

_NEEDED = ("format", "settings_hash", "settings", "step", "model", "optimizer", "scheduler", "rng_cpu")
_FIX = "delete it or pass --restart"


def settings_hash(settings: dict[str, Any]) -> str:
    """16 hex digits identifying ``settings`` (JSON, sorted keys)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def save_checkpoint(
    path: Path,
    settings: dict[str, Any],
    *,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    device: torch.device,
    extra: dict[str, Any],
) -> None:
    """Write the training state of ``step`` to ``path`` atomically; ``extra`` entries are stored beside it."""
    state = {
        "format": settings.get("format", 1),
        "settings_hash": settings_hash(settings),
        "settings": json.dumps(settings, sort_keys=True, default=str),
        "step": step,
        **extra,
        "model": {k: v.detach().to("cpu") for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng_cpu": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }
    atomic_write(path, partial(torch.save, state))


def load_checkpoint(
    path: Path,
    settings: dict[str, Any],
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    device: torch.device,
    needed: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Restore model, optimizer, scheduler and RNG states from ``path`` and return the whole state.

    Refuses (:class:`CheckpointError`, one line) a damaged file, one without the ``needed`` extra
    entries, and one written with other settings (naming what changed).
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for damaged files
        raise CheckpointError(f"checkpoint {path} is damaged ({one_line(e)[:120]}); {_FIX}") from None
    if not isinstance(state, dict) or any(k not in state for k in (*_NEEDED, *needed)):
        raise CheckpointError(f"checkpoint {path} is not a structsearch fine-tuning checkpoint; {_FIX}")
    if state["settings_hash"] != settings_hash(settings):
        changed = _changed_settings(state["settings"], settings)
        raise CheckpointError(
            f"checkpoint {path} was written with other settings ({changed}); pass --restart to discard it "
            "or --out DIR for a separate run"
        )
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng_cpu"])
        if device.type == "cuda" and state.get("rng_cuda") is not None:
            torch.cuda.set_rng_state(state["rng_cuda"], device)
        state["step"] = int(state["step"])
    except (RuntimeError, KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} does not fit this run ({one_line(e)[:120]}); {_FIX}") from None
    return state


def _changed_settings(stored_json: Any, settings: dict[str, Any]) -> str:
    """``lr 0.02 -> 0.05, epochs 2 -> 3``: what differs, for the refusal message."""
    try:
        stored = json.loads(stored_json)
    except (TypeError, ValueError):
        return "unreadable settings"
    current = json.loads(json.dumps(settings, sort_keys=True, default=str))
    keys = sorted(k for k in set(stored) | set(current) if stored.get(k) != current.get(k))
    parts = []
    for k in keys[:4]:
        a, b = stored.get(k), current.get(k)
        short = all(isinstance(v, (int, float, str, type(None))) and len(str(v)) <= 24 for v in (a, b))
        parts.append(f"{k} {a} -> {b}" if short else k)
    return ", ".join(parts) + (" ..." if len(keys) > 4 else "") if parts else "format"
