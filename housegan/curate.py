"""The filtering funnel and the curated manifest.

Per (city, image type) every object passes, or is dropped at, these stages in order:

    objects -> valid -> unique -> not near-duplicate -> wanted type -> good quality
            -> inlier (= training set)

``drop_reason`` names the first stage a row failed. The curated manifest is the image manifest
plus every score behind those decisions, written as a new version of ``manifests/curated``.

The functions here take and return URIs so each can run as its own step
(``housegan.steps.curate``, which also runs the whole stage in order): ``filter_manifest``
(needs the cluster and type runs and the quality scores) writes a staged run under
``<store>/curate/``; ``publish`` makes it the latest curated manifest.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from sklearn.neighbors import NearestNeighbors

from housegan import cluster, manifest, quality, storage
from housegan.config import CurateSettings
from housegan.manifest import IMAGE_MANIFEST_SCHEMA, Status

CURATED_COLLECTION = "manifests/curated"
CURATE_RUNS_DIR = "curate"
STAGES = (
    "objects",
    "valid",
    "unique",
    "not_near_duplicate",
    "wanted_type",
    "good_quality",
    "training_set",
)
# drop_reason for a row that passed stage i-1 but not stage i (STAGES[i]).
DROP_REASONS = ("invalid", "duplicate", "near_duplicate", "unwanted_type", "low_quality", "outlier")
FLAG_COLUMNS = tuple(f"is_{flag}" for flag in quality.QUALITY_FLAGS)

CURATED_SCHEMA = pa.schema(
    [
        *IMAGE_MANIFEST_SCHEMA,
        pa.field("image_type", pa.string(), nullable=False),
        pa.field("type_confidence", pa.float32()),
        pa.field("type_margin", pa.float32()),
        pa.field("type_source", pa.string()),
        pa.field("cluster", pa.int32()),
        pa.field("cluster_distance", pa.float32()),
        *(pa.field(name, pa.float32()) for name in quality.SCORE_COLUMNS),
        pa.field("aspect_ratio", pa.float32()),
        pa.field("quality_error", pa.string()),
        *(pa.field(name, pa.bool_(), nullable=False) for name in FLAG_COLUMNS),
        pa.field("near_dup_of", pa.string()),
        pa.field("near_dup_cosine", pa.float32()),
        pa.field("near_dup_threshold", pa.float32()),
        *(pa.field(name, pa.string()) for name in quality.HASH_COLUMNS),
        pa.field("near_dup_signal", pa.string()),  # deep, hash or deep+hash; None if kept
        pa.field("near_dup_hamming", pa.float32()),  # nearest flip-aware pHash distance
        pa.field("near_dup_hamming_threshold", pa.float32()),  # -1: no hash links
        pa.field("outlier_score", pa.float32()),
        pa.field("is_outlier", pa.bool_(), nullable=False),
        pa.field("keep", pa.bool_(), nullable=False),
        pa.field("drop_reason", pa.string()),
    ],
    # 2: pHash columns and the near-duplicate signal (new columns; old ones mean the same)
    metadata={"housegan.manifest": "curated", "housegan.schema_version": "2"},
)


# --- near-duplicates ---------------------------------------------------------------------------


@dataclass(frozen=True)
class NearDuplicates:
    near_dup_of: np.ndarray  # per row: key of the kept photo of its group, or None
    cosine: np.ndarray  # per row: highest cosine to another row (nearest neighbour)
    threshold: np.ndarray  # per row: the cosine its neighbours had to reach
    thresholds: dict[str, float]  # per group (cluster) the threshold used; "all" for the rest
    calibrated: bool
    groups: int
    # per row: the kinds of link that joined it to its group (deep, hash, agree, "+"-joined)
    signal: np.ndarray = field(default_factory=lambda: np.array([], dtype=object))
    # per row: smallest flip-aware pHash distance to another row within the search radius
    # (NaN: none that close, or no hash), and the distance its links had to stay within
    hamming: np.ndarray = field(default_factory=lambda: np.array([]))
    hamming_threshold: np.ndarray = field(default_factory=lambda: np.array([]))
    hamming_thresholds: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class PerceptualHashes:
    """Per row: the photo's pHash and its mirror image's as uint64 bits, its mean colour (RGB
    in [0, 1]) and log aspect ratio (width / height); ``present`` is False where a photo has
    none of these (unreadable)."""

    bits: np.ndarray
    flipped: np.ndarray
    colour: np.ndarray  # (n, 3)
    log_aspect: np.ndarray
    present: np.ndarray

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> PerceptualHashes:
        """From a curated frame's quality columns and displayed sizes (absent hash columns,
        as in scores made by hand: no hashes)."""
        bits, present = quality.hash_bits(frame.get("phash", pd.Series(None, index=frame.index)))
        flipped, flip_present = quality.hash_bits(
            frame.get("phash_flip", pd.Series(None, index=frame.index))
        )
        columns = list(quality.MEAN_COLOUR_COLUMNS)
        colour = frame.reindex(columns=columns).astype(float).to_numpy()
        aspect = np.log(frame["width"].astype(float) / frame["height"].astype(float)).to_numpy()
        known = np.isfinite(colour).all(axis=1) & np.isfinite(aspect)
        return cls(bits, flipped, colour, aspect, present & flip_present & known)

    def __len__(self) -> int:
        return len(self.bits)


def neighbours(unit: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Cosine and index of each row's ``k`` nearest other rows (unit vectors in).

    sklearn's brute search works through the distance matrix in chunks (``working_memory``),
    so memory stays bounded however many rows there are.
    """
    k = min(k, len(unit) - 1)
    search = NearestNeighbors(n_neighbors=k + 1, algorithm="brute").fit(unit)
    distance, index = search.kneighbors(unit)
    own = index == np.arange(len(unit))[:, None]
    # Drop each row's own entry (usually first; not always when another row is identical).
    keep = ~own
    keep[own.sum(axis=1) == 0, -1] = False
    distance = distance[keep].reshape(len(unit), k)
    index = index[keep].reshape(len(unit), k)
    return 1.0 - distance**2 / 2.0, index


