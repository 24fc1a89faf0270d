"""One teacher-training run: resumable, evaluated, exported as fp16 safetensors with a sidecar.

Every random choice is a function of the recipe's seed and the position in the run -- epoch ``e``
augments with view ``e`` (or ``e mod V`` of the cached views) and shuffles with a generator seeded
by ``(seed, e)``; Mixup draws from numpy seeded by ``(seed, step)``; drop-path uses torch's global
generator, whose state the checkpoint keeps -- so a run killed and resumed from its checkpoint
takes the same steps as one that was never interrupted.

The checkpoint (``<work>/checkpoint.pt``, written atomically every ``checkpoint_every`` steps and
after every validation) holds the model, AdamW and the schedule, the step, torch's RNG state, the
best weights on the validation split so far and the history. Model selection uses the validation
split only; the test split is evaluated once, on the exported file's own (fp16-rounded) weights, so
``structsearch eval`` on the shipped file reproduces the reported number exactly.
"""

from __future__ import annotations

import json
import math
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from structsearch.atomic import atomic_write
from structsearch.data import Augment, LoadedData, Preprocess, fingerprint, load_data
from structsearch.distill.cache import TeacherCache, cache_key
from structsearch.distill.evaluate import top1
from structsearch.distill.losses import kd_loss
from structsearch.distill.teacher import TeacherId, augmented_view, run_teacher, tensor_digest
from structsearch.models import create_model, load_checkpoint
from structsearch.teach.recipe import TeachRecipe
from structsearch.train import WarmupCosine, autocast, make_optimizer, run_steps
from structsearch.train import load_checkpoint as load_train_checkpoint
from structsearch.train import save_checkpoint as save_train_checkpoint

CHECKPOINT = "checkpoint.pt"
#: One line per event (``{"event": "eval", "epoch": 3, "val_top1": 71.2, ...}``) for the CLI.
Log = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class TeachResult:
    """How a run ended. ``finished`` is False when ``hours`` ran out first (run again to resume)."""

    finished: bool
    step: int
    total_steps: int
    train_seconds: float
    images_per_s: float
    best_val_top1: float | None
    best_epoch: int | None
    history: tuple[dict[str, Any], ...]
    export: Path | None = None
    val_top1: float | None = None
    test_top1: float | None = None


