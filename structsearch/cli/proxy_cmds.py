"""``structsearch eval | proxy``: a model's accuracy, and one short-distillation score of a student."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from structsearch.cli._common import Format, FormatOpt, KwOpt, console, parse_kwargs, print_json, run_guarded

CheckpointOpt = Annotated[Path | None, typer.Option(help="Local checkpoint (state dict) to load")]
DeviceOpt = Annotated[str, typer.Option(help="cpu, cuda, cuda:N or auto (CUDA when available)")]


def evaluate(
    model: Annotated[str, typer.Option("--model", help="timm model name, e.g. cifar_resnet56")],
    data: Annotated[str, typer.Option("--data", help="Data source, e.g. npz:../shared/data/cifar10/test.npz[:2000]")],
    checkpoint: CheckpointOpt = None,
    kw: KwOpt = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per forward pass")] = 256,
    input_size: Annotated[int | None, typer.Option(help="Input resolution (default: the model's)")] = None,
    device: DeviceOpt = "auto",
    format: FormatOpt = Format.table,
) -> None:
    """Top-1 accuracy of a model on a labelled data source, with the model's own preprocessing."""

    def body() -> None:
        from structsearch.data import Preprocess, check_labels, load_data
        from structsearch.distill import resolve_device, top1
        from structsearch.models import create_model
        from structsearch.train import num_classes_of

        dev = resolve_device(device)
        net = create_model(model, checkpoint=checkpoint, **parse_kwargs(kw)).eval()
        loaded = load_data(data)
        classes = num_classes_of(net)
        if classes is not None:
            check_labels(loaded, classes)
        acc = top1(net, loaded.x, loaded.y, Preprocess.from_model(net, input_size), batch_size, dev)
        result = {
            "model": model,
            "checkpoint": str(checkpoint) if checkpoint else None,
            "data": loaded.source,
            "images": len(loaded),
            "top1": round(acc, 2),
        }
        if format is Format.json:
            print_json(result)
        else:
            console.print(
                f"{model}: top-1 [bold]{acc:.2f}%[/] on {len(loaded)} images of {loaded.source}",
                highlight=False,
                soft_wrap=True,
            )

    run_guarded(body)


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
    seed: Annotated[int, typer.Option(help="Training seed (batch order, adapters)")] = 0,
    split_seed: Annotated[int, typer.Option(help="Seed of the train/validation split")] = 0,
    input_size: Annotated[int | None, typer.Option(help="Input resolution (default: the teacher's)")] = None,
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

    def body() -> None:
        from structsearch.errors import StructsearchError

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
            seed=seed,
            device=device,
        )
        result = _run_proxy(
            teacher,
            checkpoint,
            parse_kwargs(kw),
            student_spec,
            student_model,
            parse_kwargs(student_kw),
            width,
            data,
            val_data,
            val_size,
            train_size,
            split_seed,
            input_size,
            config,
            None if no_cache else cache_dir,
            no_cache,
        )
        if format is Format.json:
            print_json(result)
            return
        console.print(
            f"student {result['student']}: val top-1 [bold]{result['val_top1']:.2f}%[/], "
            f"teacher agreement {100 * result['teacher_agreement']:.1f}%, {result['steps']} steps in "
            f"{result['seconds']:.1f} s ({result['train_images_per_s']:.0f} train images/s); "
            f"{result['macs']:,} MACs ({100 * result['macs_ratio']:.1f}% of the teacher), {result['params']:,} params",
            highlight=False,
            soft_wrap=True,
        )

    run_guarded(body)


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


