"""``structsearch eval | proxy``: a model's accuracy, and one short-distillation score of a student."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer

from structsearch.cli._common import Format, FormatOpt, KwOpt, parse_kwargs, print_json, say

CheckpointOpt = Annotated[Path | None, typer.Option(help="Local checkpoint (state dict) to load")]
DeviceOpt = Annotated[str, typer.Option(help="cpu, cuda, cuda:N or auto (CUDA when available)")]


def evaluate(
    model: Annotated[str, typer.Option("--model", help="timm model name, e.g. cifar_resnet56")],
    data: Annotated[str, typer.Option("--data", help="Data source, e.g. npz:../shared/data/cifar10/test.npz[:2000]")],
    checkpoint: CheckpointOpt = None,
    kw: KwOpt = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per forward pass")] = 256,
    input_size: Annotated[
        int | None,
        typer.Option(help="Input resolution (default: the checkpoint's, from a `teach` sidecar; else the model's)"),
    ] = None,
    device: DeviceOpt = "auto",
    format: FormatOpt = Format.table,
) -> None:
    """Top-1 accuracy of a model on a labelled data source, with the model's own preprocessing."""

    from structsearch.data import Preprocess, check_labels, load_data
    from structsearch.distill import resolve_device, top1
    from structsearch.models import create_model
    from structsearch.teach.run import input_side
    from structsearch.train import num_classes_of

    dev = resolve_device(device)
    net = create_model(model, checkpoint=checkpoint, **parse_kwargs(kw)).eval()
    loaded = load_data(data)
    classes = num_classes_of(net)
    if classes is not None:
        check_labels(loaded, classes)
    pre = Preprocess.from_model(net, input_side(input_size, checkpoint))
    acc = top1(net, loaded.x, loaded.y, pre, batch_size, dev)
    result = {
        "model": model,
        "checkpoint": str(checkpoint) if checkpoint else None,
        "data": loaded.source,
        "images": len(loaded),
        "input_size": list(pre.input_size),
        "top1": round(acc, 2),
    }
    if format is Format.json:
        print_json(result)
    else:
        say(f"{model}: top-1 [bold]{acc:.2f}%[/] on {len(loaded)} images of {loaded.source}")


