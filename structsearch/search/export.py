"""Exporting a trial's student: weights, spec and surgery recipe (+ ONNX checked against onnxruntime).

The weights are the ones the proxy trained, kept as the trial's artifact; an artifact that is not
on this machine (another machine, cleaned disk) is a one-line error: export where the search ran.
``structsearch.load(DIR)`` rebuilds the model anywhere.

ONNX (``--onnx``) is the exported network's forward, checked against onnxruntime. For a detection
study's student that is the detector *network*: one ``(N, L, C + 5)`` tensor of raw head outputs
(per location: class logits, the four box distances, centerness; output ``head_outputs``), the
same figures its MACs count. Post-processing -- box decoding, score threshold, top-k, NMS
(``Detector.detect``) -- is not in the graph: run it on the outputs, as ``Detector.detect`` does.
A model torch.onnx cannot export is a one-line error.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import optuna
import torch
from torch import nn

from structsearch.cost.onnx_graph import export_graph
from structsearch.errors import StructsearchError, one_line
from structsearch.models.detector import Detector
from structsearch.search.stored import StoredTrial
from structsearch.surgery import RECIPE_FILE, SPEC_FILE, WEIGHTS_FILE, load_student

#: The record's measured figures an export's ``trial.json`` repeats, with the device they were measured on.
_MEASURED = {"latency_ms", "latency_device", "latency_runtime", "memory_bytes", "memory_device"}


def export_trial(
    study: str,
    trial: int,
    out: str | Path,
    storage_url: optuna.storages.BaseStorage | str | None = None,
    onnx: bool = False,
) -> list[Path]:
    """Write the student of ``study``/``trial`` to ``out``; returns the files written."""
    return export_stored(StoredTrial.open(study, trial, storage_url), out, onnx)


def export_stored(stored: StoredTrial, out: str | Path, onnx: bool = False) -> list[Path]:
    """Write an opened trial's student to ``out`` (see :func:`export_trial`)."""
    artifact = stored.require_saved()
    dest = Path(out)
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for name in (WEIGHTS_FILE, SPEC_FILE, RECIPE_FILE):
        if (artifact / name).is_file():  # artifacts written before the recipe was kept lack it
            shutil.copyfile(artifact / name, dest / name)
            written.append(dest / name)
    info = {
        "study": stored.study,
        "trial": stored.number,
        **stored.record.model_dump(include={"score", "macs", "params"}),
        "input_size": stored.input_size,
        "convention": stored.study_attrs.get("convention"),
        **stored.record.model_dump(include=_MEASURED),
    }
    (dest / "trial.json").write_text(json.dumps(info, indent=2) + "\n")
    written.append(dest / "trial.json")
    if onnx:
        size = tuple(stored.input_size or (3, 224, 224))
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
    output = "head_outputs" if isinstance(model, Detector) else "logits"
    try:
        export_graph(model, x, path, output, dynamic_batch=True)
    except Exception as e:  # noqa: BLE001 -- the exporters raise many types; any means "no ONNX for this model"
        raise StructsearchError(
            f"torch.onnx cannot export {type(model).__name__} to ONNX ({one_line(e)}); "
            "export without --onnx and use the PyTorch student"
        ) from None
    with torch.no_grad():
        expected = model(x).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": x.numpy()})[0]
    err = float(np.abs(got - expected).max())
    if err > atol:
        raise StructsearchError(f"ONNX export of {path} differs from PyTorch by {err:.2e} (> {atol}); not trusted")
    return path
