"""`ldct-node train` and `ldct-node evaluate` as typer-compatible command functions.

Registered in the main CLI (dicom_node.admin.cli) as `app.command("train")(train_command)` and
`app.command("evaluate")(evaluate_command)`.
"""

from __future__ import annotations

from pathlib import Path

import typer


def train_command(
    config: Path | None = typer.Option(None, "--config", help="TOML file: data sources and training settings"),
    out: Path = typer.Option(
        Path("runs/train/ldct-unet-custom.pt"),
        "--out",
        help="where to write the trained weights (+ SHA256SUMS beside them); never a shipped set unless named",
    ),
    steps: int | None = typer.Option(None, "--steps", help="override [train] steps"),
    seed: int = typer.Option(0, "--seed", help="random seed (data synthesis, sampling, init)"),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda"),
    resume: bool = typer.Option(False, "--resume", help="continue from the checkpoint if present"),
    checkpoint: Path = typer.Option(Path("runs/train/checkpoint.pt"), "--checkpoint", help="checkpoint file"),
    init_weights: Path | None = typer.Option(None, "--init-weights", help="fine-tune from these weights"),
    version: str = typer.Option("custom", "--version", help="version string stored in the weights"),
    rebuild_cache: bool = typer.Option(False, "--rebuild-cache", help="rebuild the training cache"),
    time_budget_min: float | None = typer.Option(
        None, "--time-budget-min", help="stop after this many minutes, the LR schedule compressed to fit (shared CPUs)"
    ),
    exclude_slices: str | None = typer.Option(
        None,
        "--exclude-slices",
        help="labelled slices to leave out, by file stem (e.g. 0,1,2: a cross-validation fold)",
    ),
) -> None:
    """Train the CNN on real anatomy with synthetic lesions (and a site's labelled studies)."""
    import torch
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from inference.training.cache import TrainingDataError
    from inference.training.config import load_config, training_entries, weights_metadata
    from inference.training.loop import save_weights, train

    console = Console()
    try:
        data, train_config = load_config(config)
    except TrainingDataError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    train_config.seed = seed
    if steps is not None:
        train_config.steps = steps
    if time_budget_min is not None:
        train_config.time_budget_s = time_budget_min * 60.0
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        torch.set_num_threads(max(1, min(torch.get_num_threads(), 8)))
    exclude = tuple(f"slice-{name}" for name in exclude_slices.split(",") if name) if exclude_slices else ()
    try:
        entries = training_entries(data, seed, rebuild_cache, exclude)
    except (TrainingDataError, OSError, ValueError) as exc:
        console.print(f"[red]error:[/red] training data: {exc}")
        raise typer.Exit(2) from exc
    with Progress(
        TextColumn("training"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TimeRemainingColumn(),
        console=console,
    ) as bar:
        task = bar.add_task("train", total=train_config.steps, loss=float("nan"))

        def on_step(step: int, loss: float) -> None:
            bar.update(task, completed=step, loss=loss)

        try:
            model, losses = train(
                entries,
                train_config,
                checkpoint,
                device=device,
                resume=resume,
                on_step=on_step,
                init_weights=init_weights,
            )
        except RuntimeError as exc:
            console.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(2) from exc
    save_weights(model, out, version, weights_metadata(data, seed, losses, exclude))
    console.print(f"weights written to {out} (checksum in {out.parent / 'SHA256SUMS'})")


def evaluate_command(
    images: Path | None = typer.Option(None, "--images", help="image mode: folder of 8-bit images"),
    labels: Path | None = typer.Option(None, "--labels", help="image mode: folder of PNG label maps"),
    window: str | None = typer.Option(
        None, "--window", help="CENTER,WIDTH of the 8-bit export; estimated from anatomy if omitted"
    ),
    label_values: str = typer.Option(
        "ggo=1,consolidation=2",
        "--label-values",
        help="values in the reference labels, e.g. ggo=1,consolidation=2[,lung=3]",
    ),
    series: list[Path] | None = typer.Option(None, "--series", help="volume mode: DICOM series folder (repeatable)"),
    references: Path | None = typer.Option(
        None, "--references", help="volume mode: folder with <series>.dcm (SEG) or <series>.nii[.gz]"
    ),
    synthetic_lesions: int = typer.Option(
        0,
        "--synthetic-lesions",
        help="volume mode: insert this many synthetic lesion variants per series as the reference",
    ),
    seed: int = typer.Option(0, "--seed", help="seed for --synthetic-lesions"),
    json_path: Path | None = typer.Option(None, "--json", help="write the results as JSON here"),
    bland_altman: Path | None = typer.Option(
        None, "--bland-altman", help="volume mode: Bland-Altman PNG path (default next to --json)"
    ),
    engine: str = typer.Option("cnn", "--engine", help="cnn or threshold"),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda"),
    weights: str | None = typer.Option(
        None, "--weights", help="CNN weight set (open, noncommercial) or weights file (default: the shipped default)"
    ),
) -> None:
    """Agreement (Dice, volumes, extents) of an engine with reference labels."""
    from rich.console import Console

    from inference.evaluate import (
        EvaluationError,
        bland_altman_png,
        evaluate_images,
        evaluate_volumes,
        parse_label_values,
        parse_window,
        render_table,
        write_json,
    )

    console = Console()
    try:
        values = parse_label_values(label_values)
        if engine == "cnn":
            from inference.engines import Engine, weights_path
            from inference.engines.cnn import CNNEngine

            segmenter: Engine = CNNEngine(device=device, weights_path=weights_path(weights))
        else:
            from inference.engines import get_engine

            segmenter = get_engine(engine, device)
        if images is not None or labels is not None:
            if images is None or labels is None or series:
                raise EvaluationError("image mode needs --images and --labels (and no --series)")
            result = evaluate_images(segmenter, images, labels, values, parse_window(window) if window else None)
        elif series:
            result = evaluate_volumes(segmenter, list(series), references, values, synthetic_lesions, seed)
            plot = bland_altman or (json_path.with_suffix(".bland-altman.png") if json_path else None)
            if plot is not None:
                bland_altman_png(result, plot)
                result["bland_altman_png"] = str(plot)
        else:
            raise EvaluationError("give --images and --labels (image mode) or --series (volume mode)")
    except (EvaluationError, ValueError, RuntimeError, OSError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    result["engine"] = {"name": segmenter.name, "version": segmenter.version}
    console.print(render_table(result))
    if json_path is not None:
        write_json(result, json_path)
        console.print(f"JSON written to {json_path}")
