"""The training loop: hinge loss, TTUR Adam, EMA generator, DiffAugment, NaN guard, checkpoints.

One step = ``d_steps`` discriminator updates on (real, fake) batches followed by one generator
update, then the EMA update of ``G_ema``. The packed dataset sits whole on the device; batches
are index tensors drawn on the device (a shuffled epoch order, sharded over DDP ranks like a
``DistributedSampler``, or class-balanced draws). Everything random flows from generators whose
states are checkpointed, so a run resumed from a checkpoint continues bit for bit on CPU.

Every ``log_every`` steps the loop reads its statistics (one host sync), checks them for
NaN/divergence and either rolls back to the last good in-memory snapshot with lower learning
rates or takes a new snapshot; metrics and sample grids go to a ``Reporter``.

``python -m housegan.gan.train DATASET OUT [key=value ...]`` runs it directly, e.g. under
``torchrun --standalone --nproc_per_node=N``.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import torch
from PIL import Image, ImageDraw
from torch import Tensor, nn

from housegan import storage
from housegan.config import GanSettings
from housegan.gan import checkpoint, ddp
from housegan.gan import loss as losses
from housegan.gan.augment import AdaptiveStrength, DiffAugment, xflip
from housegan.gan.data import PackedDataset, load_packed
from housegan.gan.models import Discriminator, Generator, ModelSpec

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "housegan.gan.checkpoint/2"  # 2: D has auxiliary classifiers
PRECISIONS = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
LossHook = Callable[[int, Tensor], Tensor]  # (step, loss) -> the loss the update uses


class Reporter(Protocol):
    """Where the loop sends what it measures (MLflow in production, a list in tests)."""

    def params(self, params: dict[str, Any]) -> None: ...

    def metrics(self, metrics: dict[str, float], step: int) -> None: ...

    def image(self, name: str, image: Image.Image, step: int) -> None: ...


class TrainingDiverged(RuntimeError):
    """The guard rolled back more often than ``guard_max_rollbacks`` allows."""


class TrainingInterrupted(RuntimeError):
    """A stop was requested (``stop_requested``, e.g. a spot interruption notice): the loop
    wrote a checkpoint of ``step`` and stopped; ``resume`` continues from it."""

    def __init__(self, step: int, checkpoint_uri: str) -> None:
        super().__init__(
            f"training stopped on request at step {step} (spot interruption notice?); "
            f"checkpoint {checkpoint_uri or '(written by rank 0)'}; resume continues from it"
        )
        self.step, self.checkpoint_uri = step, checkpoint_uri


@dataclass(frozen=True)
class TrainResult:
    out_dir: str  # URI of the run folder: checkpoints/, g_ema.safetensors, model.json
    checkpoint_uri: str  # the last checkpoint written
    step: int
    kimg: float
    spec: ModelSpec
    vocab: dict[str, list[str]]  # {"city": [...], "image_type": [...]}
    g_ema_state_path: str  # URI of g_ema.safetensors
    dataset_id: str = ""
    rollbacks: int = 0
    seconds: float = 0.0  # wall time of this segment's training loop
    images_per_second: float = 0.0  # over this segment, all ranks together
    metrics: dict[str, float] = field(default_factory=dict)  # the last reported values


def train(
    dataset_uri: str,
    out_dir: str,
    cfg: GanSettings,
    *,
    resume: bool = False,
    warm_start_from: str | None = None,
    reporter: Reporter | None = None,
    storage_options: Mapping[str, Any] | None = None,
    d_loss_hook: LossHook | None = None,
    stop_requested: threading.Event | None = None,
) -> TrainResult:
    """Train on a prepared dataset; ``resume`` continues from the newest checkpoint in out_dir.
    ``warm_start_from`` (a checkpoint of another run with the same labels and networks) gives
    the starting weights of a fresh run; a resumed run ignores it.

    Under ``torchrun`` every rank calls this; rank 0 reports and writes files. ``d_loss_hook``
    sees (step, D loss) before the update: fault drills (``housegan.testing.faults``) use it.
    Once ``stop_requested`` is set, the loop checkpoints and raises ``TrainingInterrupted``;
    with ``ec2.spot_poll_url`` configured (the EC2 GPU worker on spot), rank 0 sets it on a
    spot interruption notice.
    """
    trainer = Trainer(
        dataset_uri,
        out_dir,
        cfg,
        reporter=reporter,
        storage_options=storage_options,
        d_loss_hook=d_loss_hook,
        stop_requested=stop_requested,
    )
    try:
        with _spot_watch(trainer):
            resumed = resume and trainer.resume()
            if warm_start_from and not resumed:
                trainer.warm_start(warm_start_from)
            return trainer.run()
    finally:
        ddp.teardown(trainer.dist)


def _spot_watch(trainer: Trainer) -> contextlib.AbstractContextManager[Any]:
    """Rank 0 polls for spot notices when configured; the others follow its decision."""
    if not trainer.dist.is_main:
        return contextlib.nullcontext()
    from housegan.ec2 import spot_watch

    return spot_watch(trainer.stop_requested)


class IndexSampler:
    """Batches of dataset indices drawn on the device, identical on all ranks, then sharded.

    Uniform: consecutive slices of shuffled epochs (each image once per epoch). Balanced: draws
    with replacement, weighted so each (city, type) class comes up equally often.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        generator: torch.Generator,
        info: ddp.DistInfo,
        weights: Tensor | None = None,
    ) -> None:
        self.n, self.batch_size, self.generator, self.info = n, batch_size, generator, info
        self.weights = weights
        self.pending = torch.empty(0, dtype=torch.long, device=generator.device)

    def next(self) -> Tensor:
        global_batch = self.batch_size * self.info.world_size
        if self.weights is not None:
            drawn = torch.multinomial(self.weights, global_batch, True, generator=self.generator)
        else:
            while self.pending.numel() < global_batch:
                order = torch.randperm(self.n, generator=self.generator, device=self.pending.device)
                self.pending = torch.cat([self.pending, order])
            drawn, self.pending = self.pending[:global_batch], self.pending[global_batch:]
        start = self.info.rank * self.batch_size
        return drawn[start : start + self.batch_size]

    def state_dict(self) -> dict[str, Tensor]:
        return {"generator": self.generator.get_state(), "pending": self.pending.cpu()}

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        self.generator.set_state(state["generator"])
        self.pending = state["pending"].to(self.pending.device)


