"""Benchmark: the short KD proxy with the real ResNet-56 CIFAR-10 teacher (issue "score a candidate by
short knowledge distillation").

    .venv/bin/python bench/proxy.py [--steps 200] [--batch-size 128] [--train-size 10000] [--json out.json]

Trains on a 10,000-image slice of ``train.npz``, validates on 2,000 *other* training images (what a
search selects on when no held-out set is given) and also reports accuracy on ``test.npz[:2000]``,
because the teacher memorised ``train.npz``. The student keeps every block at half its internal
width (about 50 % of the teacher's MACs) and inherits the teacher's weights. Prints:

* the student's MACs ratio;
* teacher-cache build and reload times, seconds per trial and training images per second;
* the cache speed-up: training throughput with cached teacher outputs vs recomputing the teacher on
  every batch, measured in the same process in alternating short segments (``--speed-steps``), so
  that load from other processes on a shared machine hits both sides alike;
* inherited vs from-scratch accuracy after the same number of steps (scratch at its own, larger
  learning rate: the stronger baseline), and the inherited student before any step (BN
  recalibration only);
* same-seed determinism: two short runs (``--repeat-steps``) give identical scores.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from structsearch.cost import measure_cost
from structsearch.data import Preprocess, load_data, split_train_val
from structsearch.distill import (
    Distiller,
    ProxyConfig,
    ProxyResult,
    TeacherCache,
    TeacherId,
    predict,
    recalibrate_bn,
    uniform_width_spec,
)
from structsearch.models import create_model
from structsearch.space import space_of
from structsearch.surgery import build_student

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
TRAIN = SHARED / "data" / "cifar10" / "train.npz"
TEST = SHARED / "data" / "cifar10" / "test.npz"
CKPT = SHARED / "weights" / "cifar_resnet" / "resnet56-4bfd9763.th"
TEACHER = "cifar_resnet56"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--train-size", type=int, default=10_000)
    ap.add_argument("--val-size", type=int, default=2_000)
    ap.add_argument("--test-size", type=int, default=2_000)
    ap.add_argument("--views", type=int, default=2)
    ap.add_argument("--lr", type=float, default=ProxyConfig.lr)
    ap.add_argument("--scratch-lr", type=float, default=0.05)
    ap.add_argument("--width", type=float, default=0.5)
    ap.add_argument("--speed-steps", type=int, default=20, help="steps per cached/online segment")
    ap.add_argument("--speed-rounds", type=int, default=3, help="alternating cached/online segment pairs")
    ap.add_argument("--repeat-steps", type=int, default=20, help="steps of each same-seed determinism run")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--cache-dir", type=Path, default=None, help="default: a fresh temporary directory (cold cache)")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args()

    figures: dict[str, Any] = {
        "threads": torch.get_num_threads(),
        "device": args.device,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "views": args.views,
    }
    teacher = create_model(TEACHER, checkpoint=CKPT).eval()
    preprocess = Preprocess.from_model(teacher)
    spec = uniform_width_spec(space_of(teacher, TEACHER), args.width)
    size = (3, *preprocess.input_size)
    teacher_macs = measure_cost(teacher, size).macs
    student_cost = measure_cost(build_student(teacher, spec), size)
    figures["macs_ratio"] = student_cost.macs / teacher_macs
    print(
        f"student: every block at width {args.width}: {student_cost.macs / 1e6:.1f}M MACs, "
        f"{figures['macs_ratio']:.3f} of the teacher's {teacher_macs / 1e6:.1f}M; {student_cost.params:,} params"
    )

    data = load_data(f"npz:{TRAIN}[:{args.train_size + args.val_size}]")
    train_idx, val_idx = split_train_val(data.y, args.val_size, 0, train_size=args.train_size)
    test = load_data(f"npz:{TEST}[:{args.test_size}]")
    config = ProxyConfig(steps=args.steps, batch_size=args.batch_size, views=args.views, lr=args.lr, device=args.device)
    device = torch.device(args.device)
    test_teacher_pred = predict(teacher, test.x, preprocess, 256, device)
    figures["teacher_test_top1"] = _pct(test_teacher_pred, test.y)
    print(
        f"data: {len(train_idx)} train x {args.views} views, {len(val_idx)} val (other train images), "
        f"{len(test)} test; teacher test top-1 {figures['teacher_test_top1']:.2f}%",
        flush=True,
    )

    with tempfile.TemporaryDirectory() as tmp:
        cache = TeacherCache(args.cache_dir or tmp)
        teacher_id = TeacherId.of(TEACHER, {}, CKPT)

        def distiller(cfg: ProxyConfig = config, **kw: Any) -> Distiller:
            return Distiller(
                teacher, data, train_idx, val_idx, preprocess, cfg, teacher_id=teacher_id, cache=cache, **kw
            )

        t = time.perf_counter()
        kd = distiller()
        figures["cache_build_s"] = time.perf_counter() - t
        t = time.perf_counter()
        kd = distiller()
        figures["cache_reload_s"] = time.perf_counter() - t
        print(
            f"teacher cache: build {figures['cache_build_s']:.1f} s (teacher on {len(train_idx) * args.views} train "
            f"+ {len(val_idx)} val images), reload {figures['cache_reload_s']:.2f} s (hit: {kd.cache_hit})",
            flush=True,
        )

        student = build_student(teacher, spec)
        recalibrate_bn(
            student, (kd._pre(kd.train_views[i * 128 : (i + 1) * 128]) for i in range(config.bn_recalibration_batches))
        )
        figures["inherited_0_steps_val_top1"], _ = kd.evaluate(student)
        figures["inherited_0_steps_test_top1"] = _pct(predict(student, test.x, preprocess, 256, device), test.y)

        def trial(name: str, model: torch.nn.Module, dist: Distiller) -> ProxyResult:
            r = dist.score(model)
            test_pred = predict(model, test.x, preprocess, 256, device)
            figures[name] = {
                **asdict(r),
                "test_top1": _pct(test_pred, test.y),
                "test_agreement": float((test_pred == test_teacher_pred).double().mean()),
            }
            f = figures[name]
            print(
                f"{name:18s} {r.steps:4d} steps  val {r.val_top1:6.2f}%  test {f['test_top1']:6.2f}%  "
                f"agree(val) {r.teacher_agreement:.3f}  {r.seconds:7.1f} s/trial  {r.train_images_per_s:6.0f} train img/s  "
                f"loss {r.final_loss:.4f}",
                flush=True,
            )
            return r

        # cache speed-up: alternate short cached / online segments of the same trial
        short = replace(config, steps=args.speed_steps)
        cached_kd, online_kd = distiller(short), distiller(short, online_teacher=True)
        rates: dict[str, list[float]] = {"cached": [], "online": []}
        for _ in range(args.speed_rounds):
            for name, dist in (("cached", cached_kd), ("online", online_kd)):
                rates[name].append(dist.score(build_student(teacher, spec)).train_images_per_s)
        figures["speed_segments_images_per_s"] = rates
        figures["cache_speedup"] = statistics.median(rates["cached"]) / statistics.median(rates["online"])
        print(
            f"cache speed-up: {figures['cache_speedup']:.2f}x training images/s with cached teacher outputs "
            f"(median of {args.speed_rounds} alternating {args.speed_steps}-step segments: "
            f"cached {[round(r) for r in rates['cached']]}, online {[round(r) for r in rates['online']]} img/s)",
            flush=True,
        )

        # determinism: the same short trial twice
        repeat_kd = distiller(replace(config, steps=args.repeat_steps))
        a, b = (repeat_kd.score(build_student(teacher, spec)) for _ in range(2))
        figures["deterministic"] = (a.val_top1, a.teacher_agreement, a.final_loss) == (
            b.val_top1,
            b.teacher_agreement,
            b.final_loss,
        )
        print(
            f"same seed, same score ({args.repeat_steps} steps, twice): {figures['deterministic']} "
            f"(val {a.val_top1:.2f}% / {b.val_top1:.2f}%, loss {a.final_loss:.6f} / {b.final_loss:.6f})",
            flush=True,
        )

        inherited = trial("inherited", build_student(teacher, spec), kd)
        torch.manual_seed(0)
        scratch_cfg = replace(config, lr=args.scratch_lr)
        scratch = trial("scratch", build_student(create_model(TEACHER), spec), distiller(scratch_cfg))

    print(
        f"inherited vs scratch after {args.steps} steps: val {inherited.val_top1:.2f}% vs {scratch.val_top1:.2f}% "
        f"(scratch lr {args.scratch_lr}), test {figures['inherited']['test_top1']:.2f}% vs {figures['scratch']['test_top1']:.2f}%; "
        f"before training (BN recalibrated only): val {figures['inherited_0_steps_val_top1']:.2f}%, "
        f"test {figures['inherited_0_steps_test_top1']:.2f}%"
    )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


def _pct(pred: torch.Tensor, y: torch.Tensor) -> float:
    return 100.0 * float((pred == y).double().mean())


if __name__ == "__main__":
    main()
