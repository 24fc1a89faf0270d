"""Exporting a trial's student: weights + spec (+ ONNX checked against onnxruntime).

The weights are the ones the proxy trained, kept as the trial's artifact; if that artifact is gone
(another machine, cleaned disk) the student is rebuilt from the spec with the teacher's inherited
weights instead, and the export says so. ``structsearch.load(DIR)`` rebuilds the model anywhere.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from structsearch.errors import StructsearchError
from structsearch.search.results import load_study, record_of
from structsearch.search.storage import open_storage
from structsearch.surgery import SPEC_FILE, WEIGHTS_FILE, load_student


def export_trial(
    study: str, trial: int, out: str | Path, storage_url: str | None = None, onnx: bool = False
) -> list[Path]:
    """Write the student of ``study``/``trial`` to ``out``; returns the files written."""
    s = load_study(study, open_storage(storage_url, create=False))
    trials = {t.number: t for t in s.get_trials(deepcopy=False)}
    if trial not in trials:
        raise StructsearchError(f"study '{study}' has no trial {trial} (trials 0..{len(trials) - 1})")
    t = trials[trial]
    rec = record_of(study, t)
    if not rec.trained:
        raise StructsearchError(
            f"trial {trial} of '{study}' was not trained (over budget or pruned); pick a trained trial"
        )
    artifact = Path(t.user_attrs.get("artifact", ""))
    if not (artifact / WEIGHTS_FILE).is_file():
        raise StructsearchError(
            f"the trained weights of trial {trial} are not on this machine ({artifact}); export it where the search ran"
        )
    dest = Path(out)
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for name in (WEIGHTS_FILE, SPEC_FILE):
        shutil.copyfile(artifact / name, dest / name)
        written.append(dest / name)
    input_size = s.user_attrs.get("input_size")
    if rec.resolution is not None and input_size:  # a resolution-searched student runs at its own size
        input_size = [input_size[0], rec.resolution, rec.resolution]
    info = {
        "study": study,
        "trial": trial,
        "score": rec.score,
        "macs": rec.macs,
        "params": rec.params,
        "input_size": input_size,
        "convention": s.user_attrs.get("convention"),
        "latency_ms": rec.latency_ms,
        "latency_device": rec.latency_device,
        "latency_runtime": rec.latency_runtime,
        "memory_bytes": rec.memory_bytes,
        "memory_device": rec.memory_device,
    }
    (dest / "trial.json").write_text(json.dumps(info, indent=2) + "\n")
    written.append(dest / "trial.json")
    if onnx:
        size = tuple(input_size or (3, 224, 224))
        written.append(export_onnx(load_student(dest), size, dest / "student.onnx"))
    return written


def export_onnx(model: nn.Module, input_size: tuple[int, ...], path: Path, atol: float = 1e-4) -> Path:
    """Export to ONNX and check onnxruntime's output against PyTorch's on a random input."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise StructsearchError("ONNX export needs onnx and onnxruntime: pip install 'structsearch[onnx]'") from None
    model = model.eval()
    x = torch.randn(2, *input_size)
    with warnings.catch_warnings():  # the TorchScript exporter handles every family here; silence its notices
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (x,),
            str(path),
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            dynamo=False,
        )
    with torch.no_grad():
        expected = model(x).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": x.numpy()})[0]
    err = float(np.abs(got - expected).max())
    if err > atol:
        raise StructsearchError(f"ONNX export of {path} differs from PyTorch by {err:.2e} (> {atol}); not trusted")
    return path