def proxy(
    teacher: Annotated[str, typer.Option("--teacher", help="Teacher timm model name, e.g. cifar_resnet56")],
    data: Annotated[
        str,
        typer.Option(
            "--data",
            help="Training data source (validation is carved from it unless --val-data); synthetic:N?iters=K makes it from the teacher (needs --checkpoint)",
        ),
    ],
    checkpoint: CheckpointOpt = None,
    kw: KwOpt = None,
    student_spec: Annotated[
        Path | None, typer.Option(help="ArchSpec JSON of a student of the teacher (inherits its weights)")
    ] = None,
    student_model: Annotated[
        str | None, typer.Option(help="A student of another model/family, trained from scratch on logits")
    ] = None,
    student_kw: Annotated[
        list[str] | None, typer.Option("--student-kw", help="Constructor kwarg of --student-model KEY=VALUE")
    ] = None,
    width: Annotated[
        float, typer.Option(help="Without --student-spec/--student-model: every block's width ratio")
    ] = 0.5,
    val_data: Annotated[
        str | None, typer.Option(help="Separate validation source, e.g. npz:.../test.npz[:5000]")
    ] = None,
    val_size: Annotated[
        int, typer.Option(min=1, help="Validation rows carved from --data (ignored with --val-data)")
    ] = 1000,
    train_size: Annotated[int | None, typer.Option(min=1, help="Cap on the training rows (stratified)")] = None,
    steps: Annotated[int, typer.Option(min=1, help="Optimisation steps")] = 200,
    batch_size: Annotated[int, typer.Option(min=1)] = 128,
    lr: Annotated[
        float | None,
        typer.Option(help="Peak learning rate (cosine decay); default: the proxy's rate for an inherited student"),
    ] = None,
    optimizer: Annotated[str, typer.Option(help="sgd or adamw")] = "sgd",
    temperature: Annotated[float, typer.Option(help="KD temperature T")] = 4.0,
    alpha: Annotated[float, typer.Option(help="Weight of the KD term against cross-entropy")] = 0.9,
    feature_kd: Annotated[bool, typer.Option("--feature-kd", help="Add FitNets hints on stage outputs")] = False,
    views: Annotated[int, typer.Option(min=1, help="Augmented copies of each training image")] = 2,
    precision: Annotated[
        str,
        typer.Option(help="fp32, or bf16: bfloat16 autocast for the training steps (fast on AVX512-BF16 CPUs, GPUs)"),
    ] = "fp32",
    seed: Annotated[int, typer.Option(help="Training seed (batch order, adapters)")] = 0,
    split_seed: Annotated[int, typer.Option(help="Seed of the train/validation split")] = 0,
    input_size: Annotated[
        int | None,
        typer.Option(help="Input resolution (default: the checkpoint's, from a `teach` sidecar; else the teacher's)"),
    ] = None,
    device: DeviceOpt = "auto",
    cache_dir: Annotated[
        Path | None,
        typer.Option(help="Teacher-output cache (default $STRUCTSEARCH_CACHE, else $STRUCTSEARCH_HOME/cache)"),
    ] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Keep teacher outputs in memory only")] = False,
    format: FormatOpt = Format.table,
) -> None:
    """Score one student by a short knowledge-distillation run against the teacher.

    The student is, in order of precedence: --student-spec (a reduced teacher that inherits its
    weights), --student-model (another model, from scratch, distilled from logits only), or by
    default the teacher with every block's internal width at --width (0.5: about half its MACs).
    """

    from structsearch.cost import measure_cost
    from structsearch.data import DataSpec, Preprocess, load_data, train_val_rows
    from structsearch.distill import Distiller, TeacherCache, TeacherId
    from structsearch.distill.synthesis import SynthesisConfig, synthesize_spec
    from structsearch.distill.taps import check_feature_pair
    from structsearch.errors import DataError, StructsearchError
    from structsearch.models import create_model
    from structsearch.teach.run import input_side

    if student_spec is not None and student_model is not None:
        raise StructsearchError("give --student-spec or --student-model, not both")
    config = _proxy_config(
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        optimizer=optimizer,
        temperature=temperature,
        alpha=alpha,
        feature_kd=feature_kd,
        views=views,
        precision=precision,
        seed=seed,
        device=device,
    )
    # every input (models, checkpoint, data, labels, student) is checked before training starts
    teacher_kwargs = parse_kwargs(kw)
    net = create_model(teacher, checkpoint=checkpoint, **teacher_kwargs).eval()
    student, described = _student(net, teacher, teacher_kwargs, student_spec, student_model, student_kw, width)
    if config.feature_kd:
        check_feature_pair(net, student)
    preprocess = Preprocess.from_model(net, input_side(input_size, checkpoint))
    teacher_id = TeacherId.of(teacher, teacher_kwargs, checkpoint)
    cache = None if no_cache else TeacherCache(cache_dir)
    source = DataSpec.parse(data)
    if source.synthesis is not None and checkpoint is None:
        raise DataError(f"--data {data} is synthesised from the teacher's trained weights; give its --checkpoint")
    # synthetic data without --val-data: validation is carved from the synthetic set, whose
    # labels are the teacher's predictions, so the score is agreement with the teacher
    train = (
        load_data(source)
        if source.synthesis is None
        else synthesize_spec(
            net,
            preprocess,
            source.synthesis,
            device=config.device,
            teacher_id=teacher_id,
            cache=cache,
            config=SynthesisConfig(precision=config.precision),
        ).data
    )
    val = train if val_data is None else load_data(val_data)
    val_rows = None if val_data is None else len(val)
    train_idx, val_idx = train_val_rows(train.y, val_rows, val_size, split_seed, train_size)

    size = (3, *preprocess.input_size)
    teacher_cost, student_cost = measure_cost(net, size), measure_cost(student, size)
    distiller = Distiller(
        net, train, train_idx, val_idx, preprocess, config, val_data=val, teacher_id=teacher_id, cache=cache
    )
    result = {
        "teacher": teacher,
        "student": described,
        **{k: v for k, v in asdict(distiller.score(student)).items() if k != "history"},
        "macs": student_cost.macs,
        "params": student_cost.params,
        "teacher_macs": teacher_cost.macs,
        "macs_ratio": student_cost.macs / teacher_cost.macs,
        "train_images": len(train_idx),
        "val_images": len(val_idx),
    }
    if format is Format.json:
        print_json(result)
        return
    say(
        f"student {result['student']}: val top-1 [bold]{result['val_top1']:.2f}%[/], "
        f"teacher agreement {100 * result['teacher_agreement']:.1f}%, {result['steps']} steps in "
        f"{result['seconds']:.1f} s ({result['train_images_per_s']:.0f} train images/s); "
        f"{result['macs']:,} MACs ({100 * result['macs_ratio']:.1f}% of the teacher), {result['params']:,} params"
    )


def _proxy_config(**fields: Any) -> Any:
    """The settings a study's ``proxy`` section also has are validated by that section's Pydantic model."""
    from pydantic import ValidationError

    from structsearch.distill import ProxyConfig, ProxyConfigError
    from structsearch.search.spec import ProxySection

    shared = {k: fields.pop(k) for k in ProxySection.model_fields if k in fields}
    try:
        section = ProxySection(**{k: v for k, v in shared.items() if v is not None})
    except ValidationError as e:
        err = e.errors()[0]
        raise ProxyConfigError(f"{'.'.join(map(str, err['loc']))}: {err['msg']}") from None
    return ProxyConfig(**section.model_dump(exclude_none=True), **fields)


def _student(
    teacher: Any,
    teacher_name: str,
    teacher_kwargs: dict[str, Any],
    spec_path: Path | None,
    student_model: str | None,
    student_kw: list[str] | None,
    width: float,
) -> tuple[Any, str]:
    """The student to score and how to describe it: another model from scratch, the teacher
    reduced by ``--student-spec``, or the teacher at a uniform ``--width``."""
    from structsearch.distill import uniform_width_spec
    from structsearch.errors import SpecError
    from structsearch.models import create_model
    from structsearch.space import ArchSpec, space_of
    from structsearch.surgery import build_student
    from structsearch.train import num_classes_of

    if student_model is not None:
        kwargs = {"num_classes": num_classes_of(teacher) or 1000, **parse_kwargs(student_kw)}
        return create_model(student_model, **kwargs), f"{student_model} (from scratch)"
    if spec_path is not None:
        spec = ArchSpec.load(spec_path)
        if spec.model != teacher_name or spec.kwargs != teacher_kwargs:
            raise SpecError(
                f"--student-spec is for {spec.model} {spec.kwargs} but the teacher is {teacher_name} {teacher_kwargs}; "
                "a spec reduces its own teacher (use --student-model for another model)"
            )
        return build_student(teacher, spec), str(spec_path)
    spec = uniform_width_spec(space_of(teacher, teacher_name, teacher_kwargs), width)
    return build_student(teacher, spec), f"{teacher_name} at width {width:g}"