class Trainer:
    """All training state, one step function and the loop around it."""

    def __init__(
        self,
        dataset_uri: str,
        out_dir: str,
        cfg: GanSettings,
        *,
        reporter: Reporter | None = None,
        storage_options: Mapping[str, Any] | None = None,
        d_loss_hook: LossHook | None = None,
        stop_requested: threading.Event | None = None,
    ) -> None:
        self.cfg, self.storage_options = cfg, storage_options
        self.d_loss_hook = d_loss_hook
        self.stop_requested = stop_requested or threading.Event()
        self.out_dir = storage.normalize_uri(out_dir)
        self.dist, self.device = ddp.setup(cfg.device)
        self.reporter = reporter if self.dist.is_main else None
        self.dtype = resolve_precision(cfg.precision, self.device)
        self.memory_format = (
            torch.channels_last
            if cfg.channels_last and self.device.type == "cuda"
            else torch.contiguous_format
        )
        configure_torch(cfg, self.device)
        torch.manual_seed(cfg.seed)

        data = load_packed(dataset_uri, storage_options)
        if data.image_size != cfg.image_size:
            raise ValueError(
                f"dataset {data.dataset_id} holds {data.image_size}px images, "
                f"but image_size is {cfg.image_size}: prepare it at {cfg.image_size}"
            )
        self.dataset_id, self.vocab = data.dataset_id, data.vocab
        self.spec = ModelSpec(
            image_size=data.image_size,
            n_cities=len(data.cities),
            n_types=len(data.image_types),
            z_dim=cfg.z_dim,
            width=cfg.width,
            embed_dim=cfg.embed_dim,
            hierarchical_z=cfg.hierarchical_z,
        )
        self._load_data(data)
        self._build_networks()
        self._build_randomness()
        self.step = 0
        self.nimg = 0
        self.train_seconds = 0.0
        self.lr_scale = 1.0
        self.rollbacks = 0
        # The labels' weight (gan.cond_ramp): a host copy of the networks' label_scale buffers,
        # so the loss weights and the "changed?" check never read the device.
        self.label_scale = 1.0
        self.warm_started = False
        self.stats = losses.Stats()
        self._bad = torch.zeros((), dtype=torch.bool, device=self.device)
        self.last_checkpoint = ""
        self.checkpoint_step = -1
        self.last_metrics: dict[str, float] = {}
        # The step G_ema's standing statistics were taken at: every step's EMA update replaces
        # them with G's, so they are fresh only at that step.
        self._standing_step = -1

    # ----------------------------------------------------------------------------- set-up
    def _load_data(self, data: PackedDataset) -> None:
        # NHWC bytes viewed as NCHW: the channels_last layout, converted per batch.
        self.images = torch.from_numpy(data.images).to(self.device).permute(0, 3, 1, 2)
        self.city = torch.from_numpy(data.city).to(self.device)
        self.image_type = torch.from_numpy(data.image_type).to(self.device)
        classes = self.city * self.spec.n_types + self.image_type
        counts = torch.bincount(classes, minlength=self.spec.n_cities * self.spec.n_types)
        self.classes = [divmod(int(c), self.spec.n_types) for c in torch.nonzero(counts).flatten()]
        self.sample_weights = (1.0 / counts[classes].double()) if self.cfg.balanced else None

    def _build_networks(self) -> None:
        cfg, device, fmt = self.cfg, self.device, self.memory_format
        self.G = Generator(self.spec).to(device, memory_format=fmt)
        twins = cfg.class_twin and cfg.class_weight > 0
        self.D = Discriminator(self.spec, twins, cfg.minibatch_std).to(device, memory_format=fmt)
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=cfg.g_lr, betas=cfg.adam_betas)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=cfg.d_lr, betas=cfg.adam_betas)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.dtype == torch.float16)
        compile_ = torch.compile if cfg.compile else _identity
        # Raw modules for the phase where the other network trains (no DDP gradient sync).
        self.g_frozen, self.d_frozen = compile_(self.G), compile_(self.D)
        if self.dist.enabled:
            self.g_train = compile_(ddp.wrap(self.G, self.dist, device))
            self.d_train = compile_(ddp.wrap(self.D, self.dist, device))
        else:
            self.g_train, self.d_train = self.g_frozen, self.d_frozen

    def _build_randomness(self) -> None:
        seed, rank = self.cfg.seed, self.dist.rank
        self.sampler = IndexSampler(
            len(self.images),
            self.cfg.batch_size,
            _generator(self.device, seed, "index"),  # the same on every rank
            self.dist,
            self.sample_weights,
        )
        self.noise = _generator(self.device, seed, "noise", rank)
        self.augment = DiffAugment(self.cfg.diffaugment, _generator(self.device, seed, "aug", rank))
        self.ada = (
            AdaptiveStrength(self.augment, self.cfg.ada_target, self.cfg.ada_kimg)
            if self.cfg.ada_target is not None and self.augment.names
            else None
        )
        grid_gen = _generator(torch.device("cpu"), seed, "grid")
        self.grid_z = torch.randn(self.cfg.grid_per_class, self.spec.z_dim, generator=grid_gen)

    # ------------------------------------------------------------------------------ steps
    @property
    def total_steps(self) -> int:
        if self.cfg.steps is not None:
            return self.cfg.steps
        return math.ceil(self.cfg.kimg * 1000 / (self.cfg.batch_size * self.dist.world_size))

    def autocast(self) -> torch.autocast:
        return torch.autocast(
            self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32
        )

    def real_batch(self, index: Tensor) -> Tensor:
        images = self.images[index].to(torch.float32).div_(127.5).sub_(1)
        images = images.contiguous(memory_format=self.memory_format)
        return xflip(images, self.augment.generator) if self.cfg.xflip else images

    def latents(self, n: int) -> Tensor:
        return torch.randn(n, self.spec.z_dim, generator=self.noise, device=self.device)

    def progress(self) -> float:
        """Share of the budget spent: of its images, or of its minutes when that is further."""
        done = self.nimg / (self.total_steps * self.cfg.batch_size * self.dist.world_size)
        if self.cfg.max_minutes is not None:
            done = max(done, self.train_seconds / (self.cfg.max_minutes * 60))
        return done

    def _set_label_scale(self) -> None:
        """Transitional conditioning (Shahbazi et al. 2023, "Collapse by Conditioning"): on
        small sets, labels from the first step make G draw few modes per class; ramped in,
        they split modes G has already learned. A warm start is conditional already."""
        ramp = self.cfg.cond_ramp
        if ramp is None or self.warm_started:
            scale = 1.0
        else:
            start, end = ramp
            span = max(end - start, 1e-9)
            scale = min(max((self.progress() - start) / span, 0.0), 1.0)
        if scale != self.label_scale:
            self.label_scale = scale
            for net in (self.G, self.D, self.G_ema):
                net.label_scale.fill_(scale)

    def train_step(self, measure: bool = False) -> None:
        """``d_steps`` D updates, one G update, one EMA update; ``measure`` adds grad norms."""
        batch = self.cfg.batch_size
        self._set_label_scale()
        for _ in range(self.cfg.d_steps):
            index = self.sampler.next()
            city, image_type = self.city[index], self.image_type[index]
            real = self.real_batch(index)
            with torch.no_grad(), self.autocast():
                fake = self.g_frozen(self.latents(batch), city, image_type)
            with self.autocast():
                both = self.augment(torch.cat([real, fake.to(real.dtype)]))
                logits, classes = self._discriminate(
                    self.d_train, both, city.repeat(2), image_type.repeat(2)
                )
            d_loss = losses.d_main(logits[:batch], logits[batch:], self.stats)
            if classes is not None:  # D's classifiers learn the labels from real images only
                d_loss = d_loss + self.cfg.class_weight * losses.classes(
                    *(head[:batch] for head in classes[:2]), city, image_type, "real", self.stats
                )
                if self.D.twin_classifiers:  # ... and their twins from generated images only
                    d_loss = d_loss + self.cfg.class_weight * losses.classes(
                        *(head[batch:] for head in classes[2:]),
                        city,
                        image_type,
                        "twin",
                        self.stats,
                    )
            if self.ada is not None:
                self.ada.observe(logits[:batch])
            if self.d_loss_hook is not None:
                d_loss = self.d_loss_hook(self.step, d_loss)
            self._update(self.opt_d, d_loss, self.D, "d", measure)

        self.D.requires_grad_(False)
        pairs = batch // 2 if self.cfg.mode_seeking > 0 else 0
        if pairs:  # image i and i + pairs share their labels
            city, image_type = (
                torch.cat([x[:pairs], x[:pairs], x[2 * pairs :]]) for x in (city, image_type)
            )
        z = self.latents(batch)
        with self.autocast():
            fake = self.g_train(z, city, image_type)
            logits, classes = self._discriminate(
                self.d_frozen, self.augment(fake), city, image_type
            )
        g_loss = losses.g_main(logits, self.stats)
        if classes is not None:  # G is taught to draw what D's classifiers read as its labels
            class_weight = self.cfg.class_weight * self.label_scale
            g_loss = g_loss + class_weight * losses.classes(
                *classes[:2], city, image_type, "fake", self.stats
            )
            if self.D.twin_classifiers:  # ... but not to be the easy case for the twins (TAC)
                g_loss = g_loss - class_weight * losses.classes(
                    *classes[2:], city, image_type, "fake_twin", self.stats
                )
        if pairs:
            g_loss = g_loss + self.cfg.mode_seeking * losses.mode_seeking(
                fake[:pairs].float(),
                fake[pairs : 2 * pairs].float(),
                z[:pairs],
                z[pairs : 2 * pairs],
                self.stats,
            )
        self._update(self.opt_g, g_loss, self.G, "g", measure)
        self.D.requires_grad_(True)

        self.nimg += batch * self.dist.world_size
        self.step += 1
        self._update_ema()
        if self.ada is not None and self.step % self.cfg.ada_interval == 0:
            shown = batch * self.dist.world_size * self.cfg.ada_interval  # since the last one
            self.ada.adjust(shown, lambda t: ddp.reduce_mean(t, self.dist))

    def _discriminate(
        self, d: Callable[..., Any], x: Tensor, city: Tensor, image_type: Tensor
    ) -> tuple[Tensor, tuple[Tensor, ...] | None]:
        """float32 logits and, when ``class_weight`` > 0, the classifiers' (city, type) logits,
        then the twins' (not asked for otherwise: DDP refuses parameters that get no gradient)."""
        if self.cfg.class_weight <= 0:
            return d(x, city, image_type).float(), None
        logits, heads = d(x, city, image_type, classes=True)
        return logits.float(), tuple(head.float() for head in heads)

    def _update(
        self, opt: torch.optim.Optimizer, loss: Tensor, net: nn.Module, name: str, measure: bool
    ) -> None:
        bad = ~torch.isfinite(loss) | (loss.abs() > self.cfg.guard_max_abs_loss)
        self._bad = self._bad | bad
        opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if measure:
            self.scaler.unscale_(opt)
            grads = [p.grad for p in net.parameters() if p.grad is not None]
            self.stats.add(f"grad_norm/{name}", torch.nn.utils.get_total_norm(grads))
        self.scaler.step(opt)
        self.scaler.update()

    @torch.no_grad()
    def _update_ema(self) -> None:
        ema_nimg = self.cfg.ema_kimg * 1000
        if self.cfg.ema_rampup is not None:
            ema_nimg = min(ema_nimg, self.nimg * self.cfg.ema_rampup)
        beta = 0.5 ** (self.cfg.batch_size * self.dist.world_size / max(ema_nimg, 1e-8))
        torch._foreach_lerp_(list(self.G_ema.parameters()), list(self.G.parameters()), 1 - beta)
        torch._foreach_copy_(list(self.G_ema.buffers()), list(self.G.buffers()))  # BN stats

    # ------------------------------------------------------------------------------- loop
    def run(self) -> TrainResult:
        """Train until the step budget (or the wall-clock budget) is spent."""
        cfg = self.cfg
        self._report_params()
        snapshot = self.state_dict(clone=True)
        started = clock = last_checkpoint = last_log = time.monotonic()
        start_nimg = log_nimg = self.nimg
        while self.step < self.total_steps:
            log_due = (self.step + 1) % cfg.log_every == 0
            self.train_step(measure=log_due)
            now = time.monotonic()
            self.train_seconds += now - clock  # this step and the last checks, logs, saves
            clock = now
            checkpoint_due = bool(cfg.checkpoint_every_steps) and (
                self.step % cfg.checkpoint_every_steps == 0
            )
            snapshot_due = self.step % cfg.snapshot_every == 0
            # A stop request is seen at once alone; under DDP at the next agreement (log step).
            stop_due = not self.dist.enabled and self.stop_requested.is_set()
            due = log_due or checkpoint_due or snapshot_due or stop_due
            if not (due or self.step == self.total_steps):
                continue
            bad, time_up, checkpoint_time, stop = self._agree(
                bool(self._bad),
                cfg.max_minutes is not None and self.train_seconds >= cfg.max_minutes * 60,
                now - last_checkpoint >= cfg.checkpoint_every_minutes * 60,
                self.stop_requested.is_set(),
            )
            if bad:
                self._rollback(snapshot)
                continue
            snapshot = self.state_dict(clone=True)
            if log_due:
                speed = (self.nimg - log_nimg) / max(now - last_log, 1e-9)
                self._report_metrics(speed)
                last_log, log_nimg = now, self.nimg
            if snapshot_due and self.reporter:
                self.reporter.image("samples", self.sample_grid(), self.step)
            if checkpoint_due or checkpoint_time or stop:
                self.save_checkpoint(snapshot)  # the state just taken: no second gather
                last_checkpoint = time.monotonic()
            if stop:
                raise TrainingInterrupted(self.step, self.last_checkpoint)
            if time_up:
                break
        return self._finish(time.monotonic() - started, self.nimg - start_nimg)

    def _agree(self, bad: bool, *clock: bool) -> list[bool]:
        """Decisions all ranks take together: any rank's bad loss; rank 0's clock."""
        bad_anywhere = ddp.reduce_flags(self._flags([bad]), self.dist)
        clock_of_rank0 = ddp.broadcast(self._flags(list(clock)), self.dist)
        return [bool(bad_anywhere[0]), *(bool(v) for v in clock_of_rank0.tolist())]

    def _flags(self, values: list[bool]) -> Tensor:
        return torch.tensor(values, dtype=torch.int32, device=self.device)  # NCCL needs CUDA

    def _rollback(self, snapshot: Mapping[str, Any]) -> None:
        self.rollbacks += 1
        if self.rollbacks > self.cfg.guard_max_rollbacks:
            raise TrainingDiverged(
                f"non-finite or exploding loss after {self.rollbacks - 1} rollbacks "
                f"(guard_max_rollbacks={self.cfg.guard_max_rollbacks}) at step {self.step}; "
                f"lower g_lr/d_lr (now x{self.lr_scale:g}) or check the data"
            )
        failed_at, rollbacks, seconds = self.step, self.rollbacks, self.train_seconds
        lr_scale = self.lr_scale * self.cfg.guard_lr_factor
        self.load_state_dict(_clone_tensors(snapshot))  # optimizers would alias its tensors
        self.rollbacks, self.lr_scale, self.train_seconds = rollbacks, lr_scale, seconds
        self._apply_lr()
        self._bad.zero_()
        self.stats.reset()
        if self.reporter:
            self.reporter.metrics(
                {"guard/rollbacks": float(rollbacks), "guard/lr_scale": lr_scale}, failed_at
            )

    def _finish(self, seconds: float, images: int) -> TrainResult:
        if self.checkpoint_step != self.step:
            self.save_checkpoint()
        weights_uri = storage.join(self.out_dir, "g_ema.safetensors")
        if self.dist.is_main:
            from housegan.gan import serving

            self._standing_stats()
            serving.save_model_dir(
                self.G_ema, self.spec, self.vocab, self.out_dir, self.storage_options
            )
            if self.reporter and self.step % self.cfg.snapshot_every:  # else just reported
                self.reporter.image("samples", self.sample_grid(), self.step)
        return TrainResult(
            out_dir=self.out_dir,
            checkpoint_uri=self.last_checkpoint,
            step=self.step,
            kimg=self.nimg / 1000,
            spec=self.spec,
            vocab=self.vocab,
            g_ema_state_path=weights_uri,
            dataset_id=self.dataset_id,
            rollbacks=self.rollbacks,
            seconds=seconds,
            images_per_second=images / max(seconds, 1e-9),
            metrics=dict(self.last_metrics),
        )

    # -------------------------------------------------------------------------- reporting
    def _report_params(self) -> None:
        if self.reporter and self.checkpoint_step < 0:  # a resumed run reported them before
            params = {f"gan.{k}": v for k, v in self.cfg.model_dump(mode="json").items()}
            params.update({f"spec.{k}": v for k, v in asdict(self.spec).items()})
            params.update(dataset_id=self.dataset_id, world_size=self.dist.world_size)
            self.reporter.params(params)

    def _report_metrics(self, images_per_second: float) -> None:
        names = self.stats.names()
        means = ddp.reduce_mean(self.stats.means(), self.dist).tolist() if names else []
        self.stats.reset()
        metrics = dict(zip(names, means, strict=True))
        metrics.update(
            {
                "speed/img_per_s": images_per_second,
                "lr/g": self.opt_g.param_groups[0]["lr"],
                "lr/d": self.opt_d.param_groups[0]["lr"],
                "progress/kimg": self.nimg / 1000,
                "cond/label_scale": self.label_scale,
                "guard/rollbacks": float(self.rollbacks),
            }
        )
        if self.ada is not None:
            metrics["augment/p"] = float(self.augment.p)
            metrics["augment/rt"] = float(self.ada.last_rt)
        self.last_metrics = metrics
        if self.reporter:
            self.reporter.metrics(metrics, self.step)

    def sample_grid(self) -> Image.Image:
        """G_ema's images for the fixed latents, one row per (city, type) in the data."""
        self._standing_stats()
        return sample_grid(self.G_ema, self.vocab, self.grid_z, self.classes)

    @torch.no_grad()
    def _standing_stats(self) -> None:
        """Re-estimate G_ema's batch-norm statistics on its own activations (BigGAN's standing
        statistics): the running statistics copied from G describe another network's, and
        drawing with them shrinks the variety of the samples. The next EMA update copies G's
        back; its own random stream leaves training's untouched."""
        images, batch = self.cfg.ema_standing_images, self.cfg.batch_size
        norms = [m for m in self.G_ema.modules() if isinstance(m, nn.BatchNorm2d)]
        if images <= 0 or not norms or self._standing_step == self.step:
            return
        momenta = [norm.momentum for norm in norms]
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None  # a plain average over the batches below
        randomness = _generator(self.device, self.cfg.seed, "standing", self.step)
        self.G_ema.train()
        for start in range(0, images, batch):
            index = torch.randint(
                len(self.city),
                (min(batch, images - start),),
                generator=randomness,
                device=self.device,
            )
            z = torch.randn(len(index), self.spec.z_dim, generator=randomness, device=self.device)
            with self.autocast():
                self.G_ema(z, self.city[index], self.image_type[index])
        self.G_ema.eval()
        for norm, momentum in zip(norms, momenta, strict=True):
            norm.momentum = momentum
        self._standing_step = self.step

    # ------------------------------------------------------------------------------ state
    def state_dict(self, clone: bool = False) -> dict[str, Any]:
        """The full training state; ``clone`` copies tensors (an in-memory rollback point).

        Collective under DDP (per-rank generator states are gathered): all ranks call it.
        """
        state = {
            "format": CHECKPOINT_FORMAT,
            "step": self.step,
            "nimg": self.nimg,
            "train_seconds": self.train_seconds,
            "lr_scale": self.lr_scale,
            "rollbacks": self.rollbacks,
            "warm_started": self.warm_started,
            "G": self.G.state_dict(),
            "D": self.D.state_dict(),
            "G_ema": self.G_ema.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": checkpoint.global_rng_state(),
            "sampler": self.sampler.state_dict(),
            "noise": ddp.all_gather(self.noise.get_state(), self.dist),
            "augment": ddp.all_gather(self.augment.generator.get_state(), self.dist),
            "augment_p": self.augment.p.detach().cpu().reshape(1),  # the same on all ranks
            **({"ada": self.ada.state_dict()} if self.ada is not None else {}),
            "world_size": self.dist.world_size,
            "config": self.cfg.model_dump(mode="json"),
            "spec": asdict(self.spec),
            "vocab": self.vocab,
            "dataset_id": self.dataset_id,
        }
        return _clone_tensors(state) if clone else state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"not a {CHECKPOINT_FORMAT} checkpoint: {state.get('format')!r}")
        if state["dataset_id"] != self.dataset_id or state["spec"] != asdict(self.spec):
            raise ValueError(
                f"checkpoint was trained on dataset {state['dataset_id']} with {state['spec']}; "
                f"this run has dataset {self.dataset_id} with {asdict(self.spec)}"
            )
        for key in ("step", "nimg", "train_seconds", "lr_scale", "rollbacks"):
            setattr(self, key, state[key])
        self.warm_started = bool(state.get("warm_started", False))  # absent before cond_ramp
        for key in ("G", "D", "G_ema", "opt_g", "opt_d", "scaler"):
            getattr(self, key).load_state_dict(state[key])
        checkpoint.set_global_rng_state(state["rng"])
        self.augment.p = state["augment_p"].reshape(()).to(self.augment.p)
        if self.ada is not None and "ada" in state:  # absent when saved with ADA off
            self.ada.load_state_dict(state["ada"])
        self.sampler.load_state_dict(state["sampler"])
        rank = self.dist.rank
        if state["world_size"] == self.dist.world_size:
            self.noise.set_state(state["noise"][rank])
            self.augment.generator.set_state(state["augment"][rank])
        else:  # other ranks: fresh streams, derived from the step so they never repeat
            self.noise.manual_seed(_seed(self.cfg.seed, "noise", rank, self.step))
            self.augment.generator.manual_seed(_seed(self.cfg.seed, "aug", rank, self.step))

    def save_checkpoint(self, state: Mapping[str, Any] | None = None) -> str:
        """Write ``state`` (default: the current one; collective under DDP) as a checkpoint."""
        state = self.state_dict() if state is None else state
        self.checkpoint_step = self.step
        if self.dist.is_main:
            self.last_checkpoint = checkpoint.save(
                state, self.out_dir, self.step, self.cfg.checkpoint_keep, self.storage_options
            )
        return self.last_checkpoint

    def resume(self) -> bool:
        """Load the newest checkpoint of out_dir, if any; returns whether one was found."""
        uri = checkpoint.latest(self.out_dir, self.storage_options)
        if uri is None:
            return False
        # On CPU first: RNG states must stay CPU tensors; load_state_dict moves the rest.
        self.load_state_dict(checkpoint.load(uri, self.storage_options, map_location="cpu"))
        self._apply_lr()  # config LRs (x the guard's scale) win over the saved ones
        self.last_checkpoint, self.checkpoint_step = uri, self.step
        return True

    def warm_start(self, checkpoint_uri: str) -> list[str]:
        """Start from another run's weights (G, D, G_ema and ADA's p): a new schedule, fresh
        optimizers. The labels must be the same, in the same order: the embeddings index them.
        D's parts that the other run's recipe lacked or shaped otherwise (twin classifiers,
        the minibatch-std channel) start fresh; returns their names."""
        state = checkpoint.load(checkpoint_uri, self.storage_options, map_location="cpu")
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"not a {CHECKPOINT_FORMAT} checkpoint: {checkpoint_uri}")
        if state["vocab"] != self.vocab or state["spec"] != asdict(self.spec):
            raise ValueError(
                f"cannot warm-start from {checkpoint_uri}: it has labels {state['vocab']} and "
                f"{state['spec']}; this run has {self.vocab} and {asdict(self.spec)}"
            )
        self.G.load_state_dict(state["G"])
        self.G_ema.load_state_dict(state["G_ema"])
        fresh = _load_matching(self.D, state["D"])
        if fresh:
            log.warning("warm start from %s: D's %s start fresh", checkpoint_uri, fresh)
        self.augment.p = state["augment_p"].reshape(()).to(self.augment.p)
        self.warm_started = True
        return fresh

    def _apply_lr(self) -> None:
        for opt, base in ((self.opt_g, self.cfg.g_lr), (self.opt_d, self.cfg.d_lr)):
            for group in opt.param_groups:
                group["lr"] = base * self.lr_scale