def teach(
    recipe: TeachRecipe,
    work_dir: Path,
    export: Path | None,
    *,
    epochs: int | None = None,
    hours: float | None = None,
    device: str = "cpu",
    cache: TeacherCache | None = None,
    command: str = "",
    log: Log | None = None,
) -> TeachResult:
    """Train (or resume) ``recipe`` in ``work_dir``; when the schedule completes, export to ``export``.

    ``epochs`` overrides the recipe's (it is part of the schedule, so of the checkpoint's settings);
    ``hours`` only bounds this invocation's wall-clock time: the run checkpoints and stops, and the
    same command resumes it.
    """
    if epochs is not None:
        recipe = recipe.model_copy(update={"epochs": epochs})
    emit = log or (lambda _e: None)
    dev = torch.device(device)
    model = create_model(recipe.model, seed=recipe.seed, **recipe.kwargs).to(dev)
    pre = Preprocess.from_model(model, recipe.input_size)
    train, val = load_data(recipe.data.train), load_data(recipe.data.val)
    spe = len(train) // recipe.batch_size
    total = recipe.epochs * spe
    emit({"event": "start", "model": recipe.model, "input_size": "x".join(map(str, pre.input_size)), "steps": total})
    stream = _Stream(recipe, train, pre, dev, cache)  # computes the teacher's cached views first, if any
    opt = make_optimizer(_param_groups(model, recipe.weight_decay), "adamw", recipe.lr)
    sched = WarmupCosine(opt, total, round(recipe.warmup_epochs * spe))
    settings = {"format": 1, **recipe.settings()}
    if recipe.precision == "bf16":  # checkpoints from before the teacher's forward ran in bf16 too don't resume
        settings["teacher_precision"] = "bf16"
    ckpt = work_dir / CHECKPOINT
    state: dict[str, Any] = {"history": [], "best_val_top1": None, "best_epoch": None, "train_seconds": 0.0}
    best_weights: dict[str, Tensor] | None = None
    step = 0
    torch.manual_seed(recipe.seed)  # drop-path's draws; a resumed run restores the state it had
    if ckpt.is_file():
        loaded = load_train_checkpoint(
            ckpt, settings, model=model, optimizer=opt, scheduler=sched, device=dev, needed=("teach",)
        )
        step, state, best_weights = loaded["step"], json.loads(loaded["teach"]), loaded.get("best_weights")
        emit({"event": "resume", "step": step, "of": total})

    def save(at: int) -> None:
        extra = {"teach": json.dumps(state), "best_weights": best_weights}
        save_train_checkpoint(
            ckpt, settings, step=at, model=model, optimizer=opt, scheduler=sched, device=dev, extra=extra
        )

    deadline = time.monotonic() + hours * 3600 if hours is not None else math.inf
    clock = {"t0": time.perf_counter()}
    mixup = _mixup(recipe)
    eval_steps = recipe.eval_steps or recipe.eval_every * spe

    def forward(x: Tensor) -> Tensor:
        with autocast(dev, recipe.precision):
            return model(x).float()

    def loss_fn(batch: tuple[int, Tensor]) -> tuple[Tensor, None]:
        at, rows = batch
        x, y, t_logits = stream.batch(at // spe, rows)
        if mixup is None:
            out = forward(x)
            ce = F.cross_entropy(out, y, label_smoothing=recipe.label_smoothing)
        else:
            np.random.seed((recipe.seed * 1_000_003 + at) % 2**32)  # timm's Mixup draws from numpy
            x, y_soft = mixup(x, y)
            t_logits = stream.teacher_on(x)  # DeiT: the teacher sees the mixed image
            out = forward(x)
            ce = torch.sum(-y_soft * F.log_softmax(out, dim=-1), dim=-1).mean()
        return _with_teacher(recipe, ce, out, t_logits), None

    def after_step(at: int, batch: tuple[int, Tensor], _loss: Tensor, _aux: None) -> bool:
        nonlocal best_weights
        epoch_done = at % spe == 0
        if at % eval_steps == 0 or at == total:
            state["train_seconds"] += time.perf_counter() - clock["t0"]
            acc = top1(model, val.x, val.y, pre, 256, dev)
            model.train()
            entry = {
                "epoch": round(at / spe, 3),
                "step": at,
                "val_top1": round(acc, 2),
                "train_seconds": round(state["train_seconds"], 1),
            }
            state["history"].append(entry)
            if state["best_val_top1"] is None or acc > state["best_val_top1"]:
                state["best_val_top1"], state["best_epoch"] = acc, entry["epoch"]
                best_weights = {k: v.detach().clone().cpu() for k, v in model.state_dict().items()}
            emit(
                {
                    "event": "eval",
                    **entry,
                    "images_per_s": round(at * recipe.batch_size / max(1e-9, state["train_seconds"]), 1),
                }
            )
            clock["t0"] = time.perf_counter()
        out_of_time = time.monotonic() > deadline
        if epoch_done or at % recipe.checkpoint_every == 0 or out_of_time or at == total:
            state["train_seconds"] += time.perf_counter() - clock["t0"]
            clock["t0"] = time.perf_counter()
            save(at)
        return out_of_time

    model.train()
    step = run_steps(
        _batches(recipe, len(train), spe, step), loss_fn, opt, sched, after_step=after_step, start_step=step
    )
    # every step is a full batch; train_seconds spans every invocation of a resumed run
    speed = step * recipe.batch_size / state["train_seconds"] if state["train_seconds"] else 0.0
    result = TeachResult(
        finished=step >= total,
        step=step,
        total_steps=total,
        train_seconds=state["train_seconds"],
        images_per_s=speed,
        best_val_top1=state["best_val_top1"],
        best_epoch=state["best_epoch"],
        history=tuple(state["history"]),
    )
    if not result.finished or export is None:
        return result
    if best_weights is not None:
        model.load_state_dict(best_weights)
    return export_teacher(recipe, model, export, result, command=command)


def export_teacher(
    recipe: TeachRecipe, model: nn.Module, path: Path, result: TeachResult, *, command: str
) -> TeachResult:
    """Write ``model`` as fp16 safetensors at ``path`` and ``<path>.json`` beside it; both accuracies
    are measured on the weights read back from the written file."""
    from safetensors.torch import save

    blob = save({k: v.detach().to("cpu", torch.float16).contiguous() for k, v in model.state_dict().items()})
    atomic_write(path, lambda f: f.write(blob))
    shipped = create_model(recipe.model, **recipe.kwargs)
    load_checkpoint(shipped, path)
    pre = Preprocess.from_model(shipped, recipe.input_size)
    val, test = load_data(recipe.data.val), load_data(recipe.data.test)
    val_acc = top1(shipped, val.x, val.y, pre, 256, torch.device("cpu"))
    test_acc = top1(shipped, test.x, test.y, pre, 256, torch.device("cpu"))
    sidecar = {
        "model": recipe.model,
        "kwargs": recipe.kwargs,
        "input_size": list(pre.input_size),
        "weights": path.name,
        "dtype": "float16",
        "params": sum(p.numel() for p in shipped.parameters()),
        "command": command,
        "seed": recipe.seed,
        "recipe": recipe.settings(),
        "val": {"data": recipe.data.val, "top1": round(val_acc, 2)},
        "test": {"data": recipe.data.test, "top1": round(test_acc, 2)},
        "best_epoch": result.best_epoch,
        "train_seconds": round(result.train_seconds, 1),
        "images_per_s": round(result.images_per_s, 1),
        "history": list(result.history),
        "git_commit": _git_commit(),
    }
    atomic_write(sidecar_path(path), lambda f: f.write((json.dumps(sidecar, indent=2) + "\n").encode()))
    return TeachResult(**{**asdict(result), "export": path, "val_top1": val_acc, "test_top1": test_acc})


def sidecar_path(weights: Path) -> Path:
    """``teachers/cifar_vit.safetensors`` -> ``teachers/cifar_vit.json``."""
    return weights.with_suffix(".json")


def trained_input_size(weights: Path) -> int | None:
    """The image side a teacher exported by :func:`export_teacher` was trained at, from its sidecar;
    None without a readable sidecar that records one (checkpoints from elsewhere, older exports)."""
    try:
        size = json.loads(sidecar_path(weights).read_text()).get("input_size")
    except (OSError, ValueError, AttributeError):
        return None
    if isinstance(size, list) and len(size) == 2 and size[0] == size[1] and isinstance(size[0], int):
        return size[0]
    return None


def input_side(given: int | None, checkpoint: str | Path | None) -> int | None:
    """The image side to run a model at: ``given`` when set, else the size its ``checkpoint`` was trained
    at (:func:`trained_input_size`), else None (the model's own default, from timm's config)."""
    if given is not None:
        return given
    return trained_input_size(Path(checkpoint)) if checkpoint else None


# -- the data stream ------------------------------------------------------------------------------
class _Stream:
    """Epoch ``e``'s augmented training images and the teacher's logits on them."""

    def __init__(
        self, recipe: TeachRecipe, data: LoadedData, pre: Preprocess, dev: torch.device, cache: TeacherCache | None
    ) -> None:
        self.recipe, self.data, self.pre, self.dev = recipe, data, pre, dev
        self.augment = Augment(crop_padding=recipe.crop_padding, hflip=recipe.hflip)
        self.teacher: nn.Module | None = None
        self.teacher_pre = pre
        src = recipe.distill_from
        if src is not None and recipe.distillation != "none":
            self.teacher = create_model(src.model, checkpoint=src.checkpoint, **src.kwargs).eval().to(dev)
            self.teacher_pre = Preprocess.from_model(self.teacher, pre.input_size)
        self.epoch_view: tuple[int, Tensor] | None = None
        self.cached: np.ndarray | None = None
        if self.teacher is not None and recipe.teacher_views:
            self.cached = self._cached_logits(cache or TeacherCache())

    def view_of(self, epoch: int) -> int:
        return epoch % self.recipe.teacher_views if self.recipe.teacher_views else epoch

    def images(self, view: int) -> Tensor:
        if self.epoch_view is None or self.epoch_view[0] != view:
            self.epoch_view = (view, augmented_view(self.data.x, self.augment, self.recipe.seed, view))
        return self.epoch_view[1]

    def batch(self, epoch: int, rows: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        view = self.view_of(epoch)
        x = self.pre(self.images(view)[rows].to(self.dev))
        y = self.data.y[rows].to(self.dev)
        if self.cached is not None:
            return x, y, torch.from_numpy(self.cached[view][rows.numpy()]).to(self.dev)
        return x, y, self.teacher_on(x) if self.teacher is not None else None

    def teacher_on(self, x: Tensor) -> Tensor | None:
        if self.teacher is None:
            return None
        x = x if self.teacher_pre == self.pre else self._renormalise(x)
        with torch.no_grad(), autocast(self.dev, self.recipe.precision):
            return self.teacher(x).float()

    def _renormalise(self, x: Tensor) -> Tensor:
        """The teacher's normalisation of an image normalised for the student."""
        s_mean, s_std = (torch.tensor(v, device=x.device).view(1, 3, 1, 1) for v in (self.pre.mean, self.pre.std))
        t_mean, t_std = (
            torch.tensor(v, device=x.device).view(1, 3, 1, 1) for v in (self.teacher_pre.mean, self.teacher_pre.std)
        )
        return (x * s_std + s_mean - t_mean) / t_std

    def _cached_logits(self, cache: TeacherCache) -> np.ndarray:
        """V x N x classes teacher logits on the V fixed views, from the on-disk cache when there."""
        src = self.recipe.distill_from
        assert src is not None and self.teacher is not None
        views = self.recipe.teacher_views
        parts = {
            "what": "teach-teacher-logits",
            "teacher": TeacherId.of(src.model, src.kwargs, src.checkpoint).to_dict(),
            "preprocess": asdict(self.teacher_pre),
            "data": fingerprint(self.data),
            "augment": asdict(self.augment),
            "seed": self.recipe.seed,
            "views": views,
            "first_view": tensor_digest(self.images(0)[:256]),
        }
        teacher = self.teacher

        def compute() -> dict[str, np.ndarray]:
            logits = [
                run_teacher(teacher, self.images(v), self.teacher_pre, 256, self.dev)["logits"] for v in range(views)
            ]
            return {"logits": np.stack(logits)}

        arrays, _hit = cache.get_or_compute(cache_key(parts), compute, parts)
        return np.asarray(arrays["logits"], dtype=np.float32)


def _batches(recipe: TeachRecipe, n: int, spe: int, start: int) -> Iterator[tuple[int, Tensor]]:
    """``(step, rows)`` from step ``start + 1`` on: epoch ``e`` is a permutation seeded by ``(seed, e)``."""
    for epoch in range(start // spe, recipe.epochs):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(recipe.seed * 1_000_003 + epoch))
        for b in range(start - epoch * spe if epoch == start // spe else 0, spe):
            yield epoch * spe + b + 1, order[b * recipe.batch_size : (b + 1) * recipe.batch_size]


def _with_teacher(recipe: TeachRecipe, ce: Tensor, out: Tensor, t: Tensor | None) -> Tensor:
    """DeiT's objective on the class-token head (see :class:`TeachRecipe`)."""
    if t is None or recipe.distillation == "none":
        return ce
    term = F.cross_entropy(out, t.argmax(1)) if recipe.distillation == "hard" else kd_loss(out, t, recipe.temperature)
    return (1 - recipe.alpha) * ce + recipe.alpha * term


def _mixup(recipe: TeachRecipe) -> Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None:
    if not (recipe.mixup or recipe.cutmix):
        return None
    from timm.data import Mixup

    num_classes = int(recipe.kwargs.get("num_classes", 10))
    return Mixup(
        mixup_alpha=recipe.mixup,
        cutmix_alpha=recipe.cutmix,
        label_smoothing=recipe.label_smoothing,
        num_classes=num_classes,
    )


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups as DeiT/timm use them: no weight decay on biases, norms, position embedding, tokens."""
    skip = set(getattr(model, "no_weight_decay", lambda: set())())
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        (no_decay if p.ndim <= 1 or name in skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None
