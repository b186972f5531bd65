"""The one typed settings object.

Values come, highest priority first, from: keyword arguments, ``HOUSEGAN_*`` environment
variables (nested with ``__``, e.g. ``HOUSEGAN_IMAGES__MIN_SIDE=64``), the YAML file named by
``HOUSEGAN_CONFIG`` (default ``housegan.yaml`` in the working directory, if present), and the
defaults below. Every default in the project lives here.

AWS credentials, region and endpoint are read the way boto3 reads them (``AWS_ACCESS_KEY_ID``,
``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL``, profiles, ...); ``s3_endpoint_url`` overrides the
endpoint when set.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from housegan.devices import DeviceSpec

CONFIG_ENV_VAR = "HOUSEGAN_CONFIG"
DEFAULT_CONFIG_FILE = "housegan.yaml"
ImageType = Literal["exterior", "landscape", "floorplan", "interior", "misc"]
IMAGE_TYPES: tuple[ImageType, ...] = get_args(ImageType)
QualityFlag = Literal[
    "dark", "overexposed", "blurry", "low_information", "grayscale", "odd_aspect_ratio"
]
EmbedLayer = Literal["fc7", "conv5"]
Precision = Literal["auto", "bf16", "fp16", "fp32"]
AugmentOp = Literal["translation", "color", "cutout"]
IMAGE_SIZES = (32, 64, 128)  # generator resolutions the networks are built for


# Marks a field that changes how a step runs, never what it computes (retry delays): it stays
# out of the cache keys of cached steps (``housegan.steps.Step.determinants``).
OPERATIONAL: dict[str, Any] = {"operational": True}


def determining(section: BaseModel) -> dict[str, Any]:
    """``section`` as JSON without its operational fields: what a cached result depends on."""
    skip = {
        name
        for name, field in type(section).model_fields.items()
        if isinstance(field.json_schema_extra, dict) and field.json_schema_extra.get("operational")
    }
    return section.model_dump(mode="json", exclude=skip)


class ImageLimits(BaseModel):
    """What ingest accepts as a usable image."""

    min_side: int = Field(32, ge=1, description="smaller displayed side below this -> too_small")
    max_pixels: int = Field(
        40_000_000, ge=1, description="width*height above this -> too_large (decompression bomb)"
    )
    max_bytes: int = Field(50 * 1024 * 1024, ge=1, description="objects larger are not fetched")
    formats: tuple[str, ...] = Field(
        ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"),
        description="Pillow formats opened; anything else is not_image",
    )


class IngestSettings(BaseModel):
    """Listing, fetching and retrying the source bucket."""

    concurrency: int = Field(32, ge=1, description="objects fetched at once")
    connect_timeout_s: float = Field(5.0, gt=0)
    read_timeout_s: float = Field(15.0, gt=0, description="a stalled read is abandoned after this")
    retries: int = Field(4, ge=0, description="attempts after the first on transient errors")
    retry_backoff_s: float = Field(0.2, ge=0)
    fail_fast_timeout_s: float = Field(
        20.0, gt=0, description="budget for the first request that proves the source is reachable"
    )
    skip_prefixes: tuple[str, ...] = Field(
        (".",), description="path components starting with these are skipped (dotfiles)"
    )
    task_retries: int = Field(2, ge=0, description="Prefect retries of the whole ingest task")
    task_retry_delay_s: float = Field(10.0, ge=0)
    progress_every_s: float = Field(1.0, gt=0, description="Prefect progress artifact updates")


class EmbedSettings(BaseModel):
    """VGG16 feature extraction."""

    weights: str = Field(
        "none", description="'imagenet', 'none' (random init) or a file/URI of a state dict"
    )
    layer: EmbedLayer = Field("fc7", description="'fc7' (4096-d) or 'conv5' (512-d pooled)")
    input_size: int = Field(224, ge=32)
    batch_size: int = Field(
        64, ge=1, description="64 amortizes fc6 (100 M weights) better than 32 on CPU"
    )
    num_workers: int = Field(2, ge=0, description="DataLoader processes decoding images")
    bf16: bool = Field(True, description="bf16 autocast where native (AVX-512 bf16, AMX, CUDA)")
    seed: int = Field(0, description="seeds the random init when weights='none'")

    @field_validator("weights")
    @classmethod
    def _weights_named(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("embed.weights is empty; use 'imagenet', 'none' or a file/URI")
        if value.lower() in ("imagenet", "none"):
            return value.lower()
        if not value.endswith((".safetensors", ".pt", ".pth", ".bin")):
            raise ValueError(
                f"embed.weights={value!r} is neither 'imagenet', 'none' nor a state-dict file "
                "(.safetensors, .pt, .pth or .bin)"
            )
        return value

    device: DeviceSpec = Field("cpu", description="'cpu', 'cuda', 'cuda:N' or 'auto'")
    shard_size: int = Field(256, ge=1, description="photos per Parquet part / mapped task")
    dask_workers: int = Field(0, ge=0, description="map shards on a local Dask cluster if > 0")
    task_retry_delay_s: float = Field(
        10.0,
        ge=0,
        description="wait before a Prefect retry of an embed task (plan, shard, ...)",
        json_schema_extra=OPERATIONAL,
    )


class ClusterSettings(BaseModel):
    """k-means over embeddings."""

    k: int = Field(5, ge=2)
    k_range: tuple[int, int] = Field((3, 8), description="silhouette report over k in [lo, hi]")
    pca_dim: int = Field(128, ge=2, description="PCA dims for clusters, classifier, k-NN")
    pca_fit_rows: int = Field(20_000, ge=100, description="PCA is fitted on a sample this big")
    minibatch_above: int = Field(50_000, ge=1, description="MiniBatchKMeans above this many rows")
    silhouette_sample: int = Field(5_000, ge=100, description="rows scored per silhouette")
    seed: int = 0
    cluster_to_type: dict[int, ImageType] = Field(
        default_factory=dict, description="cluster id -> image type, named from the galleries"
    )
    gallery_nearest: int = Field(8, ge=0, description="photos nearest the centroid per gallery")
    gallery_random: int = Field(8, ge=0, description="random members per gallery")
    thumb_size: int = Field(96, ge=16, description="gallery tile side in pixels")


class CurateSettings(BaseModel):
    """Image types, quality flags, near-duplicates and outliers.

    Quality scores are computed on a copy downscaled to ``quality_max_side``; brightness is
    perceived brightness in [0, 1] (cleanvision's formula).
    """

    wanted_types: tuple[ImageType | Literal["unknown"], ...] = ("exterior", "landscape")
    dark_threshold: float = Field(0.12, description="dark: 99th pct brightness below this")
    overexposed_threshold: float = Field(
        0.92, description="overexposed: 5th pct brightness above this"
    )
    blurry_threshold: float = Field(
        0.02, description="blurry: variance of the Laplacian / variance of gray below this"
    )
    low_information_threshold: float = Field(
        3.0, description="low information: grayscale histogram entropy (bits) below this"
    )
    grayscale_threshold: float = Field(
        0.015, description="grayscale: mean (max - min) over RGB channels below this"
    )
    max_aspect_ratio: float = Field(3.0, description="odd aspect ratio: long/short side above")
    drop_flags: tuple[QualityFlag, ...] = Field(
        ("dark", "overexposed", "blurry", "low_information", "grayscale", "odd_aspect_ratio"),
        description="quality flags that drop a photo (others are only reported)",
    )
    quality_max_side: int = Field(128, ge=16)
    quality_workers: int = Field(8, ge=1, description="photos read and scored at once")
    near_duplicate_cosine: float | None = Field(
        None, description="fixed threshold; None calibrates it per cluster on the data"
    )
    near_duplicate_percentile: float = Field(
        99.0, description="calibration: this pct of k-th neighbour cosine = distinct photos"
    )
    near_duplicate_gap_fraction: float = Field(
        0.2, gt=0, lt=1, description="calibrated: 1 - cosine below this share of distinct's"
    )
    near_duplicate_min_cosine: float = Field(0.9, description="calibrated value never below")
    near_duplicate_min_group: int = Field(
        20, ge=2, description="smaller clusters use the threshold calibrated on all photos"
    )
    near_duplicate_hash: bool = Field(
        True, description="also link photos whose pHashes (or one's mirror pHash) are close"
    )
    near_duplicate_hamming: int | None = Field(
        None, ge=0, le=64, description="fixed pHash Hamming threshold; None calibrates it"
    )
    near_duplicate_hash_spread: float = Field(
        3.0, ge=0, description="calibrated: below median - this x MAD of k-th neighbour distance"
    )
    near_duplicate_max_hamming: int = Field(
        12, ge=0, le=64, description="calibrated Hamming threshold never above (search radius)"
    )
    near_duplicate_max_colour_shift: float = Field(
        0.04, ge=0, le=1, description="hash links: mean colours this close in every channel"
    )
    near_duplicate_max_aspect_change: float = Field(
        0.06, ge=0, description="hash links: aspect ratios this close (a 5% crop moves it ~5%)"
    )
    near_duplicate_mirror_fraction: float = Field(
        0.5, ge=0, le=1, description="hash links by the mirror pHash: this share of the threshold"
    )
    near_duplicate_agree_hash_factor: float = Field(
        1.5, ge=1, description="agreement: pHash distance within this x the Hamming threshold"
    )
    near_duplicate_agree_deep_factor: float = Field(
        2.0, ge=1, description="agreement: 1 - cosine within this x (1 - the deep threshold)"
    )
    near_duplicate_calibration_rows: int = Field(
        2000, ge=10, description="per cluster, rows whose k-th Hamming neighbour is measured"
    )
    near_duplicate_block_mib: int = Field(
        64, ge=1, description="memory per block of the blockwise Hamming search"
    )
    outlier_percentile: float = 98.0
    outlier_min_group: int = Field(20, ge=2, description="smaller (city, type) groups: no outliers")
    knn_k: int = Field(5, ge=1)
    classifier_c: float = Field(1.0, gt=0, description="logistic regression inverse regularization")
    cv_folds: int = Field(5, ge=2, description="cross-validation folds for held-out accuracy")
    gallery_size: int = Field(24, ge=0, description="photos per dropped-reason gallery")
    finetune: bool = Field(
        False, description="fine-tune VGG16's last layers on the labels, embed with the result"
    )
    finetune_layers: int = Field(1, ge=1, le=2, description="1: fc7; 2: fc6 and fc7")
    finetune_epochs: int = Field(5, ge=1)
    finetune_lr: float = Field(1e-4, gt=0)
    finetune_batch_size: int = Field(32, ge=1)
    finetune_holdout: float = Field(0.2, ge=0, lt=1, description="labels held out to score it")
    finetune_seed: int = 0
    task_retry_delay_s: float = Field(
        10.0,
        ge=0,
        description="wait before a Prefect retry of a curate task (quality, cluster...)",
        json_schema_extra=OPERATIONAL,
    )


class GanSettings(BaseModel):
    """Conditional GAN training."""

    # data and budget
    image_size: int = Field(64, description=f"R, the generated side: one of {IMAGE_SIZES}")
    batch_size: int = Field(32, ge=1, description="images per step and per process (DDP rank)")
    kimg: float = Field(10.0, gt=0, description="budget: thousands of real images shown")
    steps: int | None = Field(None, ge=1, description="budget in steps; overrides kimg when set")
    warm_start_kimg: float = Field(
        4.0, gt=0, description="budget of a retrain that starts from the champion's weights"
    )
    max_minutes: float | None = Field(
        None, gt=0, description="wall-clock budget, summed over resumed segments"
    )
    balanced: bool = Field(False, description="sample (city, type) classes equally often")
    xflip: bool = Field(True, description="random horizontal flips of real images")
    diffaugment: str = Field(
        "translation,cutout", description="DiffAugment policy on real and fake; '' = none"
    )
    ada_target: float | None = Field(
        0.6,
        gt=0,
        lt=1,
        description="adaptive augmentation (StyleGAN2-ADA): each op's probability p rises while "
        "the share of reals D scores positive exceeds this; None = every op on every image",
    )
    ada_kimg: float = Field(20.0, gt=0, description="ADA speed: kimg for p to go from 0 to 1")
    ada_interval: int = Field(4, ge=1, description="steps between adjustments of p")
    # models (see housegan.gan.models.ModelSpec)
    width: int = Field(16, ge=1, description="base channels; the widest stage has 16x this")
    z_dim: int = Field(128, ge=2)
    embed_dim: int = Field(128, ge=1, description="size of each shared label embedding")
    hierarchical_z: bool = True
    # optimisation
    g_lr: float = Field(2e-4, gt=0)
    d_lr: float = Field(4e-4, gt=0, description="TTUR: D learns faster than G")
    adam_betas: tuple[float, float] = (0.0, 0.999)
    d_steps: int = Field(1, ge=1, description="D updates per G update")
    class_weight: float = Field(
        1.0,
        ge=0,
        description="weight of D's auxiliary label classifiers (AC-GAN) in both losses; 0 = "
        "projection only",
    )
    minibatch_std: int = Field(
        0,
        ge=0,
        description="group size of D's minibatch standard deviation channel (ProGAN): D sees "
        "how alike a group's images are; 0 or 1 = off",
    )
    class_twin: bool = Field(
        True,
        description="twin classifiers trained on generated images, which G must not find easy "
        "(TAC-GAN): keeps AC-GAN's label accuracy without its loss of within-class diversity",
    )
    mode_seeking: float = Field(
        0.1,
        ge=0,
        description="weight of MSGAN's mode-seeking term: G is penalised when two latents of "
        "the same labels draw alike images; 0 = off",
    )
    cond_ramp: tuple[float, float] | None = Field(
        None,
        description="transitional conditioning (Shahbazi et al. 2023): the labels' weight in G "
        "and D (and in G's classifier terms) rises from 0 to 1 between these fractions of the "
        "budget, so G first learns the whole set unconditionally; None = conditional throughout",
    )
    ema_kimg: float = Field(10.0, gt=0, description="EMA half-life of G_ema, in kimg")
    ema_rampup: float | None = Field(
        0.05, description="early on, half-life <= this fraction of images shown so far"
    )
    ema_standing_images: int = Field(
        2048,
        ge=0,
        description="before G_ema is drawn or saved, its batch-norm statistics are re-estimated "
        "on this many of its own samples (BigGAN's standing statistics); 0 = G's running ones",
    )
    # device and speed
    device: DeviceSpec = Field("auto", description="'auto', 'cpu', 'cuda' or 'cuda:N'")
    precision: Precision = Field(
        "auto", description="'auto' (bf16 on CUDA, fp32 on CPU), 'bf16', 'fp16' or 'fp32'"
    )
    channels_last: bool = Field(True, description="NHWC memory format (CUDA only)")
    compile: bool = Field(False, description="torch.compile the networks")
    cpu_threads: int | None = Field(None, ge=1, description="torch threads on CPU; None = as is")
    deterministic: bool = Field(
        False, description="deterministic algorithms on CUDA too (always on for CPU)"
    )
    seed: int = 0
    # reporting and checkpoints
    log_every: int = Field(50, ge=1, description="steps between metric reports and NaN checks")
    snapshot_every: int = Field(500, ge=1, description="steps between sample grids")
    grid_per_class: int = Field(6, ge=1, description="samples per (city, type) in a grid")
    checkpoint_every_minutes: float = Field(15.0, gt=0)
    checkpoint_every_steps: int | None = Field(None, ge=1, description="also every N steps")
    checkpoint_keep: int = Field(3, ge=1, description="newest checkpoints kept")
    # NaN / divergence guard
    guard_max_abs_loss: float = Field(1e4, gt=0, description="a larger |loss| counts as diverged")
    guard_lr_factor: float = Field(0.5, gt=0, le=1, description="LRs scale by this on rollback")
    guard_max_rollbacks: int = Field(8, ge=0, description="more rollbacks than this -> give up")
    registered_model_name: str = "housegan-cgan"

    @field_validator("image_size")
    @classmethod
    def _size_supported(cls, value: int) -> int:
        if value not in IMAGE_SIZES:
            raise ValueError(f"gan.image_size={value} is not supported; use one of {IMAGE_SIZES}")
        return value

    @field_validator("cond_ramp")
    @classmethod
    def _ramp_within_budget(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and not 0 <= value[0] <= value[1] <= 1:
            raise ValueError(
                f"gan.cond_ramp={value}: give (start, end) fractions of the budget, "
                "0 <= start <= end <= 1"
            )
        return value

    @field_validator("diffaugment")
    @classmethod
    def _policy_known(cls, value: str) -> str:
        names = [name.strip() for name in value.split(",") if name.strip()]
        unknown = sorted(set(names) - set(get_args(AugmentOp)))
        if unknown:
            raise ValueError(
                f"gan.diffaugment names unknown ops {unknown}; use any of {get_args(AugmentOp)}"
            )
        return ",".join(names)

    def with_overrides(self, overrides: Mapping[str, Any] | None) -> GanSettings:
        """A validated copy with the non-None ``overrides`` applied (CLI flags, flow parameters)."""
        given = {k: v for k, v in (overrides or {}).items() if v is not None}
        return type(self).model_validate({**self.model_dump(), **given})


class StackSettings(BaseModel):
    """The embedded local stack (`housegan stack up`)."""

    dir: Path = Path(".housegan/stack")
    host: str = "127.0.0.1"
    s3_port: int = 8333
    mlflow_port: int = Field(5000, description="0 leaves MLflow out of the stack")
    prefect_port: int = Field(4200, description="0 leaves Prefect out of the stack")
    app_port: int = Field(8501, ge=0, description="0 leaves the Streamlit app out of the stack")
    buckets: tuple[str, ...] = ("listings", "housegan")
    access_key: str | None = Field(None, description="local S3 key; generated on first `up`")
    secret_key: SecretStr | None = Field(
        None, description="local S3 secret; generated on first `up`; never printed"
    )
    startup_timeout_s: float = 30.0
    mlflow_artifacts_uri: str = "s3://housegan/mlflow-artifacts"
    db: Literal["sqlite", "postgres"] = Field(
        "sqlite", description="MLflow's and Prefect's stores: SQLite files or a PostgreSQL server"
    )
    postgres_port: int = Field(0, ge=0, description="with db=postgres; 0 picks a free port")
    workers: bool = Field(
        True, description="with Prefect: the work pools, deployments and one worker per pool"
    )
    pools: tuple[str, ...] = Field(("cpu", "gpu"), description="process work pools (workers)")


Resampling = Literal["nearest", "bilinear", "lanczos"]


class AppSettings(BaseModel):
    """The Streamlit app (`housegan app`, or part of `housegan stack up`)."""

    model_uri: str = Field(
        "models:/housegan-cgan@champion", description="the model shown: models:/... or a folder"
    )
    host: str = "127.0.0.1"
    port: int = Field(8501, ge=1, description="`housegan app`; the stack uses stack.app_port")
    device: str = Field(
        "cpu",
        pattern=r"^(auto|cpu|cuda(:\d+)?)$",
        description="a seed gives byte-identical images on one device",
    )
    display_size: int = Field(256, ge=16, description="generated images are upscaled to this")
    resampling: Resampling = Field("nearest", description="upscaling filter shown by default")
    max_images: int = Field(16, ge=1, description="most images one request may draw")
    nearest_real: bool = Field(True, description="show each image's nearest training photo")
    label_queue: int = Field(200, ge=1, description="photos to label drawn per page view")
    labeller: str = Field("app", description="recorded with every label the app writes")
    runs_shown: int = Field(20, ge=1, description="latest MLflow runs on the Runs page")
    mlflow_ui_url: str | None = Field(None, description="default: the tracking server / stack")
    prefect_ui_url: str | None = Field(None, description="default: PREFECT_API_URL / stack")
    reachable_timeout_s: float = Field(
        3.0, gt=0, description="a tracking server silent this long is reported unreachable"
    )
    startup_timeout_s: float = Field(60.0, gt=0, description="stack: wait this long for health")


class EvaluateSettings(BaseModel):
    """Evaluating a trained generator (novelty, fidelity/diversity, conditioning) and the
    promotion gate. Features come from the curation embedder (the ``embed`` section)."""

    # sampling: every model is drawn with the same seed, so two evaluations compare alike
    samples_per_cell: int = Field(200, ge=2, description="generated images per (city, type)")
    seed: int = Field(20_261_202, description="evaluation seed: image i of a cell is (seed, i)")
    device: str = Field(
        "auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$", description="'auto', 'cpu', 'cuda[:N]'"
    )
    generate_batch_size: int = Field(64, ge=1)
    # the real reference: a seeded split of the packed training set
    holdout_fraction: float = Field(
        0.05, gt=0, lt=1, description="real images held out: copy calibration, CAS tests"
    )
    holdout_max: int = Field(2_000, ge=2, description="at most this many held out")
    reference_max: int = Field(
        10_000, ge=10, description="real images sampled for KID and precision/recall/density"
    )
    split_seed: int = 0
    cache_features: bool = Field(True, description="keep real features under <store>/evaluations")
    # novelty
    copy_percentile: float = Field(
        99.0, gt=0, le=100, description="copy threshold: this pct of held-out real NN cosine"
    )
    copy_threshold: float | None = Field(
        None, ge=-1, le=1, description="a fixed cosine instead of the calibrated one"
    )
    pairs_per_cell: int = Field(8, ge=0, description="most similar (generated, real) pairs shown")
    figure_thumb: int = Field(96, ge=16, description="tile side of the pair figures, pixels")
    knn_memory_mb: float = Field(
        1024.0, gt=0, description="working memory of one nearest-neighbour search (sets blocks)"
    )
    knn_precision: Literal["auto", "float32", "bfloat16"] = Field(
        "auto",
        description="block products ('auto': bf16 where native, else float32); candidates are "
        "re-scored in float32",
    )
    knn_rerank: int = Field(16, ge=0, description="extra candidates re-scored in float32")
    # fidelity and diversity
    pr_k: int = Field(3, ge=1, description="k of the precision/recall manifolds")
    dc_k: int = Field(5, ge=1, description="k of density/coverage")
    kid_subsets: int = Field(100, ge=1)
    kid_subset_size: int = Field(1_000, ge=2, description="capped at the smaller sample")
    # conditioning
    classifier_pca_dim: int = Field(64, ge=2)
    classifier_max_train: int = Field(20_000, ge=10, description="real rows a classifier fits")
    classifier_c: float = Field(1.0, gt=0)
    # promotion gate
    max_copy_rate: float = Field(
        0.05, ge=0, le=1, description="above this share of copies a model is never promoted"
    )
    fd_tolerance: float = Field(
        0.05, ge=0, le=1, description="candidate FD may exceed the champion's by this fraction"
    )
    kid_tolerance: float = Field(0.05, ge=0, le=1, description="same, for KID")
    kid_std_slack: float = Field(
        1.0, ge=0, description="KID may also exceed the champion's by this many of its std devs"
    )


class Ec2Settings(BaseModel):
    """The EC2 GPU worker (`housegan ec2 up|down|status`) and the spot-notice poller.

    The worker is a Prefect process worker polling ``pool``; it gets AWS credentials from its
    instance profile only, so nothing here (or in its user data) is a secret.
    """

    region: str | None = Field(None, description="default: boto3's (AWS_DEFAULT_REGION, profile)")
    endpoint_url: str | None = Field(
        None, description="EC2/IAM API endpoint (tests); default: boto3's, AWS_ENDPOINT_URL_EC2"
    )
    ami: str | None = Field(
        None, description="AMI id or 'resolve:ssm:<parameter>' of a GPU image (Deep Learning AMI)"
    )
    launch_template: str | None = Field(
        None, description="launch template id (lt-...) or name; what it sets, up need not"
    )
    launch_template_version: str = Field("$Default", description="'$Default', '$Latest' or N")
    instance_type: str = "g5.xlarge"
    market: Literal["on-demand", "spot"] = "on-demand"
    spot_max_price: str | None = Field(None, description="USD/hour; None: up to on-demand price")
    instance_profile: str | None = Field(
        None, description="IAM instance profile name or ARN: the worker's only AWS credentials"
    )
    subnet_id: str | None = None
    security_group_ids: tuple[str, ...] = ()
    key_name: str | None = Field(None, description="EC2 key pair for SSH; None: no key")
    name: str = Field("housegan-gpu-worker", description="the instances' Name tag")
    tags: dict[str, str] = Field(default_factory=dict, description="extra tags on instances")
    pool: str = Field("gpu", description="the Prefect work pool the worker polls")
    idle_minutes: int = Field(
        30, ge=1, description="terminate after this long with no flow run in progress"
    )
    # what the worker connects to (None: the top-level values / PREFECT_API_URL of `up`)
    prefect_api_url: str | None = None
    mlflow_tracking_uri: str | None = None
    store_uri: str | None = None
    # what the worker installs
    source: str | None = Field(
        None, description="a git URL (cloned at source_ref) or a wheel URI (s3:// or https://)"
    )
    source_ref: str = Field("main", description="git branch, tag or commit")
    constraints_uri: str | None = Field(
        None, description="pip constraints (s3:// or https://); default: the checkout's file"
    )
    python: str = Field("python3.11", description="interpreter of the worker's venv")
    template_dir: Path | None = Field(
        None, description="user-data templates; default: deployments/ec2 of this checkout"
    )
    # spot interruption notices, polled on the worker while training runs
    spot_poll_url: str | None = Field(
        None, description="instance metadata base URL (the worker sets it on spot); None: off"
    )
    spot_poll_interval_s: float = Field(5.0, gt=0, description="AWS suggests every 5 s")
    spot_poll_timeout_s: float = Field(2.0, gt=0)

    def with_overrides(self, overrides: Mapping[str, Any] | None) -> Ec2Settings:
        """A validated copy with the non-None ``overrides`` applied (CLI flags)."""
        given = {k: v for k, v in (overrides or {}).items() if v is not None}
        return type(self).model_validate({**self.model_dump(), **given})


TrainPlacement = Literal["auto", "gpu-pool", "in-process"]


class OrchestrationSettings(BaseModel):
    """How the full refresh places its stages on Prefect work pools."""

    train_on: TrainPlacement = Field(
        "auto",
        description="'gpu-pool': run the train deployment on its pool (fail if no worker is "
        "online); 'in-process': train inside the refresh; 'auto': the pool when a worker is "
        "online there, else in-process (logged)",
    )
    train_deployment: str = Field("train/train", description="FLOW/DEPLOYMENT that trains")
    train_timeout_minutes: float = Field(
        240.0, gt=0, description="give up waiting for the train deployment's run after this"
    )
    warm_start: bool = Field(
        False,
        description="start training from the champion's checkpoint when the labels match "
        "(retrain sets it), for gan.warm_start_kimg instead of gan.kimg",
    )


WatchMode = Literal["listing", "sqs"]


class WatchSettings(BaseModel):
    """The source watcher (``flows/watch.py``): when new photos are worth a retrain, and
    whether it lists the bucket or reads S3 event notifications from an SQS queue."""

    min_new_photos: int = Field(
        20, ge=1, description="announce only when at least this many photos are new or changed"
    )
    sqs_queue_url: str | None = Field(
        None, description="read S3 event notifications from this SQS queue instead of listing"
    )
    sqs_region: str | None = Field(None, description="default: s3_region, then boto3's chain")
    sqs_endpoint_url: str | None = Field(
        None, description="SQS API endpoint (tests); default: boto3's, AWS_ENDPOINT_URL_SQS"
    )
    sqs_wait_s: int = Field(
        20, ge=0, le=20, description="long-poll wait of the first receive (SQS allows 20 s)"
    )
    sqs_visibility_timeout_s: int = Field(
        300,
        ge=1,
        description="received messages stay hidden this long; kept ones (below the threshold, "
        "a crash) come back then: keep it below the watcher's interval",
    )
    sqs_max_messages: int = Field(
        10_000, ge=1, description="most messages one watcher run takes off the queue"
    )

    @property
    def mode(self) -> WatchMode:
        return "sqs" if self.sqs_queue_url else "listing"


class Settings(BaseSettings):
    """Everything a housegan run can be told."""

    model_config = SettingsConfigDict(
        env_prefix="HOUSEGAN_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    store_uri: str = Field(
        "file://./.housegan/store", description="root for manifests, embeddings, datasets"
    )
    source_uri: str = Field("s3://listings/raw", description="where raw listing photos land")
    s3_endpoint_url: str | None = Field(
        None, description="S3-compatible endpoint; overrides AWS_ENDPOINT_URL_S3/AWS_ENDPOINT_URL"
    )
    s3_region: str | None = None
    mlflow_tracking_uri: str = "sqlite:///.housegan/mlflow.db"
    mlflow_experiment: str = "housegan"
    key_pattern: str = Field(
        r"^(?P<city>[^/]+)/(?P<listing_id>[^/]+)/[^/]+$",
        description="regex on the key relative to source_uri; named groups city and listing_id",
    )
    images: ImageLimits = ImageLimits()
    ingest: IngestSettings = IngestSettings()
    embed: EmbedSettings = EmbedSettings()
    cluster: ClusterSettings = ClusterSettings()
    curate: CurateSettings = CurateSettings()
    gan: GanSettings = GanSettings()
    stack: StackSettings = StackSettings()
    app: AppSettings = AppSettings()
    evaluate: EvaluateSettings = EvaluateSettings()
    ec2: Ec2Settings = Ec2Settings()
    watch: WatchSettings = WatchSettings()
    orchestration: OrchestrationSettings = OrchestrationSettings()

    @field_validator("key_pattern")
    @classmethod
    def _pattern_names_city(cls, value: str) -> str:
        import re

        groups = re.compile(value).groupindex
        if "city" not in groups:
            raise ValueError(f"key_pattern {value!r} has no named group 'city'")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        yaml_file = os.environ.get(CONFIG_ENV_VAR, DEFAULT_CONFIG_FILE)
        if os.environ.get(CONFIG_ENV_VAR) and not Path(yaml_file).is_file():
            raise FileNotFoundError(f"{CONFIG_ENV_VAR}={yaml_file} names no file")
        return (
            init_settings,
            env_settings,
            YamlConfigSettingsSource(settings_cls, yaml_file=yaml_file),
        )

    def storage_options(self) -> dict[str, Any]:
        """fsspec/s3fs options for s3:// URIs; credentials stay with botocore's own chain."""
        client_kwargs: dict[str, Any] = {}
        if self.s3_endpoint_url:
            client_kwargs["endpoint_url"] = self.s3_endpoint_url
        if self.s3_region:
            client_kwargs["region_name"] = self.s3_region
        return {"client_kwargs": client_kwargs} if client_kwargs else {}


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (read once)."""
    return Settings()