def calibrate_threshold(kth_cosine: np.ndarray, cfg: CurateSettings) -> float:
    """The cosine above which two photos count as near-duplicates, from the data itself.

    A photo's k-th nearest neighbour is, unless it has k or more copies, a distinct photo, so
    a high percentile of that similarity is as close as distinct photos get here. A
    near-duplicate must be closer than that: within ``near_duplicate_gap_fraction`` of the
    remaining distance to a perfect match (1 - cosine).
    """
    distinct = float(np.percentile(kth_cosine, cfg.near_duplicate_percentile))
    threshold = 1.0 - cfg.near_duplicate_gap_fraction * (1.0 - distinct)
    return float(min(0.9999, max(cfg.near_duplicate_min_cosine, threshold)))


def group_thresholds(
    kth_cosine: np.ndarray, groups: np.ndarray, cfg: CurateSettings
) -> tuple[np.ndarray, dict[str, float]]:
    """Per-row thresholds calibrated within each group (cluster): photo kinds differ in how
    alike distinct photos look (floorplans far more than exteriors). Groups too small to
    calibrate on use the threshold of all rows."""
    overall = calibrate_threshold(kth_cosine, cfg)
    per_row = np.full(len(kth_cosine), overall)
    used = {"all": overall}
    for group in np.unique(groups):
        members = groups == group
        if members.sum() >= cfg.near_duplicate_min_group:
            used[str(group)] = calibrate_threshold(kth_cosine[members], cfg)
            per_row[members] = used[str(group)]
    return per_row, used


