"""Does the GAN recipe learn what it is asked to draw, in a fixed CPU budget, on real data?

For each image set (``housegan.testing.realsets``: handwritten digits, crops of ten real
photographs, the synthetic listings) and each recipe (``before``: the defaults up to
2026-12-02; ``ac-gan``: those of 2026-12-07 morning, AC-GAN classifiers without twins;
``twins``: with twin classifiers and standing statistics, no mode seeking; ``defaults``:
``GanSettings()`` now), it packs the set at R, trains for
``--minutes`` of wall time on this machine, evaluates the EMA generator with
``housegan.evaluate`` (the project's evaluation: random-init VGG16 features, as in tests) and
prints one row:

- ``cond``: accuracy of a classifier trained on real features on the generated images
  (``cond_acc_city``: the class), beside ``ceiling``, the same classifier on held-out real;
- ``KID`` against the real images; ``div``: within-class diversity over real's (1 = as varied);
- ``copy``: share of generated images closer to a training image than 99% of held-out real.

The JSON rows also hold ``diversity_by_class`` and ``cond_by_class``, to see which classes
hold a mean down.

The final sample grid of every run is written beside the JSON (``--out``), to be looked at.
``--raw-g`` also evaluates the run's raw G (its newest checkpoint, G's own batch-norm
statistics): is a missing mode G's, or lost in its EMA?

    python benchmarks/bench_recipe.py                       # all sets, all recipes, 8 min each
    python benchmarks/bench_recipe.py --sets digits --recipes defaults --minutes 2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import yaml

from housegan.config import EmbedSettings, EvaluateSettings, GanSettings
from housegan.evaluate.evaluation import ModelEvaluation, evaluate_model
from housegan.evaluate.sampling import generator_source
from housegan.gan import checkpoint, serving
from housegan.gan.data import PackedDataset, load_packed, prepare
from housegan.gan.models import Generator
from housegan.gan.train import train
from housegan.testing.gan import ListReporter
from housegan.testing.realsets import SETS, write_set

# The shipped defaults before issue 9 (what `GanSettings()` gave on 2026-12-02).
BEFORE: dict[str, Any] = {
    "batch_size": 64,
    "width": 32,
    "g_lr": 1e-4,
    "d_lr": 4e-4,
    "d_steps": 1,
    "diffaugment": "translation,color,cutout",
    "ada_target": None,
    "class_weight": 0.0,
    "class_twin": False,
    "minibatch_std": 0,
    "mode_seeking": 0.0,
    "ema_kimg": 10.0,
    "ema_standing_images": 0,
}
# The defaults of 2026-12-07 morning: AC-GAN classifiers without their twins, G's BN statistics.
AC_GAN: dict[str, Any] = {"class_twin": False, "ema_standing_images": 0, "mode_seeking": 0.0}
# Early afternoon: the twins and standing statistics added, no mode seeking yet.
TWINS: dict[str, Any] = {"mode_seeking": 0.0}
RECIPES: dict[str, dict[str, Any]] = {
    "before": BEFORE,
    "ac-gan": AC_GAN,
    "twins": TWINS,
    "defaults": {},
}
# What each set's images allow, whatever the recipe (StyleGAN's per-dataset --mirror): a
# mirrored digit is another glyph (a mirrored 3 is no 3), a mirrored house is a house.
SET_DATA: dict[str, dict[str, Any]] = {"digits": {"xflip": False}}
SET_SIZES: dict[str, dict[str, Any]] = {
    "digits": {},
    "photo_crops": {"per_class": 300},
    "listings": {"per_class": 200, "cities": 4},
}


def run_one(
    name: str, recipe: str, dataset_uri: str, out: Path, args: argparse.Namespace
) -> dict[str, Any]:
    base = GanSettings(
        image_size=args.size,
        kimg=args.kimg or 10_000,
        max_minutes=None if args.kimg else args.minutes,
        device=args.device,
        cpu_threads=args.threads,
        log_every=50,
        snapshot_every=10**9,
        checkpoint_every_minutes=10**6,
        grid_per_class=8,
        seed=args.seed,
    )
    # model_validate, not with_overrides: a recipe may set a field to None (ADA off)
    data = SET_DATA.get(name, {})
    cfg = GanSettings.model_validate({**base.model_dump(), **data, **RECIPES[recipe]})
    keeper = ListReporter()
    run_dir = out / f"{name}-{recipe}"
    shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run, never a resume
    started = time.monotonic()
    result = train(dataset_uri, run_dir.as_uri(), cfg, reporter=keeper)
    seconds = time.monotonic() - started
    if keeper.images:
        keeper.images[-1][1].save(out / f"{name}-{recipe}-grid.png")
    model = serving.load_generator(run_dir, args.device)
    data = load_packed(dataset_uri)  # read once, for G_ema and the raw G alike
    evaluation = _evaluate(model, data, args, out / f"{name}-{recipe}-figures")
    m = evaluation.metrics
    raw_g = _evaluate(_raw_g(run_dir, model), data, args) if args.raw_g else None
    return {
        "set": name,
        "recipe": recipe,
        "kimg": round(result.kimg, 1),
        "steps": result.step,
        "minutes": round(seconds / 60, 2),
        "img_per_s": round(result.images_per_second, 1),
        "cond": m.get("cond_acc_city"),
        "cond_type": m.get("cond_acc_type"),
        "ceiling": m.get("cond_real_acc_city"),
        "kid": m.get("kid"),
        "diversity": m.get("diversity"),
        "diversity_min": m.get("diversity_min"),
        "copy_rate": m.get("copy_rate"),
        # per class, to see which classes hold the means down
        "diversity_by_class": _by_class(evaluation.cells, "diversity"),
        "cond_by_class": _by_class(evaluation.cells, "cond_acc_city"),
        "ada_p": ada[-1][1] if (ada := keeper.series("augment/p")) else None,
        **({"raw_g": _headline(raw_g)} if raw_g is not None else {}),
        "settings": {k: v for k, v in cfg.model_dump(mode="json").items() if k in RECIPE_KEYS},
    }


def _evaluate(
    model: serving.LoadedGenerator,
    data: PackedDataset,
    args: argparse.Namespace,
    figures: Path | None = None,
) -> ModelEvaluation:
    return evaluate_model(
        generator_source(model),
        model.vocab,
        data,
        EmbedSettings(
            weights="none", layer="conv5", input_size=args.embed_size, device=args.device
        ),
        EvaluateSettings(samples_per_cell=args.samples, device=args.device, kid_subsets=50),
        figures_dir=figures,
    )


def _raw_g(run_dir: Path, ema: serving.LoadedGenerator) -> serving.LoadedGenerator:
    """The newest checkpoint's G, with the running batch-norm statistics it trained with."""
    state = checkpoint.load(checkpoint.latest(str(run_dir)))
    generator = Generator(ema.spec)
    generator.load_state_dict(state["G"])
    generator.to(ema.device).eval().requires_grad_(False)
    return dataclasses.replace(ema, generator=generator)


