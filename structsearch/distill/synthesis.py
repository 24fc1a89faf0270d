"""Data-free distillation: a proxy training set synthesised from the teacher's weights alone.

When the user has no images (``--data synthetic:N``), the proxy still needs inputs on which the
student can imitate the teacher. They are made by *model inversion*: start from Gaussian noise and
optimise the pixels (Adam) so that the frozen teacher responds to them the way it responds to real
images. Two published recipes, chosen by the teacher's layers (``method="auto"``):

**DeepInversion** (Yin et al., "Dreaming to Distill: Data-free Knowledge Transfer via
DeepInversion", CVPR 2020) for teachers with BatchNorm. Every BatchNorm layer ``l`` remembers the
mean ``mu_l`` and variance ``sigma2_l`` of its input over the real training set; the synthetic batch
``x`` should reproduce them while the teacher confidently predicts a chosen target class ``y``::

    L(x) = CE(f(x~), y)
         + a_bn * sum_l ( ||mu_l(x~) - mu_l||_2 + ||sigma2_l(x~) - sigma2_l||_2 )
         + a_tv * TV(x~) + a_l2 * ||x~||_2

where ``x~`` is ``x`` randomly jittered (rolled by up to ``H/16`` pixels) and flipped at every
iteration, ``mu_l(x~)``/``sigma2_l(x~)`` are the batch statistics of layer ``l``'s input, and
``TV`` is the sum of the l2 norms of the differences between neighbouring pixels (horizontal,
vertical and both diagonals) -- the image priors of the paper's released code. Defaults are the
paper's CIFAR-10 settings (batch 256, 2000 iterations; the released code's improved ``a_tv = 1e-3``,
``lr = 0.1``) except ``a_bn = 1`` instead of 10: on the shared ResNet-56 (128 images, 300
iterations) ``a_bn = 10`` left CE at 5.8 and the teacher recognised 29% of its own images, while
``a_bn = 1`` reached 99% with nearly the same BatchNorm match (loss 87 against 80; ``0.1``: 100%,
87). The optimiser follows the ImageNet code (Adam with betas (0.5, 0.9), cosine learning rate
after a short warm-up, pixels clipped to the valid range after every step).

**PSAQ-ViT** (Li et al., "Patch Similarity Aware Data-Free Quantization for Vision Transformers",
ECCV 2022) for teachers without BatchNorm (ViTs, DeiT). LayerNorm keeps no running statistics, so
there is nothing to match; PSAQ-ViT instead uses a property of self-attention that the paper
measures: on real images the patches' responses are diverse, so the cosine similarities between
the patch features of an attention block are spread out, while on noise they collapse. It maximises
the differential entropy of that similarity distribution in every block::

    L(x) = CE(f(x~), y) - a_ent * sum_b H_b(x~) + a_tv * TV(x~) + a_l2 * ||x~||_2
    H_b  = -integral p_b(s) log p_b(s) ds,   p_b = Gaussian KDE (bandwidth 0.01) of the cosine
           similarities s_ij between the head-averaged attention outputs (attn @ v) of patches i, j

(integral by the trapezoidal rule). We chose it over matching LayerNorm input statistics because it
is published and evaluated for exactly these models, needs nothing the checkpoint lacks, and its
signal (patch diversity) is what ViT features depend on. Departures from the released code, each
for cost at batch 256: the density is estimated from up to 1024 randomly chosen patch pairs per
block and iteration (all pairs at CIFAR-sized token counts) and evaluated at 32 grid points
instead of 10; the image prior is DeepInversion's TV (the paper's TV term pulls towards a target
value fitted to batch 32 at 224 px).

Targets are balanced over the teacher's classes and shuffled (seeded) across batches. After the
optimisation the float images -- in the teacher's normalised input space -- are de-normalised with
the preprocessing mean/std and quantised to uint8, so everything downstream (augmentation, the
teacher-output cache, the :class:`~structsearch.distill.Distiller`) is unchanged. Labels are the
teacher's predictions on those *quantised* images, so they are honest even where the optimisation
missed its target: scoring a student on them measures agreement with the teacher.

Synthesis is expensive (thousands of teacher forward and backward passes), so the set is cached
on disk beside the teacher outputs (:class:`~structsearch.distill.cache.TeacherCache`: atomic
writes, checksums), keyed by the teacher's identity (:class:`TeacherId` or a digest of its weights),
the image count, method, iterations, seed, batch size, resolution, preprocessing and every loss
setting. A second call with the same inputs reads the images back instead of optimising. Each
finished batch is kept in the cache too (every batch has its own seeded generator, so it does not
depend on the others), so a synthesis that is killed -- hours into a CPU run at thousands of images
-- resumes at its first unfinished batch and ends with the same images; the batches are deleted
once the whole set is stored.

Detectors are inverted by the same loop (:func:`synthesize_with`); only the term on the teacher's
output and the labels differ (a :class:`TeacherObjective`, :mod:`structsearch.detection.synthetic`).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Generic, Protocol, TypedDict, TypeVar, Unpack, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from structsearch.data import LoadedData, Preprocess
from structsearch.data.spec import SynthesisSpec
from structsearch.devices import resolve_device
from structsearch.distill.cache import META, TeacherCache, cache_key
from structsearch.distill.evaluate import predict
from structsearch.distill.taps import Hooks
from structsearch.distill.teacher import TeacherId, state_digest
from structsearch.errors import DataError
from structsearch.train import (
    Precision,
    WarmupCosine,
    autocast,
    batchnorms,
    make_optimizer,
    num_classes_of,
    probe_classes,
    run_steps,
)

log = logging.getLogger(__name__)

#: Version of what a cached synthetic set means; bump it when the synthesis changes.
SYNTHESIS_FORMAT = 1

Progress = Callable[[int, int, dict[str, float]], None]


class SynthesisOptions(TypedDict, total=False):
    """Where a set is kept and how it is made, beyond its spec (see :func:`synthesize_spec`)."""

    teacher_id: TeacherId | None
    cache: TeacherCache | None
    config: SynthesisConfig | None
    progress: Progress | None


#: What a synthesised set is made into: classification's :class:`LoadedData`, detection's ``DetectionData``.
DataT = TypeVar("DataT")


@dataclass(frozen=True)
class SynthesisConfig:
    """Loss weights and optimiser settings; every field is part of the cache key.

    ``lr=None`` takes the method's default (:attr:`SynthesisMethod.lr`); ``jitter=None`` rolls by up to
    ``max(1, H // 16)`` pixels (2 at 32 px, as DeepInversion's CIFAR code). ``ce_weight`` weighs
    the :class:`TeacherObjective`'s term: CE for a classifier, the detection-confidence term for a
    detector (the name is CE's because it is part of the cache key of every stored set).
    ``precision="bf16"`` runs the teacher's forward and backward under bfloat16 autocast
    (:mod:`structsearch.train.precision`); the priors' statistics and the pixels stay float32. It
    enters the cache key only when it is not ``fp32``, so sets cached before it existed stay valid.
    """

    lr: float | None = None
    betas: tuple[float, float] = (0.5, 0.9)
    warmup: int = 100
    ce_weight: float = 1.0
    bn_weight: float = 1.0
    entropy_weight: float = 1.0
    tv_weight: float = 1e-3
    l2_weight: float = 0.0
    jitter: int | None = None
    flip: bool = True
    #: PSAQ-ViT: patch pairs sampled per block for the density estimate, its grid and bandwidth.
    max_pairs: int = 1024
    kde_points: int = 32
    kde_bandwidth: float = 0.01
    precision: Precision = "fp32"

    def __post_init__(self) -> None:
        weights = ("ce_weight", "bn_weight", "entropy_weight", "tv_weight", "l2_weight", "kde_bandwidth")
        for name in weights:
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise DataError(f"synthesis {name} must be a non-negative number, got {v!r}")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise DataError(f"synthesis lr must be positive, got {self.lr!r}")
        if self.jitter is not None and (isinstance(self.jitter, bool) or self.jitter < 0):
            raise DataError(f"synthesis jitter must be >= 0 pixels, got {self.jitter!r}")
        if self.max_pairs < 2 or self.kde_points < 2 or self.warmup < 0:
            raise DataError("synthesis max_pairs and kde_points must be >= 2 and warmup >= 0")
        if self.precision not in ("fp32", "bf16"):
            raise DataError(f"synthesis precision must be fp32 or bf16, got {self.precision!r}")

    def key(self) -> dict[str, Any]:
        """The settings as they enter a set's cache key (``precision`` only when not the default)."""
        settings = asdict(self)
        if self.precision == "fp32":
            del settings["precision"]
        return settings


@dataclass(frozen=True)
class SynthesisResult(Generic[DataT]):
    """A synthesised set and how it was made.

    ``data`` is labelled by the teacher on the quantised images (classification: ``data.y`` its
    predictions); ``targets`` the classes the optimisation aimed at, so ``target_agreement`` (the
    fraction of images whose labels agree with their target) says how well the inversion
    converged. ``seconds`` and ``seconds_per_iteration`` (one optimisation step of one batch) are
    those of the run that made the set, also on a cache hit (read from the entry).
    ``losses`` are the last iteration's loss terms, averaged over batches; ``initial_losses`` the
    first iteration's (on the random start).
    """

    data: DataT
    targets: Tensor
    method: str
    cache_hit: bool
    seconds: float
    seconds_per_iteration: float
    target_agreement: float
    losses: dict[str, float] = field(default_factory=dict)
    initial_losses: dict[str, float] = field(default_factory=dict)

    def info(self) -> dict[str, Any]:
        """JSON-ready figures (no arrays)."""
        figures = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("data", "targets")}
        data = cast(Any, self.data)  # LoadedData or DetectionData: both have these
        return {
            "source": data.source,
            "images": len(data),
            "image_size": list(data.image_size),
            **figures,
        }


# -- the methods, by registry ---------------------------------------------------------------------


class _Prior(Protocol):
    """Forward hooks on the teacher that turn one forward pass into a method's loss term."""

    def take(self, gen: torch.Generator) -> Tensor: ...

    def remove(self) -> None: ...


@dataclass(frozen=True)
class SynthesisMethod:
    """One inversion recipe: which teachers it applies to and the loss term it adds to CE and TV.

    ``term`` names the term in the reported losses; ``weight(cfg)`` is its signed weight in the
    total (negative for a term to maximise); ``attach(teacher, cfg)`` hooks the teacher so that
    each forward pass yields the term; ``lr`` is the default Adam learning rate; ``needs`` says,
    for error messages, what a teacher must have for ``applies(model)``.
    """

    name: str
    term: str
    lr: float
    needs: str
    applies: Callable[[nn.Module], bool]
    weight: Callable[[SynthesisConfig], float]
    attach: Callable[[nn.Module, SynthesisConfig], _Prior]


_METHODS: dict[str, SynthesisMethod] = {}


def register_method(method: SynthesisMethod) -> SynthesisMethod:
    """Register ``method`` under its name; ``method="auto"`` picks the first registered one that applies."""
    if method.name in _METHODS:
        raise ValueError(f"synthesis method '{method.name}' is already registered")
    _METHODS[method.name] = method
    return method


def list_methods() -> list[SynthesisMethod]:
    """Registered methods, in registration (= ``auto`` preference) order."""
    return list(_METHODS.values())


def _attentions(model: nn.Module) -> list[nn.Module]:
    """timm-style self-attention blocks: ``qkv`` and ``proj`` linears and a ``num_heads``."""
    return [
        m
        for m in model.modules()
        if isinstance(getattr(m, "num_heads", None), int)
        and isinstance(getattr(m, "qkv", None), nn.Linear)
        and isinstance(getattr(m, "proj", None), nn.Linear)
    ]


def resolve_method(model: nn.Module, method: str = "auto", name: str | None = None) -> str:
    """The concrete method for ``model``: ``auto`` → the first registered one that applies
    (DeepInversion with BatchNorm, else PSAQ-ViT).

    Raises DataError when the method needs layers the model lacks (checked on a randomly
    initialised model too, so a search can refuse the spec before loading anything).
    """
    who = name or type(model).__name__
    if method == "auto":
        for m in _METHODS.values():
            if m.applies(model):
                return m.name
        has = " nor ".join(f"{m.needs} ({m.name})" for m in _METHODS.values())
        raise DataError(f"no data-free method for {who}: it has neither {has}; give real data")
    if method not in _METHODS:
        raise DataError(f"unknown synthesis method {method!r}; use auto, {', '.join(_METHODS)}")
    if not _METHODS[method].applies(model):
        others = " or ".join([*(m for m in _METHODS if m != method), "auto"])
        raise DataError(f"method {method} needs {_METHODS[method].needs}, and {who} has none; use method={others}")
    return method


# -- loss terms ------------------------------------------------------------------------------------


def total_variation(x: Tensor) -> Tensor:
    """DeepInversion's l2 TV prior: sum of the l2 norms of horizontal, vertical and diagonal pixel differences."""
    d1 = x[:, :, :, :-1] - x[:, :, :, 1:]
    d2 = x[:, :, :-1, :] - x[:, :, 1:, :]
    d3 = x[:, :, 1:, :-1] - x[:, :, :-1, 1:]
    d4 = x[:, :, :-1, :-1] - x[:, :, 1:, 1:]
    return d1.norm() + d2.norm() + d3.norm() + d4.norm()


class _BNStatistics(Hooks):
    """Forward hooks collecting DeepInversion's feature-statistics loss of every BatchNorm layer."""

    def __init__(self, model: nn.Module) -> None:
        self.terms: list[Tensor] = []
        self.handles = [m.register_forward_hook(self._hook) for m in batchnorms(model)]

    def _hook(self, module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        x = inputs[0].float()  # bfloat16 under autocast: the statistics are compared in float32
        dims = [0, *range(2, x.ndim)]
        mean = x.mean(dims)
        var = x.var(dims, unbiased=False)
        rm = cast(Tensor, module.running_mean).float()
        rv = cast(Tensor, module.running_var).float()
        self.terms.append(torch.linalg.vector_norm(mean - rm) + torch.linalg.vector_norm(var - rv))

    def take(self, gen: torch.Generator | None = None) -> Tensor:
        out = torch.stack(self.terms).sum() if self.terms else torch.zeros(())
        self.terms = []
        return out


class _PatchSimilarity(Hooks):
    """Pre-forward hooks on each attention block's output projection: the per-head ``attn @ v``.

    The projection's input is ``attn @ v`` with the heads concatenated (B×N×C); PSAQ-ViT averages it
    over heads before measuring patch similarity, so it is reshaped to B×N×heads×(C/heads).
    :meth:`take` sums the similarity entropies of the blocks of the last forward pass.
    """

    def __init__(self, model: nn.Module, cfg: SynthesisConfig) -> None:
        self.cfg = cfg
        self.prefix = int(getattr(model, "num_prefix_tokens", 0) or 0)
        self.features: list[Tensor] = []
        self.handles = []
        for attn in _attentions(model):
            norm = getattr(attn, "norm", None)
            # timm applies an optional norm (Identity by default) between attn @ v and proj
            target = norm if isinstance(norm, nn.Module) else cast(nn.Module, attn.proj)
            self.handles.append(target.register_forward_pre_hook(self._hook_for(cast(int, attn.num_heads))))

    def _hook_for(self, heads: int) -> Callable[[nn.Module, tuple[Tensor, ...]], None]:
        def hook(module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
            x = inputs[0].float()  # bfloat16 under autocast: similarities and densities in float32
            if x.ndim == 3 and x.shape[-1] % heads == 0:
                self.features.append(x.reshape(*x.shape[:2], heads, x.shape[-1] // heads).mean(2))

        return hook

    def take(self, gen: torch.Generator) -> Tensor:
        feats, self.features = self.features, []
        ent = [_similarity_entropy(f, self.prefix, self.cfg, gen) for f in feats]
        return torch.stack(ent).sum() if ent else torch.zeros(())


def _similarity_entropy(feats: Tensor, prefix: int, cfg: SynthesisConfig, gen: torch.Generator) -> Tensor:
    """PSAQ-ViT's differential entropy of the patch-similarity distribution, averaged over images."""
    patches = feats[:, prefix:, :]
    n = patches.shape[1]
    if n < 2:
        return feats.new_zeros(())
    rows, cols = torch.triu_indices(n, n, offset=1)
    if rows.numel() > cfg.max_pairs:
        keep = torch.randperm(rows.numel(), generator=gen)[: cfg.max_pairs]
        rows, cols = rows[keep], cols[keep]
    # cosine similarities as one batched matmul of unit vectors (B×N×N), then the sampled pairs by a
    # flat gather: F.cosine_similarity broadcast over every pair held B×N×N×D (1.9 GB, 15 s an
    # iteration for 256 images of the shipped ViT), gathering the pairs' D-vectors 4 s
    unit = F.normalize(patches, dim=-1)
    sims = (unit @ unit.transpose(1, 2)).flatten(1)  # B×N²
    s = sims.index_select(1, (rows * n + cols).to(sims.device))  # B×P
    lo, hi = s.detach().min(), s.detach().max()
    grid = torch.linspace(0.0, 1.0, cfg.kde_points, device=s.device, dtype=s.dtype) * (hi - lo + 1e-6) + lo
    h = cfg.kde_bandwidth
    diffs = grid.view(1, -1, 1) - s.unsqueeze(1)  # B×G×P
    pdf = torch.exp(diffs.square() * (-0.5 / h**2)).mean(-1) / (h * math.sqrt(2 * math.pi)) + 1e-4
    return torch.trapezoid(-pdf * pdf.log(), grid, dim=-1).mean()


#: Yin et al. (CVPR 2020): match every BatchNorm layer's running statistics (lr: their CIFAR-10 code).
register_method(
    SynthesisMethod(
        "deepinversion",
        "bn",
        0.1,
        "BatchNorm layers with running statistics",
        lambda model: bool(batchnorms(model)),
        lambda cfg: cfg.bn_weight,
        lambda teacher, cfg: _BNStatistics(teacher),
    )
)
#: Li et al. (ECCV 2022): maximise the patch-similarity entropy of every attention block (lr: theirs for ViTs).
register_method(
    SynthesisMethod(
        "psaq",
        "entropy",
        0.2,
        "timm self-attention blocks",
        lambda model: bool(_attentions(model)),
        lambda cfg: -cfg.entropy_weight,
        _PatchSimilarity,
    )
)


def bn_statistics_loss(teacher: nn.Module, x: Tensor) -> float:
    """DeepInversion's BatchNorm-statistics loss of the float batch ``x`` (teacher in eval mode).

    ``sum_l ||mu_l(x) - running_mean_l||_2 + ||sigma2_l(x) - running_var_l||_2``: how far the
    batch's feature statistics are from those the teacher saw in training (0 would be a perfect match).
    """
    teacher.eval()
    stats = _BNStatistics(teacher)
    try:
        with torch.no_grad():
            teacher(x)
        return float(stats.take())
    finally:
        stats.remove()


# -- synthesis -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TeacherObjective:
    """What the inversion asks of the teacher's output, and how the finished images are labelled.

    The classifier's (in :func:`synthesize_spec`): cross-entropy towards each image's target class,
    labels the teacher's top-1. A detector's (:mod:`structsearch.detection.synthetic`): a confident
    detection of the target class, labels the teacher's confident boxes. The rest of the inversion
    (the method's prior, image priors, optimiser, quantisation, cache) is the same for both.

    ``loss(out, targets)`` maps the teacher's output on a batch and its target classes to the term
    to minimise (weighted by :attr:`SynthesisConfig.ce_weight`, reported as ``term``);
    ``label(images)`` the uint8 images to the label arrays cached beside them;
    ``agreement(arrays, targets)`` is the fraction of images whose labels agree with their target;
    ``key`` names what the labels depend on in the cache key (empty for classifiers, whose keys
    predate this class, so their cached sets stay valid).
    """

    term: str
    loss: Callable[[Tensor, Tensor], Tensor]
    label: Callable[[Tensor], dict[str, np.ndarray]]
    agreement: Callable[[Mapping[str, np.ndarray], Tensor], float]
    key: Mapping[str, Any] = field(default_factory=dict)


def synthesize(
    teacher: nn.Module,
    preprocess: Preprocess,
    n: int,
    *,
    method: str = "auto",
    iterations: int = 2000,
    batch_size: int = 256,
    seed: int = 0,
    **options: Any,
) -> SynthesisResult[LoadedData]:
    """:func:`synthesize_spec` with the spec's fields as arguments (``options``: that function's keywords)."""
    # the data spec validates n, iterations, batch size, seed and the method name with its messages
    return synthesize_spec(teacher, preprocess, SynthesisSpec(n, method, iterations, seed, batch_size), **options)


def synthesize_spec(
    teacher: nn.Module,
    preprocess: Preprocess,
    spec: SynthesisSpec,
    *,
    device: str | torch.device = "auto",
    **options: Unpack[SynthesisOptions],
) -> SynthesisResult[LoadedData]:
    """``spec.n`` uint8 images at the teacher's input resolution (as a ``synthetic:N?...`` data spec
    asks), the teacher's labels for them, and how they were made (targets, method, timings, losses,
    cache hit).

    See the module docstring for the methods. ``options``: ``teacher_id`` names the teacher in the
    cache key (without it its weights are hashed); ``cache`` (default none) keeps the set on disk;
    ``config`` the loss and optimiser settings; ``progress(batch, batches, losses)`` is called after
    each optimised batch (never on a cache hit).
    """
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    teacher.eval()
    h, w = preprocess.input_size
    num_classes = num_classes_of(teacher) or probe_classes(teacher.to(dev), torch.zeros(1, 3, h, w, device=dev))

    def label(images: Tensor) -> dict[str, np.ndarray]:
        return {"y": predict(teacher, images, preprocess, 256, dev).numpy().astype(np.int64)}

    def agreement(arrays: Mapping[str, np.ndarray], targets: Tensor) -> float:
        return float((torch.from_numpy(np.array(arrays["y"], dtype=np.int64)) == targets).double().mean())

    def data(arrays: Mapping[str, np.ndarray], source: str) -> LoadedData:
        x = torch.from_numpy(np.array(arrays["x"], dtype=np.uint8))
        y = torch.from_numpy(np.array(arrays["y"], dtype=np.int64))
        names = tuple(str(i) for i in range(num_classes))
        return LoadedData(x=x, y=y, num_classes=num_classes, class_names=names, source=source)

    objective = TeacherObjective("ce", F.cross_entropy, label, agreement)
    return synthesize_with(teacher, preprocess, spec, objective, data, num_classes, device=dev, **options)


def synthesize_with(
    teacher: nn.Module,
    preprocess: Preprocess,
    spec: SynthesisSpec,
    objective: TeacherObjective,
    make_data: Callable[[Mapping[str, np.ndarray], str], DataT],
    num_classes: int,
    *,
    device: torch.device,
    teacher_id: TeacherId | None = None,
    cache: TeacherCache | None = None,
    config: SynthesisConfig | None = None,
    progress: Progress | None = None,
) -> SynthesisResult[DataT]:
    """The set ``spec`` asks for, inverted towards ``objective`` with targets balanced over
    ``num_classes``, made into ``make_data(arrays, source)`` (arrays: ``x`` uint8 images,
    ``targets``, the objective's labels). Read from ``cache`` when it holds the same key."""
    cfg = config or SynthesisConfig()
    teacher.eval()
    spec = replace(spec, method=resolve_method(teacher, spec.method))
    h, w = preprocess.input_size
    ident = teacher_id.to_dict() if teacher_id is not None else {"state": state_digest(teacher)}
    key_parts = {
        "what": "synthetic-images",
        "format": SYNTHESIS_FORMAT,
        "teacher": ident,
        "n": spec.n,
        "method": spec.method,
        "iterations": spec.iterations,
        "batch_size": spec.batch_size,
        "seed": spec.seed,
        "resolution": [h, w],
        "preprocess": asdict(preprocess),
        "config": cfg.key(),
        "num_classes": num_classes,
        **objective.key,
    }
    options = spec.options_str()
    source = f"synthetic:{spec.n}" + (f"?{options}" if options else "")

    batches = None if cache is None else _BatchStore(cache, key_parts)

    def compute() -> dict[str, np.ndarray]:
        return _run(teacher, preprocess, spec, device, cfg, num_classes, objective, progress, stats, batches)

    # filled by compute(); the cache's meta.json stores it (save runs after compute), so a hit can
    # report the timings and losses of the run that made the set
    stats: dict[str, Any] = {}
    key = cache_key(key_parts)
    if batches is None:
        arrays, hit = compute(), False
    else:
        arrays, hit = batches.cache.get_or_compute(key, compute, {**key_parts, "stats": stats})
        if hit:
            stats = _stored_stats(batches.cache, key)
        batches.clear()
    targets = torch.from_numpy(np.array(arrays["targets"], dtype=np.int64))
    if hit:
        log.info("synthetic set %s read from the cache (%s)", source, key[:12])
    return SynthesisResult(
        data=make_data(arrays, source),
        targets=targets,
        method=spec.method,
        cache_hit=hit,
        seconds=float(stats.get("seconds", float("nan"))),
        seconds_per_iteration=float(stats.get("seconds_per_iteration", float("nan"))),
        target_agreement=objective.agreement(arrays, targets),
        losses=dict(stats.get("losses", {})),
        initial_losses=dict(stats.get("initial_losses", {})),
    )


def _stored_stats(cache: TeacherCache, key: str) -> dict[str, Any]:
    try:
        return dict(json.loads((cache.path(key) / META).read_text())["info"].get("stats", {}))
    except (OSError, ValueError, KeyError, TypeError):
        return {}


@dataclass(frozen=True)
class _BatchStore:
    """The finished batches of a set being made, kept in ``cache`` under the set's key parts plus the
    batch number, so that a killed synthesis resumes at its first unfinished batch."""

    cache: TeacherCache
    parts: Mapping[str, Any]

    def _key(self, batch: int) -> str:
        return cache_key({**self.parts, "what": "synthetic-batch", "batch": batch})

    def load(self, batch: int) -> tuple[np.ndarray, dict[str, Any]] | None:
        """The batch's uint8 images and its ``seconds``/``first``/``last`` losses, or ``None``."""
        arrays = self.cache.load(self._key(batch))
        if arrays is None:
            return None
        info = _stored_stats(self.cache, self._key(batch))
        return (np.array(arrays["x"]), info) if {"seconds", "first", "last"} <= info.keys() else None

    def save(self, batch: int, images: Tensor, info: dict[str, Any]) -> None:
        self.cache.save(self._key(batch), {"x": images.numpy()}, {"stats": info})

    def clear(self) -> None:
        """Delete the stored batches (the whole set is stored, or read back, by now)."""
        for batch in range(math.ceil(int(self.parts["n"]) / int(self.parts["batch_size"]))):
            shutil.rmtree(self.cache.path(self._key(batch)), ignore_errors=True)


def _run(
    teacher: nn.Module,
    preprocess: Preprocess,
    spec: SynthesisSpec,
    device: torch.device,
    cfg: SynthesisConfig,
    num_classes: int,
    objective: TeacherObjective,
    progress: Progress | None,
    stats: dict[str, Any],
    batches: _BatchStore | None,
) -> dict[str, np.ndarray]:
    """Optimise every batch (or read it from ``batches``, and store it there), quantise, label;
    fills ``stats`` (timings, losses) for the cache entry."""
    start = time.perf_counter()
    n, iterations, seed, method = spec.n, spec.iterations, spec.seed, _METHODS[spec.method]
    gen = torch.Generator().manual_seed(int(seed))
    # every class n // C or n // C + 1 times, in a seeded random order (mixed batches)
    targets = (torch.arange(n) % num_classes)[torch.randperm(n, generator=gen)]
    chunks = list(torch.arange(n).tensor_split(math.ceil(n / spec.batch_size)))
    teacher.to(device).eval()
    mean = torch.tensor(preprocess.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(preprocess.std, device=device).view(1, 3, 1, 1)
    images = torch.empty((n, 3, *preprocess.input_size), dtype=torch.uint8)
    finals: list[dict[str, float]] = []
    initials: list[dict[str, float]] = []
    optimise_seconds = 0.0
    with _frozen(teacher):
        for b, rows in enumerate(chunks):
            done = batches.load(b) if batches is not None else None
            if done is not None:  # finished by an earlier, interrupted run
                images[rows] = torch.from_numpy(done[0])
                optimise_seconds += float(done[1]["seconds"])
                initials.append(done[1]["first"])
                finals.append(done[1]["last"])
                continue
            t0 = time.perf_counter()
            batch_gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + b + 1)
            x, first, last = _invert(
                teacher,
                targets[rows].to(device),
                preprocess.input_size,
                method,
                objective,
                iterations,
                cfg,
                mean,
                std,
                batch_gen,
            )
            seconds = time.perf_counter() - t0
            optimise_seconds += seconds
            # normalised floats -> uint8 pixels (de-normalise, clamp, round)
            images[rows] = (x * std + mean).clamp_(0.0, 1.0).mul_(255.0).round_().to(torch.uint8).cpu()
            initials.append(first)
            finals.append(last)
            if batches is not None:
                batches.save(b, images[rows], {"seconds": seconds, "first": first, "last": last})
            if progress is not None:
                progress(b + 1, len(chunks), last)
    labels = objective.label(images)
    stats.update(
        seconds=time.perf_counter() - start,
        seconds_per_iteration=optimise_seconds / (len(chunks) * iterations),
        losses=_average(finals),
        initial_losses=_average(initials),
        target_agreement=objective.agreement(labels, targets),
    )
    return {"x": images.numpy(), **labels, "targets": targets.numpy().astype(np.int64)}


def _average(rows: list[dict[str, float]]) -> dict[str, float]:
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]} if rows else {}


@contextmanager
def _frozen(model: nn.Module) -> Iterator[None]:
    """Parameters without gradients while inverting (only the pixels are optimised), restored after."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _invert(
    teacher: nn.Module,
    targets: Tensor,
    size: tuple[int, int],
    method: SynthesisMethod,
    objective: TeacherObjective,
    iterations: int,
    cfg: SynthesisConfig,
    mean: Tensor,
    std: Tensor,
    gen: torch.Generator,
) -> tuple[Tensor, dict[str, float], dict[str, float]]:
    """Optimise one batch of pixels (normalised space); returns it with the first and last losses."""
    device = targets.device
    h, w = size
    x = torch.randn((targets.numel(), 3, h, w), generator=gen).to(device).requires_grad_(True)
    lo, hi = (0.0 - mean) / std, (1.0 - mean) / std
    lr = cfg.lr if cfg.lr is not None else method.lr
    opt = make_optimizer([x], "adam", lr, betas=cfg.betas, eps=1e-8)
    sched = WarmupCosine(opt, iterations, warmup=min(cfg.warmup, iterations // 10))
    jitter = cfg.jitter if cfg.jitter is not None else max(1, h // 16)
    prior = method.attach(teacher, cfg)
    weight = method.weight(cfg)
    # all randomness of the loop comes from one CPU generator: jitter, flips, KDE pair subsets
    shifts = (
        torch.randint(-jitter, jitter + 1, (iterations, 2), generator=gen).tolist() if jitter else [[0, 0]] * iterations
    )
    flips = (torch.rand(iterations, generator=gen) < 0.5).tolist() if cfg.flip else [False] * iterations
    first: dict[str, float] = {}
    last: dict[str, Tensor] = {}

    def loss_fn(it: int) -> tuple[Tensor, dict[str, Tensor]]:
        xj = torch.roll(x, shifts=tuple(shifts[it]), dims=(2, 3)) if jitter else x
        if flips[it]:
            xj = torch.flip(xj, dims=(3,))
        with autocast(device, cfg.precision):
            out = teacher(xj.contiguous(memory_format=torch.channels_last))
            terms: dict[str, Tensor] = {objective.term: objective.loss(out, targets).float()}
        terms[method.term] = prior.take(gen)
        terms["tv"] = total_variation(xj)
        loss = cfg.ce_weight * terms[objective.term] + weight * terms[method.term] + cfg.tv_weight * terms["tv"]
        if cfg.l2_weight:
            terms["l2"] = xj.norm()
            loss = loss + cfg.l2_weight * terms["l2"]
        terms["total"] = loss
        return loss, terms

    def after_step(step: int, _it: int, _loss: Tensor, terms: dict[str, Tensor]) -> None:
        nonlocal first, last
        with torch.no_grad():
            x.copy_(torch.maximum(torch.minimum(x, hi), lo))  # clip to valid pixel values
        if step == 1:
            first = {k: float(v.detach()) for k, v in terms.items()}
        if step == iterations:
            last = {k: v.detach() for k, v in terms.items()}

    try:
        run_steps(range(iterations), loss_fn, opt, sched, after_step=after_step)
    finally:
        prior.remove()
    return x.detach(), first, {k: float(v) for k, v in last.items()}