def _distances(
    query_bits: np.ndarray, query_flipped: np.ndarray, bits: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Hamming distances (uint8, queries x rows) of each query's pHash and of its mirror
    image's pHash to each row's pHash."""
    direct = np.bitwise_count(query_bits[:, None] ^ bits[None, :])
    return direct, np.bitwise_count(query_flipped[:, None] ^ bits[None, :])


def _alike(hashes: PerceptualHashes, a: np.ndarray, b: np.ndarray, cfg: CurateSettings):
    """Whether rows ``a`` and ``b`` could be copies of each other by what pHash cannot see.

    pHash reads gray structure only, so a template in another colourway (a listing site's
    sign, a floor-plan style) or the same kind of shot framed at another aspect ratio would
    match. The copies in question keep both: resizing, re-encoding and mirroring change the
    mean colour by a few levels and the aspect ratio not at all, a crop of up to 5 % a side
    the aspect ratio by at most ~5 %.
    """
    colour = np.abs(hashes.colour[a] - hashes.colour[b]).max(axis=-1)
    aspect = np.abs(hashes.log_aspect[a] - hashes.log_aspect[b])
    return (colour <= cfg.near_duplicate_max_colour_shift) & (
        aspect <= np.log1p(cfg.near_duplicate_max_aspect_change)
    )


def _block_rows(n: int, cfg: CurateSettings) -> int:
    # A block holds two (rows x n) uint64 XORs and their uint8 popcounts at a time.
    return max(1, cfg.near_duplicate_block_mib * 2**20 // (18 * max(n, 1)))


@dataclass(frozen=True)
class HashLinks:
    hashed: tuple[np.ndarray, np.ndarray]  # (i, j): linked by the hash alone
    agreed: tuple[np.ndarray, np.ndarray]  # (i, j): near by the hash and by the deep features
    nearest: np.ndarray  # per row: pHash distance to the nearest other row (NaN: far)


def hamming_links(
    hashes: PerceptualHashes,
    threshold: np.ndarray,
    cfg: CurateSettings,
    agrees: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
) -> HashLinks:
    """The pairs i < j the hash links, and per row the pHash distance (direct or mirrored,
    the nearer) to its nearest other row within the search radius (a threshold of -1: the
    row links nothing).

    A pair links by the hash alone when its direct distance is within the threshold of both
    rows, or its mirrored distance within ``near_duplicate_mirror_fraction`` of that
    (mirror-symmetric scenes, a house front or a floor plan, make mirrored look-alikes
    common); it links by agreement when its direct distance is within
    ``near_duplicate_agree_hash_factor`` times the threshold and ``agrees`` (the deep
    features, looser than alone) says so too: a crop moves the pHash and the deep features
    each a little too far, rarely both. Either way ``_alike`` must hold.

    An exact search, a block of rows against the rows from it on (numpy popcount): memory is
    a few blocks (``near_duplicate_block_mib`` in all) plus the links, never an N x N matrix;
    blocks run in threads (numpy releases the GIL). Bucketing schemes such as multi-index
    hashing do not pay at radius ~10 of 64 bits (a near-duplicate need share no long exact
    substring), so brute force it is: about a minute for 200k photos on 2 cores.
    """
    n = len(hashes)
    none = np.array([], dtype=np.int64)
    rows = np.flatnonzero(hashes.present & (threshold >= 0))
    factor = cfg.near_duplicate_agree_hash_factor if agrees is not None else 1.0
    radius = int(np.floor(threshold[rows].max() * factor)) if len(rows) else -1
    if len(rows) < 2 or radius < 0:
        return HashLinks((none, none), (none, none), np.full(n, np.nan))
    bits, flipped = hashes.bits[rows], hashes.flipped[rows]
    limit = threshold[rows].astype(float)
    workers = min(4, os.cpu_count() or 1)
    step = max(1, _block_rows(len(rows), cfg) // workers)

    def block(start: int) -> tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        stop = min(start + step, len(rows))
        direct, mirrored = _distances(bits[start:stop], flipped[start:stop], bits[start:])
        distance = np.minimum(direct, mirrored)
        own = np.arange(stop - start)
        distance[own, own] = np.iinfo(distance.dtype).max  # a row is not its own neighbour
        a, b = np.nonzero(distance <= radius)
        a, b = a[b > a], b[b > a]  # the rest of the block's square is mirrored here
        allowed = np.minimum(limit[a + start], limit[b + start])
        alone = (direct[a, b] <= allowed) | (
            mirrored[a, b] <= np.floor(allowed * cfg.near_duplicate_mirror_fraction)
        )
        near = ~alone & (direct[a, b] <= np.floor(allowed * factor))
        a, b = rows[a + start], rows[b + start]
        alike = _alike(hashes, a, b, cfg)
        kind = np.where(alone & alike, 1, 0)
        if agrees is not None and (near & alike).any():
            kind[near & alike] = np.where(agrees(a[near & alike], b[near & alike]), 2, 0)
        return (
            start,
            np.stack([a, b])[:, kind > 0],
            kind[kind > 0],
            distance.min(1),
            distance.min(0),
        )

    nearest = np.full(len(rows), np.iinfo(np.uint8).max, dtype=np.uint8)
    pairs, kinds = [np.empty((2, 0), dtype=np.int64)], [np.empty(0, dtype=int)]
    starts = list(range(0, len(rows), step))
    with ThreadPoolExecutor(workers) as pool:
        for batch in range(0, len(starts), workers):  # a few blocks in memory at a time
            for start, linked, kind, row_min, column_min in pool.map(
                block, starts[batch : batch + workers]
            ):
                stop = start + len(row_min)
                nearest[start:stop] = np.minimum(nearest[start:stop], row_min)
                nearest[start:] = np.minimum(nearest[start:], column_min)
                pairs.append(linked)
                kinds.append(kind)
    linked, kind = np.concatenate(pairs, axis=1), np.concatenate(kinds)
    per_row = np.full(n, np.nan)
    per_row[rows] = np.where(nearest <= radius, nearest, np.nan)
    hashed, agreed = linked[:, kind == 1], linked[:, kind == 2]
    return HashLinks((hashed[0], hashed[1]), (agreed[0], agreed[1]), per_row)


def kth_hamming(
    hashes: PerceptualHashes, queries: np.ndarray, k: int, cfg: CurateSettings
) -> np.ndarray:
    """Per query row: pHash distance (direct or mirrored, the nearer) to its k-th nearest
    other row with a hash, whatever its colour or shape: how crowded pHash space is here."""
    bits = hashes.bits[hashes.present]
    k = min(k, len(bits) - 1)
    step = _block_rows(len(bits), cfg)
    out = []
    for start in range(0, len(queries), step):
        rows = queries[start : start + step]
        distance = np.minimum(*_distances(hashes.bits[rows], hashes.flipped[rows], bits))
        out.append(np.partition(distance, k, axis=1)[:, k])  # position 0: the row itself
    return np.concatenate(out) if out else np.array([], dtype=np.uint8)


def calibrate_hamming(kth_distance: np.ndarray, cfg: CurateSettings) -> int:
    """The pHash distance within which two photos count as near-duplicates, from the data.

    A photo's k-th nearest neighbour is, unless it has k or more copies, a distinct photo;
    distinct photos' distances bunch around their median, and the robust low end of that bunch
    (median - ``near_duplicate_hash_spread`` x the scaled median absolute deviation) is as
    close as distinct photos get here. A near-duplicate must be strictly closer. Robust rather
    than a low percentile: a few look-alikes (two mirror-image halves of one picture, a
    template with five colourways) would drag a percentile of a small cluster down to zero.
    Where distinct photos share hashes (blank pictures) the hash links nothing (-1).
    """
    distances = np.asarray(kth_distance, dtype=float)
    median = float(np.median(distances))
    spread = 1.4826 * float(np.median(np.abs(distances - median)))  # ~ sigma of a normal
    distinct = max(0.0, median - cfg.near_duplicate_hash_spread * spread)
    return min(cfg.near_duplicate_max_hamming, int(np.ceil(distinct)) - 1)


def hamming_thresholds(
    hashes: PerceptualHashes, groups: np.ndarray, cfg: CurateSettings
) -> tuple[np.ndarray, dict[str, int]]:
    """Per-row Hamming thresholds calibrated within each group, measured on a seeded sample of
    at most ``near_duplicate_calibration_rows`` rows per group (against all rows, so it stays
    bounded). Groups too small use the threshold of all rows; rows without a hash get -1."""
    rng = np.random.default_rng(0)
    k = max(cfg.knn_k, 1)

    def sample(rows: np.ndarray) -> np.ndarray:
        size = min(len(rows), cfg.near_duplicate_calibration_rows)
        return np.sort(rng.choice(rows, size, replace=False))

    present = np.flatnonzero(hashes.present)
    overall = calibrate_hamming(kth_hamming(hashes, sample(present), k, cfg), cfg)
    per_row = np.where(hashes.present, overall, -1)
    used = {"all": overall}
    for group in np.unique(groups):
        members = present[groups[present] == group]
        if len(members) >= cfg.near_duplicate_min_group:
            measured = kth_hamming(hashes, sample(members), k, cfg)
            used[str(group)] = calibrate_hamming(measured, cfg)
            per_row[members] = used[str(group)]
    return per_row, used


def _hash_links(
    hashes: PerceptualHashes | None,
    groups: np.ndarray,
    cfg: CurateSettings,
    agrees: Callable[[np.ndarray, np.ndarray], np.ndarray],
) -> tuple[HashLinks, np.ndarray, dict[str, int]]:
    """The pHash links, each row's Hamming threshold and the threshold per group."""
    n = len(groups)
    if hashes is None or not cfg.near_duplicate_hash or hashes.present.sum() < 2:
        none = np.array([], dtype=np.int64)
        return HashLinks((none, none), (none, none), np.full(n, np.nan)), np.full(n, -1.0), {}
    if cfg.near_duplicate_hamming is None:
        threshold, used = hamming_thresholds(hashes, groups, cfg)
    else:
        threshold = np.where(hashes.present, cfg.near_duplicate_hamming, -1)
        used = {"all": cfg.near_duplicate_hamming}
    return hamming_links(hashes, threshold, cfg, agrees), threshold.astype(float), used


def find_near_duplicates(
    keys: np.ndarray,
    reduced: np.ndarray,
    cfg: CurateSettings,
    groups: np.ndarray | None = None,
    hashes: PerceptualHashes | None = None,
) -> NearDuplicates:
    """Group photos that the deep features, the perceptual hash or both call near-duplicates.

    Deep: two photos are linked when the cosine of their centred, projected embeddings
    reaches the threshold of both (per-group calibrated unless ``near_duplicate_cosine`` is
    set). Hash: when their pHash distance is within the Hamming threshold of both (per-group
    calibrated unless ``near_duplicate_hamming`` is set; see ``hamming_links``): it catches
    what random-init deep features miss, mirrored copies above all. Agreement: a pHash
    distance somewhat above the threshold plus a cosine within
    ``near_duplicate_agree_deep_factor`` times the deep threshold's distance to 1. Groups are
    the connected components of all links; the first key of each is kept and the others
    point at it.
    """
    n = len(keys)
    if n < 2:
        fixed = cfg.near_duplicate_cosine or 1.0
        nothing = np.full(n, None, dtype=object)
        return NearDuplicates(
            nothing,
            np.full(n, np.nan),
            np.full(n, fixed),
            {},
            False,
            0,
            nothing.copy(),
            np.full(n, np.nan),
            np.full(n, -1.0),
            {},
        )
    groups = np.zeros(n, dtype=int) if groups is None else np.asarray(groups)
    unit = cluster.normalize_rows(reduced)
    cosine, index = neighbours(unit, max(cfg.knn_k, 1))
    calibrated = cfg.near_duplicate_cosine is None
    if calibrated:
        threshold, used = group_thresholds(cosine[:, -1], groups, cfg)
    else:
        threshold = np.full(n, cfg.near_duplicate_cosine)
        used = {"all": cfg.near_duplicate_cosine}
    linked = (cosine >= threshold[:, None]) & (cosine >= threshold[index])
    rows, cols = np.nonzero(linked)
    deep = (rows, index[rows, cols])
    loose = 1.0 - cfg.near_duplicate_agree_deep_factor * (1.0 - threshold)

    def agrees(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.einsum("ij,ij->i", unit[a], unit[b]) >= np.maximum(loose[a], loose[b])

    links, hamming_threshold, hamming_used = _hash_links(hashes, groups, cfg, agrees)
    every = (deep, links.hashed, links.agreed)
    a = np.concatenate([pair[0] for pair in every])
    b = np.concatenate([pair[1] for pair in every])
    graph = coo_matrix((np.ones(len(a)), (a, b)), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    order = np.argsort(keys.astype(str), kind="stable")
    first_of = pd.Series(order, index=component[order]).groupby(level=0).first()
    keeper = first_of.loc[component].to_numpy()
    near_dup_of = np.where(keeper != np.arange(n), keys[keeper], None)
    sizes = np.bincount(component)
    return NearDuplicates(
        near_dup_of,
        cosine[:, 0],
        threshold,
        used,
        calibrated,
        int((sizes > 1).sum()),
        _signals(n, {"deep": deep, "hash": links.hashed, "agree": links.agreed}, near_dup_of),
        links.nearest,
        hamming_threshold,
        hamming_used,
    )


def _signals(
    n: int, links: Mapping[str, tuple[np.ndarray, np.ndarray]], near_dup_of: np.ndarray
) -> np.ndarray:
    """Per row: the kinds of its own links joined by "+" (deep, hash, agree, in that order,
    e.g. "deep+hash"); None for a row that is kept."""
    names = np.full(n, "", dtype=object)
    for name, (a, b) in links.items():
        mine = np.zeros(n, dtype=bool)
        mine[a] = mine[b] = True
        names[mine] = np.where(names[mine] == "", name, names[mine] + "+" + name)
    names[(names == "") | pd.isna(near_dup_of)] = None
    return names


# --- outliers ---------------------------------------------------------------------------------


def outlier_scores(
    reduced: np.ndarray, groups: pd.Series, cfg: CurateSettings
) -> tuple[np.ndarray, np.ndarray]:
    """Per row: mean distance to its k nearest neighbours within its group, divided by the
    group's median of that, and whether it is above the group's ``outlier_percentile``.

    Groups smaller than ``outlier_min_group`` are too small to judge: no score, no outlier.
    """
    scores = np.full(len(reduced), np.nan, dtype=np.float32)
    is_outlier = np.zeros(len(reduced), dtype=bool)
    for _, members in groups.groupby(groups, sort=True).groups.items():
        rows = np.asarray(groups.index.get_indexer(members))
        if len(rows) < max(cfg.outlier_min_group, cfg.knn_k + 2):
            continue
        cosine, _ = neighbours(cluster.normalize_rows(reduced[rows]), cfg.knn_k)
        distance = np.sqrt(np.maximum(2.0 - 2.0 * cosine, 0.0)).mean(axis=1)
        score = distance / max(float(np.median(distance)), 1e-12)
        scores[rows] = score
        is_outlier[rows] = score > np.percentile(score, cfg.outlier_percentile)
    return scores, is_outlier


# --- the funnel -------------------------------------------------------------------------------


def stage_masks(frame: pd.DataFrame, wanted_types: tuple[str, ...]) -> dict[str, pd.Series]:
    """Which rows reach each stage (each mask implies the previous one)."""
    valid = frame["status"].isin([Status.OK, Status.DUPLICATE])
    unique = valid & (frame["status"] == Status.OK)
    not_near_dup = unique & frame["near_dup_of"].isna()
    wanted = not_near_dup & frame["image_type"].isin(wanted_types)
    good = wanted & ~frame[list(FLAG_COLUMNS)].any(axis=1) & frame["quality_error"].isna()
    inlier = good & ~frame["is_outlier"]
    values = (pd.Series(True, index=frame.index), valid, unique, not_near_dup, wanted, good, inlier)
    return dict(zip(STAGES, values, strict=True))


def drop_reasons(masks: Mapping[str, pd.Series]) -> pd.Series:
    """The first stage each row failed, named by ``DROP_REASONS``; None for kept rows."""
    reason = pd.Series(None, index=masks["objects"].index, dtype=object)
    for stage, name in zip(STAGES[1:], DROP_REASONS, strict=True):
        previous = STAGES[STAGES.index(stage) - 1]
        reason[masks[previous] & ~masks[stage]] = name
    return reason


def funnel_table(frame: pd.DataFrame, wanted_types: tuple[str, ...]) -> pd.DataFrame:
    """Rows reaching each stage per (city, image_type), then a total row."""
    masks = stage_masks(frame, wanted_types)
    counts = pd.DataFrame({stage: mask.astype(int) for stage, mask in masks.items()})
    counts["city"] = frame["city"].fillna("?")
    counts["image_type"] = frame["image_type"]
    table = counts.groupby(["city", "image_type"], as_index=False)[list(STAGES)].sum()
    total = pd.DataFrame([{"city": "ALL", "image_type": "ALL", **counts[list(STAGES)].sum()}])
    return pd.concat([table, total], ignore_index=True)


def funnel_totals(funnel: pd.DataFrame) -> dict[str, int]:
    total = funnel[(funnel["city"] == "ALL") & (funnel["image_type"] == "ALL")].iloc[0]
    return {stage: int(total[stage]) for stage in STAGES}


# --- the filter stage -------------------------------------------------------------------------


@dataclass(frozen=True)
class FilterResult:
    uri: str  # the staged curated frame (Parquet), not yet the latest curated manifest
    run_uri: str
    funnel: dict[str, int]
    drop_counts: dict[str, int]
    near_duplicate_cosine: dict[str, float]  # threshold per cluster ("all": the rest)
    near_duplicate_calibrated: bool
    near_duplicate_groups: int
    galleries: dict[str, str] = field(default_factory=dict)  # drop reason -> PNG URI
    near_duplicate_hamming: dict[str, int] = field(default_factory=dict)  # per cluster, "all"
    near_duplicate_signals: dict[str, int] = field(default_factory=dict)  # signal -> rows

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def assemble(
    images: pd.DataFrame,
    clusters: pd.DataFrame,
    types: pd.DataFrame,
    scores: pd.DataFrame,
    cfg: CurateSettings,
) -> pd.DataFrame:
    """The image manifest joined with the per-content columns (cluster, type, quality)."""
    frame = images.reset_index(drop=True)
    frame = frame.merge(clusters, on="sha256", how="left", validate="many_to_one")
    frame["cluster"] = frame["cluster"].astype("Int32")
    frame = frame.merge(types, on="sha256", how="left", validate="many_to_one")
    # Scores without hashes or mean colours (made by hand, say): no hash signal for those.
    optional = (*quality.HASH_COLUMNS, *quality.MEAN_COLOUR_COLUMNS)
    scores = scores.assign(**{name: None for name in optional if name not in scores})
    score_cols = ["sha256", *quality.SCORE_COLUMNS, *quality.HASH_COLUMNS, "error"]
    scored = scores[score_cols].rename(columns={"error": "quality_error"})
    frame = frame.merge(scored, on="sha256", how="left", validate="many_to_one")
    frame["image_type"] = frame["image_type"].fillna(cluster.UNKNOWN_TYPE)
    frame["type_source"] = frame["type_source"].fillna("none")
    frame["aspect_ratio"] = (
        np.maximum(frame["width"], frame["height"]) / np.minimum(frame["width"], frame["height"])
    ).astype("float64")
    flags = quality.flag_frame(frame, frame["width"], frame["height"], cfg)
    for flag in quality.QUALITY_FLAGS:
        # Flags not listed in drop_flags are recorded in the scores, not acted on.
        frame[f"is_{flag}"] = flags[flag] & (flag in cfg.drop_flags)
    return frame


def decide(frame: pd.DataFrame, reduced: np.ndarray, cfg: CurateSettings) -> NearDuplicates:
    """Fill near-duplicate, outlier, keep and drop_reason columns in place.

    ``reduced`` holds the PCA rows of ``frame`` (NaN where a row has no embedding).
    """
    embedded = frame["cluster"].notna() & (frame["status"] == Status.OK)
    rows = np.flatnonzero(embedded.to_numpy())
    clusters = frame["cluster"].iloc[rows].astype(int).to_numpy()
    hashes = PerceptualHashes.from_frame(frame.iloc[rows])
    keys = frame["key"].to_numpy()[rows]
    near = find_near_duplicates(keys, reduced[rows], cfg, clusters, hashes)
    columns = {
        "near_dup_of": near.near_dup_of,
        "near_dup_cosine": near.cosine,
        "near_dup_threshold": near.threshold,
        "near_dup_signal": near.signal,
        "near_dup_hamming": near.hamming,
        "near_dup_hamming_threshold": near.hamming_threshold,
    }
    for name, values in columns.items():
        frame[name] = None if values.dtype == object else np.nan
        frame.loc[rows, name] = values
    frame["is_outlier"] = False
    masks = stage_masks(frame, cfg.wanted_types)
    candidates = np.flatnonzero(masks["good_quality"].to_numpy())
    groups = frame["city"].fillna("?") + "/" + frame["image_type"]
    scores, is_outlier = outlier_scores(
        reduced[candidates], groups.iloc[candidates].reset_index(drop=True), cfg
    )
    frame["outlier_score"] = np.nan
    frame.loc[candidates, "outlier_score"] = scores
    frame.loc[candidates, "is_outlier"] = is_outlier
    masks = stage_masks(frame, cfg.wanted_types)
    frame["keep"] = masks["training_set"]
    frame["drop_reason"] = drop_reasons(masks)
    return near


def filter_manifest(
    manifest_uri: str,
    clusters_uri: str,
    types_uri: str,
    store_uri: str,
    cfg: CurateSettings,
    storage_options: Mapping[str, Any] | None = None,
    thumb_size: int = 96,
) -> FilterResult:
    """Run the funnel and stage the curated frame (plus funnel table and galleries)."""
    images = read_images(manifest_uri, storage_options)
    cluster_frame, pca = cluster.read_clusters(clusters_uri, storage_options)
    types = manifest.read(types_uri, storage_options)
    scores = quality.load_scores(store_uri, images["sha256"].dropna().unique(), storage_options)
    frame = assemble(images, cluster_frame, types, scores, cfg)
    position = pd.Index(cluster_frame["sha256"]).get_indexer(frame["sha256"])
    reduced = np.full((len(frame), pca.shape[1]), np.nan, dtype=np.float32)
    reduced[position >= 0] = pca[position[position >= 0]]
    near = decide(frame, reduced, cfg)
    funnel = funnel_table(frame, cfg.wanted_types)
    run_uri = storage.join(store_uri, CURATE_RUNS_DIR, storage.new_version_name(""))
    staged = storage.join(run_uri, "curated.parquet")
    _write_parquet(frame, CURATED_SCHEMA, staged, storage_options)
    _write_parquet(funnel, None, storage.join(run_uri, "funnel.parquet"), storage_options)

    def loader(uri: str):
        return quality.load_image(uri, thumb_size, storage_options)

    galleries = dropped_galleries(frame, run_uri, cfg, loader, thumb_size, storage_options)
    result = FilterResult(
        uri=staged,
        run_uri=run_uri,
        funnel=funnel_totals(funnel),
        drop_counts={r: int((frame["drop_reason"] == r).sum()) for r in DROP_REASONS},
        near_duplicate_cosine=near.thresholds,
        near_duplicate_calibrated=near.calibrated,
        near_duplicate_groups=near.groups,
        galleries=galleries,
        near_duplicate_hamming=near.hamming_thresholds,
        near_duplicate_signals=frame["near_dup_signal"].value_counts().to_dict(),
    )
    summary = json.dumps(result.as_dict(), indent=2).encode()
    storage.write_bytes_atomic(storage.join(run_uri, "summary.json"), summary, storage_options)
    return result


def dropped_galleries(
    frame: pd.DataFrame,
    run_uri: str,
    cfg: CurateSettings,
    load_thumbnail: Callable[[str], Any],
    thumb_size: int,
    storage_options: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """A labelled grid PNG of (a seeded sample of) the photos dropped for each reason."""
    galleries = {}
    for reason in DROP_REASONS:
        if reason == "invalid" or cfg.gallery_size == 0:
            continue  # invalid objects have no picture to show
        dropped = frame[frame["drop_reason"] == reason].sort_values("key")
        if dropped.empty:
            continue
        sample = dropped.sample(min(cfg.gallery_size, len(dropped)), random_state=0)
        images, captions = [], []
        for row in sample.itertuples():
            try:
                images.append(load_thumbnail(row.uri))
            except Exception:  # a gallery never fails the stage
                continue
            captions.append(f"{row.image_type} {_caption(row, reason)}")
        title = f"dropped: {reason} ({len(dropped)} photos, {len(images)} shown)"
        grid = cluster.image_grid(images, captions, ncols=8, tile=thumb_size, title=title)
        galleries[reason] = storage.join(run_uri, f"dropped-{reason}.png")
        storage.write_bytes_atomic(galleries[reason], cluster.png_bytes(grid), storage_options)
    return galleries


def _caption(row: Any, reason: str) -> str:
    if reason == "near_duplicate":
        return f"cos {row.near_dup_cosine:.3f}"
    if reason == "outlier":
        return f"score {row.outlier_score:.2f}"
    if reason == "low_quality":
        flags = [flag for flag in quality.QUALITY_FLAGS if getattr(row, f"is_{flag}")]
        return ",".join(flags) or "unreadable"
    return ""


def _write_parquet(
    frame: pd.DataFrame,
    schema: pa.Schema | None,
    uri: str,
    storage_options: Mapping[str, Any] | None,
) -> None:
    table = (
        manifest.to_table(frame, schema)
        if schema is not None
        else pa.Table.from_pandas(frame, preserve_index=False)
    )
    storage.write_parquet(table, uri, storage_options)


def publish(
    staged_uri: str,
    store_uri: str,
    metadata: Mapping[str, Any] | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> str:
    """Make a staged curated frame the latest version of ``manifests/curated``."""
    frame = manifest.read(staged_uri, storage_options)
    collection = manifest.collection_uri(store_uri, CURATED_COLLECTION)
    return manifest.write_version(
        frame,
        collection,
        CURATED_SCHEMA,
        {"staged": staged_uri, **(metadata or {})},
        storage_options,
    )


def read_funnel(run_uri: str, storage_options: Mapping[str, Any] | None = None) -> pd.DataFrame:
    return manifest.read(storage.join(run_uri, "funnel.parquet"), storage_options)


# --- reading ----------------------------------------------------------------------------------


def read_images(
    manifest_uri: str, storage_options: Mapping[str, Any] | None = None
) -> pd.DataFrame:
    return manifest.read(manifest.resolve(manifest_uri, storage_options), storage_options)
