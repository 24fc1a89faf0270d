"""Regenerate ``docs/results.md`` and its plots from real runs on CIFAR-10 with the ResNet-56 and ViT teachers.

Every figure on the page comes from a ``structsearch`` command (or a bench script) that the page
names. This script runs those commands as a user would -- subprocesses with ``--format json`` --
keeps each stage's commands and JSON outputs in ``docs/results/<stage>.json``, and renders the page
from them. A stage whose JSON exists is not run again (``--force STAGE`` reruns it), so the page can
be rebuilt stage by stage and re-rendered without retraining (``--render-only``)::

    .venv/bin/python bench/results.py                    # run missing stages, then render
    .venv/bin/python bench/results.py --force recheck    # rerun one stage
    .venv/bin/python bench/results.py --render-only      # page from stored outputs

Studies, teacher caches and artifacts go to ``$STRUCTSEARCH_HOME`` (default here:
``~/.structsearch-results``), never into the repository. Data and teacher: ``../shared``.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
OUT = DOCS / "results"
CLI = [sys.executable, "-m", "structsearch.cli"]

TEACHER = "../shared/weights/cifar_resnet/resnet56-4bfd9763.th"
TRAIN = "npz:../shared/data/cifar10/train.npz"
TEST = "npz:../shared/data/cifar10/test.npz"
#: Candidates are selected on test[:2000] (the teacher memorised its training set); test[5000:] is
#: never looked at during a search and is where final accuracies are reported.
REPORT = f"{TEST}[5000:]"
SPEC = "studies/cifar10_resnet56.yaml"
STUDY = "cifar10-resnet56-50pct"
RES_SPEC = "studies/cifar10_resnet56_resolution.yaml"
RES_STUDY = "cifar10-resnet56-resolution"
VIT_SPEC = "studies/cifar10_resnet56_vit.yaml"
VIT_STUDY = "cifar10-resnet56-vit"
VIT_TEACHER = "teachers/cifar_vit.safetensors"
#: Teachers of other families (CNNs, hybrids) that a stage trains by its recipe into $STRUCTSEARCH_HOME
#: (not shipped) and then searches with ``bench/inherit.py``: stage -> (model, recipe). The recipe writes
#: ``<model>_cifar10.safetensors``; the MACs budgets searched follow.
FAMILY_TEACHERS = {
    "convnext": ("convnext_atto", "studies/teach_convnext_cifar10.yaml", "50%,25%"),
    "regnet": ("regnety_002", "studies/teach_regnet_cifar10.yaml", "50%,25%"),
    # at 32 px its stem, attention and head convs (never narrowed) are 49% of its MACs
    "efficientvit": ("efficientvit_b0", "studies/teach_efficientvit_cifar10.yaml", "75%,60%"),
}


def run(
    argv: list[str],
    log: list[dict[str, Any]],
    json_file: Path | None = None,
    parse: Callable[[str], Any] | None = None,
) -> Any:
    """Run one command from the project root, record it, and return its JSON output (stdout, or
    ``json_file`` for scripts that write their figures to a file; ``parse`` reads stdout instead)."""
    shown = " ".join(["structsearch", *argv[3:]] if argv[:3] == CLI else [".venv/bin/python", *argv[1:]])
    print(f"$ {shown}", flush=True)
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False)
    seconds = round(time.perf_counter() - start, 1)
    if proc.returncode != 0:
        sys.exit(f"command failed ({proc.returncode}) after {seconds} s: {shown}\n{proc.stderr[-3000:]}")
    out = parse(proc.stdout) if parse else json.loads(json_file.read_text() if json_file else proc.stdout)
    log.append({"command": shown, "seconds": seconds})
    print(f"  ({seconds} s)", flush=True)
    return out


# -- stages: each returns {"commands": [...], ...figures} ---------------------------------------


def stage_teacher() -> dict[str, Any]:
    log: list[dict[str, Any]] = []
    common = ["--model", "cifar_resnet56", "--checkpoint", TEACHER, "--format", "json"]
    full = run([*CLI, "eval", *common, "--data", TEST], log)
    report = run([*CLI, "eval", *common, "--data", REPORT], log)
    cost = run([*CLI, "cost", "cifar_resnet56", "--latency", "--memory", "--format", "json"], log)
    return {"commands": log, "test": full, "report": report, "cost": cost}


def stage_search() -> dict[str, Any]:
    log: list[dict[str, Any]] = []
    summary = run([*CLI, "search", SPEC, "--trials", "20", "--format", "json"], log)
    plot = OUT / "pareto.png"
    front = run([*CLI, "pareto", "--study", STUDY, "--plot", str(plot.relative_to(ROOT)), "--format", "json"], log)
    return {"commands": log, "summary": summary, "front": front["front"], "plot": plot.name}


def stage_recheck() -> dict[str, Any]:
    log: list[dict[str, Any]] = []
    result = run([*CLI, "recheck", "--study", STUDY, "--top", "3", "--steps", "400", "--format", "json"], log)
    return {"commands": log, "recheck": result}


def _datafree(teacher: str, raw: Path, iters: int, synth_batch: int) -> dict[str, Any]:
    """``bench/datafree.py`` at the scale issue 15 asks for: 2048 images, 12 students, 1000-step fine-tunes."""
    log: list[dict[str, Any]] = []
    argv = [sys.executable, "bench/datafree.py", "--teacher", teacher, "--n", "2048", "--iters", str(iters)]
    argv += ["--synth-batch", str(synth_batch), "--candidates", "12", "--steps", "100", "--finetune-steps", "1000"]
    argv += ["--precision", "bf16", "--json", str(raw.relative_to(ROOT))]
    result = run(argv, log, raw)
    return {"commands": log, "datafree": result}


def stage_datafree() -> dict[str, Any]:
    """DeepInversion on the shared ResNet-56 (batches of 256: its BatchNorm statistics are batch statistics)."""
    return _datafree("resnet56", OUT / "datafree_raw.json", iters=300, synth_batch=256)


def stage_datafree_vit() -> dict[str, Any]:
    """PSAQ-ViT on the shipped ViT teacher: batches of 128 (6.3 ms an image an iteration, against 8.8 at 256
    and 6.7 at 64, bf16 here); 200 iterations (PSAQ-ViT's teacher recognises its images within tens)."""
    from structsearch.models import file_hash  # the page flags the stage stale when the file changes

    result = _datafree("vit", OUT / "datafree_vit_raw.json", iters=200, synth_batch=128)
    return result | {"teacher_file": file_hash(ROOT / VIT_TEACHER)}


def stage_resolution() -> dict[str, Any]:
    log: list[dict[str, Any]] = []
    summary = run([*CLI, "search", RES_SPEC, "--format", "json"], log)
    best = {}
    for budget in ("20%", "35%", "50%"):
        best[f"MACs <= {budget}"] = run(
            [*CLI, "best", "--study", RES_STUDY, "--budget-flops", budget, "--format", "json"], log
        )
    best["memory <= 200kB"] = run(
        [*CLI, "best", "--study", RES_STUDY, "--budget-memory", "200kB", "--format", "json"], log
    )
    latency = run([*CLI, "pareto", "--study", RES_STUDY, "--cost", "latency", "--format", "json"], log)
    return {"commands": log, "summary": summary, "best": best, "latency_front": latency["front"]}


def stage_vit() -> dict[str, Any]:
    log: list[dict[str, Any]] = []
    summary = run([*CLI, "search", VIT_SPEC, "--format", "json"], log)
    return {"commands": log, "summary": summary}


def stage_finetune() -> dict[str, Any]:
    log: list[dict[str, Any]] = []
    best = run([*CLI, "best", "--study", STUDY, "--budget-flops", "50%", "--format", "json"], log)
    result = run(
        [
            *CLI,
            "finetune",
            "--study",
            STUDY,
            "--trial",
            str(best["trial"]),
            "--epochs",
            "6",
            "--data",
            TRAIN,
            "--test",
            REPORT,
            "--downstream",
            "digits",
            "--downstream-test",
            "digits:test",
            "--downstream-epochs",
            "10",
            "--no-downstream-flip",
            "--restart",
            "--format",
            "json",
        ],
        log,
    )
    return {"commands": log, "best": best, "finetune": result}


def stage_vs_pruning() -> dict[str, Any]:
    """The search against structured pruning at 50 % MACs, same short KD for all, on both shared teachers."""
    log: list[dict[str, Any]] = []
    out: dict[str, Any] = {}
    for teacher in ("cifar_resnet56", "cifar_resnet20"):
        raw = OUT / f"vs_pruning_{teacher.removeprefix('cifar_')}.json"
        out[teacher] = run(
            [sys.executable, "bench/vs_pruning.py", "--teacher", teacher, "--json", str(raw.relative_to(ROOT))],
            log,
            raw,
        )
    return {"commands": log, **out}


def stage_prescreen() -> dict[str, Any]:
    """Pre-screen (BatchNorm-recalibrated accuracy) vs the proxy, on the study vs_pruning ran."""
    log: list[dict[str, Any]] = []
    raw = OUT / "prescreen_raw.json"
    home = os.environ["STRUCTSEARCH_HOME"]
    result = run(
        [
            sys.executable,
            "bench/prescreen.py",
            "--home",
            home,
            "--study",
            "vs-pruning-cifar_resnet56",
            "--json",
            str(raw.relative_to(ROOT)),
        ],
        log,
        raw,
    )
    return {"commands": log, "prescreen": result}


def stage_trial_cost() -> dict[str, Any]:
    log: list[dict[str, Any]] = []
    raw = OUT / "trial_cost_raw.json"
    result = run([sys.executable, "bench/trial_cost.py", "--json", str(raw.relative_to(ROOT))], log, raw)
    return {"commands": log, "trial_cost": result}


def stage_reliability() -> dict[str, Any]:
    """The service under faults and bad input: ``bench/faults.py`` (five faults in one 12-trial
    search, on its own PostgreSQL cluster) and the two bad-input sweeps, run by pytest (which starts
    its own PostgreSQL too): the hand-written hostile list and schemathesis over the OpenAPI
    document. Each sweep test prints its counts; they are read from pytest's output."""
    log: list[dict[str, Any]] = []
    raw = OUT / "faults_raw.json"
    faults = run([sys.executable, "bench/faults.py", "--json", str(raw.relative_to(ROOT))], log, raw)
    tests = ["tests/service/test_hostile_sweep.py", "tests/service/test_openapi_fuzz.py"]
    sweep = run([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:warnings", *tests], log, parse=_sweep_counts)
    return {"commands": log, "faults": faults, "sweep": sweep}


def stage_detection() -> dict[str, Any]:
    """A detection study on the CIFAR-10 mosaic (``bench/detection.py``, about an hour on 2 idle cores):
    teacher mAP, the front, the best student within 50% vs uniform width scaling (short KD and
    fine-tuned), and Kendall's tau of the proxy against 4x longer training."""
    log: list[dict[str, Any]] = []
    raw = OUT / "detection_raw.json"
    home = os.environ["STRUCTSEARCH_HOME"]
    result = run([sys.executable, "bench/detection.py", "--home", home, "--json", str(raw.relative_to(ROOT))], log, raw)
    return {"commands": log, "detection": result}


def stage_tradeoffs() -> dict[str, Any]:
    """The CNN/ViT trade-off table (``bench/tradeoffs.py``, an estimated 5-8 hours on 2 idle cores): for each
    teacher x student family x budget x resolution, the best student's proxy and fine-tuned top-1,
    MACs, CPU latency and peak memory. The ViT teacher's rows need ``teachers/cifar_vit.safetensors``."""
    log: list[dict[str, Any]] = []
    raw = OUT / "tradeoffs_raw.json"
    argv = [sys.executable, "bench/tradeoffs.py", "--precision", "bf16", "--home", os.environ["STRUCTSEARCH_HOME"]]
    vit = ROOT / "teachers" / "cifar_vit.safetensors"
    if vit.is_file():
        argv += ["--vit-teacher", str(vit.relative_to(ROOT))]
    result = run([*argv, "--json", str(raw.relative_to(ROOT))], log, raw)
    from structsearch.models import file_hash  # the page flags the stage stale when the file changes

    return {"commands": log, "tradeoffs": result, "teacher_file": file_hash(vit) if vit.is_file() else None}


def stage_vit_teacher() -> dict[str, Any]:
    """The shipped ViT teacher: how it was trained (its sidecar, written by ``structsearch teach``) and its
    accuracy measured again on the shipped file. Training it again (about 2 h) is not part of this run."""
    log: list[dict[str, Any]] = []
    sidecar = json.loads((ROOT / VIT_TEACHER).with_suffix(".json").read_text())
    common = ["--model", "cifar_vit", "--checkpoint", VIT_TEACHER, "--format", "json"]
    report = run([*CLI, "eval", *common, "--data", REPORT], log)
    cost = run([*CLI, "cost", "cifar_vit", "--latency", "--memory", "--format", "json"], log)
    return {"commands": log, "sidecar": sidecar, "report": report, "cost": cost}


def stage_vit_inherit() -> dict[str, Any]:
    """ViT-to-ViT search at 50% and 25% of the ViT teacher's MACs; every student again from scratch and
    with feature KD (``bench/inherit.py``)."""
    log: list[dict[str, Any]] = []
    raw = OUT / "vit_inherit_raw.json"
    argv = [sys.executable, "bench/inherit.py", "--teacher", VIT_TEACHER, "--trials", "4"]
    argv += ["--json", str(raw.relative_to(ROOT))]
    result = run([*argv, "--home", os.environ["STRUCTSEARCH_HOME"]], log, raw)
    from structsearch.models import file_hash  # the page flags the stage stale when the file changes

    return {"commands": log, "vit_inherit": result, "teacher_file": file_hash(ROOT / VIT_TEACHER)}


def family_teacher_stage(stage: str) -> Callable[[], dict[str, Any]]:
    """A stage for one of :data:`FAMILY_TEACHERS`: the teacher trained by its recipe (resumable; about 20 min
    here), then a search of its own family under its budgets (50% and 25% of its MACs unless said), every student again from scratch
    and with feature KD (``bench/inherit.py``)."""
    model, recipe, budgets = FAMILY_TEACHERS[stage]

    def run_stage() -> dict[str, Any]:
        log: list[dict[str, Any]] = []
        home = os.environ["STRUCTSEARCH_HOME"]
        teacher = Path(home) / f"{model}_cifar10.safetensors"
        run([*CLI, "teach", recipe, "--out", str(teacher), "--format", "json"], log)
        sidecar = json.loads(teacher.with_suffix(".json").read_text())
        raw = OUT / f"{stage}_inherit_raw.json"
        argv = [sys.executable, "bench/inherit.py", "--model", model, "--teacher", str(teacher)]
        argv += ["--budgets", budgets, "--trials", "6", "--json", str(raw.relative_to(ROOT))]
        result = run([*argv, "--home", home], log, raw)
        return {"commands": log, "sidecar": sidecar, "inherit": result}

    return run_stage


def stage_feature_kd() -> dict[str, Any]:
    """ViT feature KD: two searches differing only in ``proxy.feature_kd``, their students fine-tuned
    with and without it (``bench/feature_kd.py``)."""
    log: list[dict[str, Any]] = []
    raw = OUT / "feature_kd_raw.json"
    argv = [sys.executable, "bench/feature_kd.py", "--json", str(raw.relative_to(ROOT))]
    result = run([*argv, "--home", os.environ["STRUCTSEARCH_HOME"]], log, raw)
    from structsearch.models import file_hash

    return {"commands": log, "feature_kd": result, "teacher_file": file_hash(ROOT / VIT_TEACHER)}


def _sweep_counts(stdout: str) -> dict[str, dict[str, int]]:
    """``{"hostile list": counts, "schemathesis": counts}`` from the sweep tests' printed lines."""
    out: dict[str, dict[str, int]] = {}
    for line in stdout.splitlines():
        for prefix, name in (("hostile sweep:", "hostile list"), ("openapi fuzz ", "schemathesis")):
            at = line.find(prefix)  # pytest's progress dots may come first on the line
            if at >= 0:
                counts = ast.literal_eval(line[line.rindex("{") :])  # the counts: the last {...}
                total = out.setdefault(name, dict.fromkeys(counts, 0) | {"operations": 0})
                total["operations"] += 1
                for k, v in counts.items():
                    total[k] += v
    if set(out) != {"hostile list", "schemathesis"}:
        sys.exit(f"the sweep tests printed no counts:\n{stdout[-3000:]}")
    return out


STAGES: dict[str, Callable[[], dict[str, Any]]] = {
    "teacher": stage_teacher,
    "search": stage_search,
    "recheck": stage_recheck,
    "datafree": stage_datafree,
    "datafree_vit": stage_datafree_vit,
    "resolution": stage_resolution,
    "vit": stage_vit,
    "finetune": stage_finetune,
    "vs_pruning": stage_vs_pruning,
    "prescreen": stage_prescreen,
    "trial_cost": stage_trial_cost,
    "reliability": stage_reliability,
    "detection": stage_detection,
    "tradeoffs": stage_tradeoffs,
    "vit_teacher": stage_vit_teacher,
    "vit_inherit": stage_vit_inherit,
    "feature_kd": stage_feature_kd,
    **{stage: family_teacher_stage(stage) for stage in FAMILY_TEACHERS},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--force", action="append", default=[], choices=sorted(STAGES), help="rerun this stage")
    ap.add_argument("--only", action="append", default=[], choices=sorted(STAGES), help="run only these stages")
    ap.add_argument("--render-only", action="store_true", help="render the page from stored outputs")
    args = ap.parse_args()
    os.environ.setdefault("STRUCTSEARCH_HOME", str(Path.home() / ".structsearch-results"))
    OUT.mkdir(parents=True, exist_ok=True)
    if not args.render_only:
        for name, fn in STAGES.items():
            path = OUT / f"{name}.json"
            if (args.only and name not in args.only) or (path.exists() and name not in args.force):
                continue
            print(f"== stage {name}", flush=True)
            start = time.perf_counter()
            data = fn()
            data["seconds"] = round(time.perf_counter() - start, 1)
            data["machine"] = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
            path.write_text(json.dumps(data, indent=2) + "\n")
    from results_page import render  # bench/results_page.py: tables and plots only

    render({name: json.loads((OUT / f"{name}.json").read_text()) for name in STAGES if (OUT / f"{name}.json").exists()})
    print(f"wrote {DOCS / 'results.md'}")


if __name__ == "__main__":
    main()
