"""``structsearch synthesize``: a data-free proxy set made from a teacher, written as an npz archive.

The same synthesis (and the same on-disk cache) as ``--data synthetic:N`` in a search or
``structsearch proxy``, so a set written here can be inspected (``--grid``), reused on another
machine as ``npz:FILE`` and compared with what a search trains on.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, cast

import typer

from structsearch.cli._common import Format, FormatOpt, KwOpt, parse_kwargs, print_json, say

if TYPE_CHECKING:
    from structsearch.train import Precision


def synthesize(
    teacher: Annotated[str, typer.Option("--teacher", help="Teacher timm model name, e.g. cifar_resnet56")],
    n: Annotated[int, typer.Option("--n", min=1, help="Number of images to synthesise")],
    out: Annotated[
        Path,
        typer.Option("--out", help="Archive to write (x uint8 N×H×W×3, y = the teacher's labels); load it as npz:FILE"),
    ],
    checkpoint: Annotated[
        Path | None, typer.Option(help="The teacher's trained weights (required: synthesis inverts them)")
    ] = None,
    kw: KwOpt = None,
    iters: Annotated[
        int, typer.Option("--iters", min=1, help="Optimisation steps per batch (DeepInversion paper: 2000)")
    ] = 2000,
    method: Annotated[
        str, typer.Option(help="auto (DeepInversion with BatchNorm, else PSAQ-ViT), deepinversion or psaq")
    ] = "auto",
    batch_size: Annotated[
        int, typer.Option(min=1, help="Images optimised together (BatchNorm statistics are matched per batch)")
    ] = 256,
    seed: Annotated[int, typer.Option(min=0, help="Seed of the random start, targets, jitter and flips")] = 0,
    input_size: Annotated[
        int | None,
        typer.Option(help="Resolution (default: the checkpoint's, from a `teach` sidecar; else the teacher's)"),
    ] = None,
    grid: Annotated[Path | None, typer.Option("--grid", help="Also write the first 100 images as a PNG grid")] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N or auto (CUDA when available)")] = "auto",
    precision: Annotated[
        str, typer.Option(help="fp32, or bf16: the teacher's passes under bfloat16 autocast (fast on AVX512-BF16 CPUs)")
    ] = "fp32",
    cache_dir: Annotated[
        Path | None,
        typer.Option(
            help="Cache of synthetic sets and teacher outputs (default $STRUCTSEARCH_CACHE, else $STRUCTSEARCH_HOME/cache)"
        ),
    ] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Neither read nor store the set in the cache")] = False,
    format: FormatOpt = Format.table,
) -> None:
    """Synthesise a proxy set from a trained teacher (data-free distillation) and write it as an npz.

    Labels are the teacher's predictions on the written (uint8) images. A second run with the same
    teacher and settings reads the set from the cache instead of optimising again.
    """

    from structsearch.data import Preprocess
    from structsearch.data.spec import SynthesisSpec
    from structsearch.distill import TeacherCache, TeacherId
    from structsearch.distill.synthesis import SynthesisConfig, synthesize_spec
    from structsearch.errors import StructsearchError
    from structsearch.models import create_model
    from structsearch.teach.run import input_side

    if checkpoint is None:
        raise StructsearchError("synthesize needs the teacher's --checkpoint: synthesis inverts trained weights")
    spec = SynthesisSpec(n, method.lower(), iters, seed, batch_size)
    kwargs = parse_kwargs(kw)
    net = create_model(teacher, checkpoint=checkpoint, **kwargs).eval()
    preprocess = Preprocess.from_model(net, input_side(input_size, checkpoint))

    def progress(batch: int, batches: int, losses: dict[str, float]) -> None:
        if format is Format.table:
            terms = ", ".join(f"{k} {v:.3g}" for k, v in losses.items())
            say(f"batch {batch}/{batches}: {terms}")

    result = synthesize_spec(
        net,
        preprocess,
        spec,
        device=device,
        teacher_id=TeacherId.of(teacher, kwargs, checkpoint),
        cache=None if no_cache else TeacherCache(cache_dir),
        config=SynthesisConfig(precision=cast("Precision", precision)),
        progress=progress,
    )
    _write_npz(out, result.data)
    if grid is not None:
        _write_grid(grid, result.data.x[:100])
    info = {
        **result.info(),
        "teacher": teacher,
        "checkpoint": str(checkpoint),
        "out": str(out),
        "grid": str(grid) if grid else None,
    }
    if format is Format.json:
        print_json(info)
        return
    h, w = result.data.image_size
    say(
        f"wrote {len(result.data)} {h}x{w} images ({result.method}) to {out}; the teacher predicts the target class "
        f"for {100 * result.target_agreement:.1f}%; {result.seconds:.1f} s, {result.seconds_per_iteration:.3f} s per "
        f"iteration of a batch{' (read from the cache)' if result.cache_hit else ''}. Use it as --data npz:{out}"
    )


def _write_npz(path: Path, data: Any) -> None:
    """``x`` uint8 N×H×W×3, ``y`` int64, ``class_names``: the layout ``npz:PATH`` reads; written atomically."""
    import numpy as np

    from structsearch.atomic import atomic_write
    from structsearch.errors import StructsearchError

    x = data.x.permute(0, 2, 3, 1).contiguous().numpy()
    try:
        atomic_write(path, lambda f: np.savez(f, x=x, y=data.y.numpy(), class_names=np.array(data.class_names)))
    except OSError as e:
        raise StructsearchError(f"cannot write {path}: {e.strerror or e}") from None


def _write_grid(path: Path, x: Any) -> None:
    """The images as a 10-wide PNG grid, each upscaled (nearest) to at least 64 px for viewing."""
    import torch.nn.functional as F
    from PIL import Image
    from torchvision.utils import make_grid

    from structsearch.errors import StructsearchError

    scale = max(1, -(-64 // max(int(x.shape[-1]), 1)))
    big = F.interpolate(x.float(), scale_factor=scale, mode="nearest").to(x.dtype) if scale > 1 else x
    image = make_grid(big, nrow=10, padding=2).permute(1, 2, 0).contiguous().numpy()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path, format="PNG")
    except (OSError, ValueError) as e:
        raise StructsearchError(f"cannot write {path}: {e}") from None
