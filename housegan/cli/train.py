"""``housegan train``: pack a manifest's rows, train the conditional GAN, log and register it."""

from __future__ import annotations

import argparse
from typing import Any

from housegan.cli import UserError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train the conditional GAN on a manifest (uri, city, image_type)",
        description="Rows with keep == False or status != 'ok' are left out when those columns "
        "exist. Other knobs (width, lr, precision, ...) come from the `gan` config section.",
    )
    parser.add_argument(
        "--manifest", required=True, help="a Parquet manifest file or a published collection"
    )
    parser.add_argument("--image-size", type=int, choices=(32, 64, 128), help="R (default 64)")
    parser.add_argument("--kimg", type=float, help="budget in thousands of images shown")
    parser.add_argument("--max-minutes", type=float, help="wall-clock budget of training")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--device", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--seed", type=int)
    parser.add_argument(
        "--resume", action="store_true", help="continue from DIR's newest checkpoint and run"
    )
    parser.add_argument(
        "--out", required=True, help="run folder: checkpoints/ and the model `generate` loads"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from housegan.config import get_settings
    from housegan.gan.train import TrainingDiverged, TrainingInterrupted
    from housegan.steps.train import GanOverrides, run_train

    settings = get_settings()
    overrides = GanOverrides(
        image_size=args.image_size,
        kimg=args.kimg,
        max_minutes=args.max_minutes,
        batch_size=args.batch_size,
        device=args.device,
        seed=args.seed,
    )
    try:
        stage = run_train(
            args.manifest,
            settings,
            overrides=overrides,
            out_dir=args.out,
            resume=args.resume,
            storage_options=settings.storage_options(),
            progress=True,
            reporter=ProgressReporter,
        )
    except FileNotFoundError as exc:
        raise UserError(f"manifest not found: {args.manifest} ({exc})") from exc
    except (TrainingDiverged, ValueError) as exc:  # bad options, no trainable rows, ...
        raise UserError(str(exc)) from exc
    except TrainingInterrupted as exc:  # e.g. a spot notice: checkpointed, resumable
        raise UserError(f"{exc}; continue with --resume --out {args.out}") from exc
    dataset, model = stage.dataset, stage.model
    print(
        f"dataset {dataset.dataset_id}: {dataset.n} images, cities {dataset.cities}, "
        f"types {dataset.image_types}"
        + (f", {dataset.skipped} unreadable" if dataset.skipped else "")
    )
    print(f"trained {model.step} steps, {model.kimg:.3f} kimg, {model.images_per_second:.1f} img/s")
    print(f"mlflow run {model.run_id} in {settings.mlflow_tracking_uri}")
    print(f"sample grids: {model.samples_uri}/samples+step+<N>+*.png")
    print(f"model {model.model_uri}; folder {model.out_dir}")
    print(
        f"try: housegan generate --model {args.out} --city {dataset.cities[0]} "
        f"--image-type {dataset.image_types[0]} --seed 0 --n 16 --out samples.png"
    )
    return 0


class ProgressReporter:
    """Moves a tqdm bar (in kimg) and shows the latest losses and speed."""

    def __init__(self, bar: Any) -> None:
        self.bar = bar

    def params(self, params: dict[str, Any]) -> None:
        pass

    def metrics(self, metrics: dict[str, float], step: int) -> None:
        if "progress/kimg" in metrics:
            self.bar.update(round(metrics["progress/kimg"] - self.bar.n, 3))
        shown = {"g": "loss/g", "d": "loss/d", "img/s": "speed/img_per_s"}
        self.bar.set_postfix(
            {label: f"{metrics[key]:.3g}" for label, key in shown.items() if key in metrics},
            refresh=True,
        )

    def image(self, name: str, image: Any, step: int) -> None:
        pass
