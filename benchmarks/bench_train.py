"""GAN training throughput: img/s of the real loop, FLOPs per image and time outside the model.

For each image size R (and each precision / compile setting asked for) it prints:

- ``loop img/s``: real images per second of ``housegan.gan.train.train`` in steady state (the
  median of its own ``speed/img_per_s`` reports after the first, i.e. after warm-up/compile);
- ``bare img/s``: the same networks, optimizers and batch doing only the G and D forward and
  backward passes and optimizer steps on a fixed batch (no sampling, flips, DiffAugment, EMA,
  statistics, logging or checkpoints);
- ``outside``: the share of loop wall time spent outside model compute, ``1 - loop / bare``
  (target < 10%); ``end-to-end`` adds set-up, data loading, compile warm-up, the final
  checkpoint and the model export of the whole ``train()`` call;
- ``GFLOP/img``: FLOPs of one training step (G and D, forward and backward, as the loop runs
  them) counted by ``torch.utils.flop_counter.FlopCounterMode``, per real image;
- ``TFLOP/s`` and ``% peak``: ``GFLOP/img x img/s`` and its share of ``--peak-tflops``.

CPU (this machine):  python benchmarks/bench_train.py
GPU:                 python benchmarks/bench_train.py --device cuda --sizes 64 128 \
                         --precision bf16 fp32 --compile off on --batch-size 256 --steps 200 \
                         --log-every 25 --peak-tflops 989   (or benchmarks/gpu_train.sh)
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from housegan.config import GanSettings
from housegan.gan import loss as losses
from housegan.gan.data import prepare
from housegan.gan.train import Trainer

H200_DENSE_BF16_TFLOPS = 989.0


class SpeedRecorder:
    """A Reporter keeping the loop's img/s reports."""

    def __init__(self) -> None:
        self.speeds: list[float] = []

    def params(self, params: dict[str, Any]) -> None:
        pass

    def metrics(self, metrics: dict[str, float], step: int) -> None:
        if "speed/img_per_s" in metrics:
            self.speeds.append(metrics["speed/img_per_s"])

    def image(self, name: str, image: Image.Image, step: int) -> None:
        pass