def _run_proxy(
    teacher_name: str,
    checkpoint: Path | None,
    teacher_kwargs: dict[str, Any],
    spec_path: Path | None,
    student_model: str | None,
    student_kwargs: dict[str, Any],
    width: float,
    data_source: str,
    val_source: str | None,
    val_size: int,
    train_size: int | None,
    split_seed: int,
    input_size: int | None,
    config: Any,
    cache_dir: Path | None,
    no_cache: bool,
) -> dict[str, Any]:
    """Every input is checked (models, checkpoint, data, labels, student) before training starts."""
    import torch

    from structsearch.cost import measure_cost
    from structsearch.data import Preprocess, load_data, split_train_val
    from structsearch.distill import Distiller, TeacherCache, TeacherId, uniform_width_spec
    from structsearch.distill.taps import check_feature_pair
    from structsearch.errors import SpecError
    from structsearch.models import create_model
    from structsearch.space import ArchSpec, space_of
    from structsearch.surgery import build_student
    from structsearch.train import num_classes_of

    teacher = create_model(teacher_name, checkpoint=checkpoint, **teacher_kwargs).eval()
    if student_model is not None:
        kwargs = {"num_classes": num_classes_of(teacher) or 1000, **student_kwargs}
        student = create_model(student_model, **kwargs)
        described = f"{student_model} (from scratch)"
    else:
        if spec_path is not None:
            spec = ArchSpec.load(spec_path)
            if spec.model != teacher_name or spec.kwargs != teacher_kwargs:
                raise SpecError(
                    f"--student-spec is for {spec.model} {spec.kwargs} but the teacher is {teacher_name} {teacher_kwargs}; "
                    "a spec reduces its own teacher (use --student-model for another model)"
                )
            described = str(spec_path)
        else:
            spec = uniform_width_spec(space_of(teacher, teacher_name, teacher_kwargs), width)
            described = f"{teacher_name} at width {width:g}"
        student = build_student(teacher, spec)
    if config.feature_kd:
        check_feature_pair(teacher, student)

    preprocess = Preprocess.from_model(teacher, input_size)
    train = _train_data(
        data_source, teacher_name, checkpoint, teacher_kwargs, teacher, preprocess, config, cache_dir, no_cache
    )
    if val_source is not None:
        val = load_data(val_source)
        train_idx = torch.arange(len(train))
        if train_size is not None and train_size < len(train):
            train_idx, _ = split_train_val(train.y, 1, split_seed, train_size)
        val_idx = torch.arange(len(val))
    else:
        val = train
        train_idx, val_idx = split_train_val(train.y, val_size, split_seed, train_size)

    size = (3, *preprocess.input_size)
    teacher_cost, student_cost = measure_cost(teacher, size), measure_cost(student, size)
    distiller = Distiller(
        teacher,
        train,
        train_idx,
        val_idx,
        preprocess,
        config,
        val_data=val,
        teacher_id=TeacherId.of(teacher_name, teacher_kwargs, checkpoint),
        cache=None if no_cache else TeacherCache(cache_dir),
    )
    result = distiller.score(student)
    return {
        "teacher": teacher_name,
        "student": described,
        **{k: v for k, v in result.to_dict().items() if k != "history"},
        "macs": student_cost.macs,
        "params": student_cost.params,
        "teacher_macs": teacher_cost.macs,
        "macs_ratio": student_cost.macs / teacher_cost.macs,
        "train_images": len(train_idx),
        "val_images": len(val_idx),
    }


def _train_data(
    source: str,
    teacher_name: str,
    checkpoint: Path | None,
    teacher_kwargs: dict[str, Any],
    teacher: Any,
    preprocess: Any,
    config: Any,
    cache_dir: Path | None,
    no_cache: bool,
) -> Any:
    """``--data`` loaded from files, or ``synthetic:N?...`` synthesised from the teacher (cached like its outputs).

    With synthetic data and no ``--val-data`` the validation rows are carved from the synthetic set,
    whose labels are the teacher's predictions: the score is then agreement with the teacher.
    """
    from structsearch.data import DataSpec, load_data
    from structsearch.distill import TeacherCache, TeacherId
    from structsearch.distill.synthesis import synthesize_spec
    from structsearch.errors import DataError

    spec = DataSpec.parse(source)
    if spec.synthesis is None:
        return load_data(spec)
    if checkpoint is None:
        raise DataError(f"--data {source} is synthesised from the teacher's trained weights; give its --checkpoint")
    return synthesize_spec(
        teacher,
        preprocess,
        spec.synthesis,
        device=config.device,
        teacher_id=TeacherId.of(teacher_name, teacher_kwargs, checkpoint),
        cache=None if no_cache else TeacherCache(cache_dir),
    ).data
