"""``housegan generate``: reproducible images of a city x image type from a trained model."""

from __future__ import annotations

import argparse
from pathlib import Path

from housegan.cli import UserError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "generate",
        help="generate images of a city and image type from a trained generator",
        description="Same model, seed and device -> byte-identical images.",
    )
    parser.add_argument(
        "--model",
        required=True,
        help="a model folder (g_ema.safetensors + model.json, e.g. `train --out`) or an MLflow "
        "model URI such as models:/housegan-cgan@champion or models:/housegan-cgan/3",
    )
    parser.add_argument("--city", required=True)
    parser.add_argument("--image-type", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n", type=int, default=1, help="how many images (default 1)")
    parser.add_argument(
        "--out", required=True, help="a folder (one PNG per image) or a FILE.png (one grid)"
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.n < 1:
        raise UserError(f"--n must be at least 1, got {args.n}")
    from tqdm import tqdm

    from housegan.gan import serving

    model = _load(args.model, args.device)
    with tqdm(total=args.n, unit="img", desc="generate") as bar:
        try:
            images = serving.generate(
                model, args.city, args.image_type, args.seed, args.n, progress=bar.update
            )
        except serving.UnknownLabelError as exc:
            raise UserError(str(exc)) from exc
    paths = serving.save_images(images, args.out, stem=f"{args.city}-{args.image_type}-{args.seed}")
    target = paths[0] if len(paths) == 1 else args.out
    print(f"wrote {len(images)} image(s) of {args.city} x {args.image_type} to {target}")
    return 0


def _load(model: str, device: str):
    from housegan.gan import serving

    if not _is_mlflow_uri(model):
        try:
            return serving.load_generator(model, device=device)
        except FileNotFoundError as exc:
            raise UserError(f"{exc}; pass a `train --out` folder or models:/NAME@ALIAS") from exc
    from mlflow.exceptions import MlflowException

    from housegan import tracking
    from housegan.config import get_settings

    try:
        return tracking.load_generator_model(model, get_settings().mlflow_tracking_uri, device)
    except MlflowException as exc:
        raise UserError(f"cannot load {model}: {exc.message}") from exc


def _is_mlflow_uri(model: str) -> bool:
    """models:/NAME@ALIAS, models:/NAME/V, runs:/ID/PATH, s3://... (not a local folder)."""
    scheme = model.split(":", 1)[0] if ":" in model else ""
    return (
        scheme.isidentifier() and len(scheme) > 1 and scheme != "file" and not Path(model).exists()
    )