@torch.no_grad()
def sample_grid(
    g: Generator,
    vocab: Mapping[str, Sequence[str]],
    z: Tensor,
    classes: Sequence[tuple[int, int]] | None = None,
    label_width: int = 120,
) -> Image.Image:
    """A grid of ``g``'s images: one row per (city, type) class, one column per latent in z.

    Rows are labelled "city / type"; ``classes`` defaults to every combination.
    """
    from torchvision.utils import make_grid

    if classes is None:
        classes = [
            (c, t) for c in range(len(vocab["city"])) for t in range(len(vocab["image_type"]))
        ]
    device = next(g.parameters()).device
    z = z.to(device)
    was_training = g.training
    g.eval()
    rows = []
    for city, image_type in classes:
        cities = torch.full((len(z),), city, dtype=torch.long, device=device)
        types = torch.full((len(z),), image_type, dtype=torch.long, device=device)
        rows.append(g(z, cities, types).float().cpu())
    g.train(was_training)
    tiles = make_grid(torch.cat(rows), nrow=len(z), padding=2, normalize=True, value_range=(-1, 1))
    pixels = tiles.mul(255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    body = Image.fromarray(pixels)
    canvas = Image.new("RGB", (body.width + label_width, body.height), "white")
    canvas.paste(body, (label_width, 0))
    draw = ImageDraw.Draw(canvas)
    row_height = body.height / len(classes)
    for row, (city, image_type) in enumerate(classes):
        text = f"{vocab['city'][city]} / {vocab['image_type'][image_type]}"
        draw.text((4, row * row_height + row_height / 2 - 5), text[:20], fill="black")
    return canvas


# ---------------------------------------------------------------------------------- helpers
def total_kimg(cfg: GanSettings) -> float:
    """The run's budget in kimg, for progress bars (``steps`` x one process's batch, or kimg)."""
    return cfg.steps * cfg.batch_size / 1000 if cfg.steps is not None else cfg.kimg


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """'auto' is bf16 autocast on CUDA and plain fp32 on CPU."""
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} not in {['auto', *PRECISIONS]}")
    return PRECISIONS[precision]