def make_dataset(root: Path, size: int, n: int, cities: int = 4, types: int = 2) -> str:
    """``n`` smooth random photos (PNG) with labels, packed by the real ``prepare``."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        coarse = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        path = root / "photos" / f"{i:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(coarse).resize((size, size), Image.Resampling.BILINEAR).save(path)
        rows.append({"uri": path.as_uri(), "city": f"c{i % cities}", "image_type": f"t{i % types}"})
    manifest = root / f"manifest-{size}.parquet"
    pd.DataFrame(rows).to_parquet(manifest)
    return prepare(str(manifest), (root / "store").as_uri(), size).uri


def bare_step(trainer: Trainer, real: torch.Tensor, z: torch.Tensor, city, image_type) -> None:
    """One D update and one G update: only model compute and the optimizers."""
    with torch.no_grad(), trainer.autocast():
        fake = trainer.g_frozen(z, city, image_type)
    with trainer.autocast():
        both = torch.cat([real, fake.to(real.dtype)])
        logits = trainer.d_train(both, city.repeat(2), image_type.repeat(2)).float()
    batch = real.shape[0]
    d_loss = losses.d_main(logits[:batch], logits[batch:])
    trainer.opt_d.zero_grad(set_to_none=True)
    d_loss.backward()
    trainer.opt_d.step()
    trainer.D.requires_grad_(False)
    with trainer.autocast():
        logits = trainer.d_frozen(trainer.g_train(z, city, image_type), city, image_type).float()
    g_loss = losses.g_main(logits)
    trainer.opt_g.zero_grad(set_to_none=True)
    g_loss.backward()
    trainer.opt_g.step()
    trainer.D.requires_grad_(True)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_images_per_second(trainer: Trainer, steps: int, warmup: int) -> float:
    batch = trainer.cfg.batch_size
    index = trainer.sampler.next()
    real = trainer.real_batch(index)
    city, image_type = trainer.city[index], trainer.image_type[index]
    z = trainer.latents(batch)
    for _ in range(warmup):
        bare_step(trainer, real, z, city, image_type)
    _sync(trainer.device)
    started = time.perf_counter()
    for _ in range(steps):
        bare_step(trainer, real, z, city, image_type)
    _sync(trainer.device)
    return steps * batch / (time.perf_counter() - started)


def flops_per_image(dataset_uri: str, out_dir: str, cfg: GanSettings) -> float:
    """FLOPs of one full training step of the loop (fp32, eager), per real image."""
    trainer = Trainer(dataset_uri, out_dir, cfg.model_copy(update={"compile": False}))
    trainer.train_step()  # first-call effects (lazy init) stay out of the count
    counter = FlopCounterMode(display=False)
    with counter:
        trainer.train_step()
    return counter.get_total_flops() / cfg.batch_size


def measure(
    dataset_uri: str, work: Path, cfg: GanSettings, args: argparse.Namespace
) -> dict[str, Any]:
    recorder = SpeedRecorder()
    started = time.perf_counter()
    # Trainer is what train() runs; keeping it lets the bare passes reuse compiled graphs.
    trainer = Trainer(dataset_uri, str(work / "run"), cfg, reporter=recorder)
    result = trainer.run()
    total_s = time.perf_counter() - started
    steady = recorder.speeds[1:] or recorder.speeds or [result.images_per_second]
    loop = statistics.median(steady)
    bare = bare_images_per_second(trainer, args.bare_steps, args.warmup)
    model_s = result.kimg * 1000 / bare
    return {
        "R": cfg.image_size,
        "precision": cfg.precision,
        "compile": cfg.compile,
        "batch": cfg.batch_size,
        "steps": result.step,
        "loop_img_s": loop,
        "bare_img_s": bare,
        "outside_share": max(0.0, 1 - loop / bare),
        "end_to_end_outside_share": max(0.0, 1 - model_s / total_s),
        "train_call_s": total_s,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--precision", nargs="+", default=["fp32"], help="fp32 bf16 fp16")
    parser.add_argument("--compile", nargs="+", default=["off"], choices=["off", "on"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--width", type=int, default=GanSettings().width)
    # A step budget, not a time box: compile warm-up would eat a wall-clock budget.
    parser.add_argument("--steps", type=int, default=12, help="loop steps per measurement")
    parser.add_argument("--log-every", type=int, default=3)
    parser.add_argument("--bare-steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--images", type=int, default=512, help="size of the synthetic dataset")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--peak-tflops", type=float, help="device peak for '%% peak' (H200: 989)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda":
        print(f"device {device}: {torch.cuda.get_device_name(device)}")
    else:
        print(f"device cpu, {args.threads or torch.get_num_threads()} threads")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        for size in args.sizes:
            work = Path(tmp, f"r{size}")
            dataset_uri = make_dataset(work, size, args.images)
            base = GanSettings(
                image_size=size,
                batch_size=args.batch_size,
                steps=args.steps,
                width=args.width,
                device=args.device,
                log_every=args.log_every,
                snapshot_every=10**9,
                checkpoint_every_minutes=10**6,
                cpu_threads=args.threads,
            )
            flops = flops_per_image(dataset_uri, str(work / "flops"), base)
            for precision in args.precision:
                for compiled in args.compile:
                    cfg = base.model_copy(
                        update={"precision": precision, "compile": compiled == "on"}
                    )
                    row = measure(dataset_uri, work / f"{precision}-{compiled}", cfg, args)
                    row["gflop_per_img"] = flops / 1e9
                    row["tflop_s"] = flops * row["loop_img_s"] / 1e12
                    if args.peak_tflops:
                        row["peak_share"] = row["tflop_s"] / args.peak_tflops
                    rows.append(row)
                    print(_format(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


def _format(row: dict[str, Any]) -> str:
    peak = f"  {100 * row['peak_share']:.1f}% peak" if "peak_share" in row else ""
    return (
        f"R={row['R']:<4} {row['precision']:<5} compile={'on ' if row['compile'] else 'off'} "
        f"batch {row['batch']:<4} loop {row['loop_img_s']:8.1f} img/s  "
        f"bare {row['bare_img_s']:8.1f} "
        f"img/s  outside {100 * row['outside_share']:4.1f}% (end-to-end "
        f"{100 * row['end_to_end_outside_share']:4.1f}%, {row['train_call_s']:.0f} s)  "
        f"{row['gflop_per_img']:.2f} GFLOP/img  {row['tflop_s']:.3f} TFLOP/s{peak}"
    )


if __name__ == "__main__":
    main()