def _headline(evaluation: ModelEvaluation) -> dict[str, Any]:
    m = evaluation.metrics
    keys = ("cond_acc_city", "kid", "diversity", "diversity_min", "copy_rate")
    return {
        **{key: m.get(key) for key in keys},
        "diversity_by_class": _by_class(evaluation.cells, "diversity"),
    }


def _by_class(cells: pd.DataFrame, column: str) -> dict[str, float | None]:
    """``{"city/type": value}``; a cell without a value (NaN in the float column) is None."""
    keys = cells["city"] + "/" + cells["image_type"]
    return {
        key: None if pd.isna(value) else round(float(value), 3)
        for key, value in zip(keys, cells[column], strict=True)
    }


RECIPE_KEYS = (*BEFORE, "image_size", "ada_kimg", "ema_rampup", "xflip", "cond_ramp")


def fmt(value: Any, digits: int = 3) -> str:
    return (
        "-" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    parser.add_argument("--recipes", nargs="*", default=list(RECIPES), choices=[*RECIPES, "custom"])
    parser.add_argument("--minutes", type=float, default=8.0, help="training wall time per run")
    parser.add_argument("--kimg", type=float, default=None, help="a kimg budget instead")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, ...")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--samples", type=int, default=100, help="generated images per class")
    parser.add_argument("--embed-size", type=int, default=64, help="VGG16 input side")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--raw-g", action="store_true", help="also evaluate the raw G")
    parser.add_argument(
        "--try",
        dest="custom",
        nargs="*",
        default=None,
        metavar="KEY=VALUE",
        help="also run recipe 'custom': the defaults with these GanSettings overrides",
    )
    parser.add_argument("--out", type=Path, default=Path(".housegan/bench-recipe"))
    args = parser.parse_args()
    if args.custom is not None:
        pairs = (item.split("=", 1) for item in args.custom)  # values as YAML: 0.2, [0.1, 0.4]
        RECIPES["custom"] = {key: yaml.safe_load(value) for key, value in pairs}
        args.recipes = [*args.recipes, "custom"] if "custom" not in args.recipes else args.recipes
    torch.set_num_threads(args.threads)
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    header = "set          recipe    kimg  cond  ceiling  type   KID     div   copy   ada_p"
    for name in args.sets:
        root = args.out / "data" / name
        manifest = root / f"{name}.parquet"
        if not manifest.exists():
            write_set(name, root, **SET_SIZES[name])
        dataset_uri = prepare(str(manifest), (root / "store").as_uri(), args.size).uri
        for recipe in args.recipes:
            row = run_one(name, recipe, dataset_uri, args.out, args)
            rows.append(row)
            print(header)
            print(
                f"{name:12s} {recipe:8s} {row['kimg']:5.1f} {fmt(row['cond'], 2):5s} "
                f"{fmt(row['ceiling'], 2):8s} {fmt(row['cond_type'], 2):5s} "
                f"{fmt(row['kid'], 4):7s} {fmt(row['diversity'], 2):5s} "
                f"{fmt(row['copy_rate'], 2):6s} {fmt(row['ada_p'], 2)}",
                flush=True,
            )
            (args.out / "results.json").write_text(json.dumps(rows, indent=2))
    print(f"\nrows and grids in {args.out}")


if __name__ == "__main__":
    main()