def configure_torch(cfg: GanSettings, device: torch.device) -> None:
    """Threads and determinism on CPU (bitwise resumes); fast kernels on CUDA unless asked."""
    if device.type == "cpu" and cfg.cpu_threads:
        torch.set_num_threads(cfg.cpu_threads)
    if device.type == "cpu" or cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not cfg.deterministic
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def _seed(*parts: object) -> int:
    """A 63-bit seed derived from any parts (stable across processes, unlike hash())."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _generator(device: torch.device, *parts: object) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(_seed(*parts))


def _load_matching(module: nn.Module, state: Mapping[str, Tensor]) -> list[str]:
    """Load the entries of ``state`` that ``module`` has, with the same shape; returns the
    module's entries left as initialised."""
    own = module.state_dict()
    fits = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    module.load_state_dict(fits, strict=False)
    return sorted(set(own) - set(fits))


def _identity(module: nn.Module) -> Callable[..., Tensor]:
    return module


def _clone_tensors(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.detach().clone()
    if isinstance(value, Mapping):
        return {k: _clone_tensors(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_clone_tensors(v) for v in value)
    return value


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m housegan.gan.train DATASET OUT [--resume] [field=value ...]`` (GanSettings)."""
    args = list(sys.argv[1:] if argv is None else argv)
    resume = "--resume" in args
    args = [a for a in args if a != "--resume"]
    if len(args) < 2:
        raise SystemExit(main.__doc__)
    dataset_uri, out_dir, *overrides = args
    fields = dict(item.split("=", 1) for item in overrides)
    cfg = GanSettings.model_validate({k: None if v == "None" else v for k, v in fields.items()})
    result = train(dataset_uri, out_dir, cfg, resume=resume)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"step {result.step} kimg {result.kimg:.2f} -> {result.out_dir}")


if __name__ == "__main__":
    main()
