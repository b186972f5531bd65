"""Near-duplicates: the perceptual-hash signal, its calibration and search, and recall /
false duplicates on held-out real photos run through the real curate stage."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageOps

from housegan import curate, quality
from housegan.config import CurateSettings
from housegan.curate import PerceptualHashes
from housegan.testing import copies


def hashes_of(bits, flipped=None, colour=None, aspect=None) -> PerceptualHashes:
    bits = np.asarray(bits, dtype=np.uint64)
    n = len(bits)
    return PerceptualHashes(
        bits,
        bits.copy() if flipped is None else np.asarray(flipped, dtype=np.uint64),
        np.full((n, 3), 0.5) if colour is None else np.asarray(colour, dtype=float),
        np.zeros(n) if aspect is None else np.asarray(aspect, dtype=float),
        np.ones(n, dtype=bool),
    )


def random_bits(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2**63, n, dtype=np.int64).view(np.uint64)


def flip_bits(bits: np.ndarray, count: int, seed: int = 0) -> np.ndarray:
    """``bits`` with ``count`` distinct bits of each value inverted."""
    rng = np.random.default_rng(seed)
    out = bits.copy()
    for i in range(len(out)):
        for bit in rng.choice(64, count, replace=False):
            out[i] ^= np.uint64(1) << np.uint64(bit)
    return out


# --- the hash itself --------------------------------------------------------------------------


def test_a_mirrored_photo_matches_the_originals_mirror_hash():
    image = copies.real_photos(gray=False)["coffee"]
    original = quality.perceptual_hashes(image)
    mirrored = quality.perceptual_hashes(ImageOps.mirror(image))
    bits, _ = quality.hash_bits([original["phash"], original["phash_flip"], mirrored["phash"]])
    assert np.bitwise_count(bits[1] ^ bits[2]) <= 2  # the mirror's hash is the flip hash
    assert np.bitwise_count(bits[0] ^ bits[2]) > 16  # and far from the plain one


def test_stored_quality_scores_carry_the_hashes_and_mean_colour(tmp_path: Path):
    from housegan import manifest
    from housegan.testing.curation import manifest_frame

    red = tmp_path / "red.png"
    Image.new("RGB", (64, 48), (200, 40, 40)).save(red)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a picture")
    rows = [
        {"key": "c/l/red.png", "uri": red.as_uri(), "sha256": "s0"},
        {"key": "c/l/broken.png", "uri": broken.as_uri(), "sha256": "s1"},
    ]
    store = (tmp_path / "store").as_uri()
    images = manifest.collection_uri(store)
    manifest.write_version(manifest_frame(rows), images, manifest.IMAGE_MANIFEST_SCHEMA)
    quality.compute_quality(images, store, CurateSettings())
    scores = quality.load_scores(store).set_index("sha256")
    assert len(scores.loc["s0", "phash"]) == len(scores.loc["s0", "phash_flip"]) == 16
    assert scores.loc["s0", "mean_red"] == pytest.approx(200 / 255, abs=0.01)
    assert pd.isna(scores.loc["s1", "phash"]) and scores.loc["s1", "error"]


# --- search and calibration -------------------------------------------------------------------


def test_hamming_search_finds_exactly_the_pairs_within_the_threshold_block_by_block():
    bits = random_bits(300)
    near = flip_bits(bits[:40], 3, seed=1)  # 40 copies 3 bits from their originals
    hashes = hashes_of(np.concatenate([bits, near]))
    threshold = np.full(len(hashes), 4)
    small_blocks = CurateSettings(near_duplicate_block_mib=1)
    links = curate.hamming_links(hashes, threshold, small_blocks)
    found = set(zip(*links.hashed, strict=True))
    assert found == {(i, 300 + i) for i in range(40)}
    assert (links.nearest[:40] == 3).all() and np.isnan(links.nearest[41:300]).all()
    again = curate.hamming_links(hashes, threshold, CurateSettings())
    assert set(zip(*again.hashed, strict=True)) == found


def test_hamming_search_memory_is_bounded_by_the_block_size(monkeypatch):
    seen = []
    real = curate._distances

    def spy(query_bits, query_flipped, bits):
        seen.append(len(query_bits) * len(bits))
        return real(query_bits, query_flipped, bits)

    monkeypatch.setattr(curate, "_distances", spy)
    n = 4000
    cfg = CurateSettings(near_duplicate_block_mib=1)
    curate.hamming_links(hashes_of(random_bits(n)), np.full(n, 8), cfg)
    assert len(seen) > 1 and max(seen) * 18 <= 2**20  # never an n x n matrix


def test_mirrored_matches_need_the_stricter_mirror_threshold():
    bits, flipped = random_bits(3), random_bits(3, seed=5)
    # Rows 1 and 2 are mirror images of row 0, 4 and 2 bits off: a mirror image's hash is
    # the original's mirror hash and the other way round.
    bits[1:] = flip_bits(flipped[[0, 0]], 2, seed=2)
    flipped[1:] = flip_bits(bits[[0, 0]], 2, seed=3)
    bits[1] = flip_bits(bits[1:2], 2, seed=4)[0]
    hashes = hashes_of(bits, flipped)
    links = curate.hamming_links(hashes, np.full(3, 6), CurateSettings())
    found = set(zip(*links.hashed, strict=True))
    assert (0, 2) in found and (0, 1) not in found  # 2 <= 6 x 0.5 < 4


def test_hash_links_need_the_same_colour_and_shape():
    bits = random_bits(4)
    bits[1] = bits[2] = bits[3] = bits[0]
    colour = [[0.5, 0.5, 0.5], [0.52, 0.5, 0.49], [0.5, 0.7, 0.5], [0.5, 0.5, 0.5]]
    aspect = [np.log(4 / 3), np.log(4 / 3 * 1.04), np.log(4 / 3), np.log(3 / 2)]
    hashes = hashes_of(bits, colour=colour, aspect=aspect)
    links = curate.hamming_links(hashes, np.full(4, 6), CurateSettings())
    assert set(zip(*links.hashed, strict=True)) == {(0, 1)}


def test_hamming_calibration_ignores_a_few_look_alikes_and_gives_up_on_blank_pictures():
    rng = np.random.default_rng(0)
    kth = rng.normal(24, 2.5, 200).round()
    kth[:12] = 2  # a handful of near-identical templates
    cfg = CurateSettings()
    threshold = curate.calibrate_hamming(kth, cfg)
    assert 9 <= threshold <= cfg.near_duplicate_max_hamming
    assert curate.calibrate_hamming(np.zeros(50), cfg) == -1
    assert curate.calibrate_hamming(np.full(50, 40.0), cfg) == cfg.near_duplicate_max_hamming


def test_a_mirrored_copy_the_deep_features_miss_is_found_by_the_hash():
    rng = np.random.default_rng(0)
    n = 60
    reduced = rng.normal(size=(n, 16))  # the copy's vector is as far as any other photo's
    bits, flipped = random_bits(n), random_bits(n, seed=9)
    bits[n - 1], flipped[n - 1] = flipped[0], bits[0]  # the last photo mirrors the first
    keys = np.array([f"k{i:02d}" for i in range(n)], dtype=object)
    near = curate.find_near_duplicates(
        keys, reduced, CurateSettings(), None, hashes_of(bits, flipped)
    )
    assert near.near_dup_of[n - 1] == "k00" and near.signal[n - 1] == "hash"
    assert near.cosine[n - 1] < near.threshold[n - 1]  # no deep link
    assert pd.isna(near.near_dup_of[1 : n - 1]).all()


# --- held-out real photos through the curate stage ----------------------------------------------


@pytest.fixture(scope="module")
def held_out(tmp_path_factory) -> pd.DataFrame:
    """Tiles of scikit-image's and scikit-learn's bundled photographs (never drawn by our code)
    and four copies of each, curated with the default settings (VGG16 weights=None, 224 px)."""
    root = tmp_path_factory.mktemp("held-out")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HOME", str(root))  # nothing may come from a download cache
        photos = copies.held_out_copy_set()
        return copies.curate_photos(photos, root)


@pytest.mark.slow
def test_held_out_copies_are_caught_and_distinct_photos_are_not(held_out):
    report = copies.copy_report(held_out)
    print("\n" + report.text())
    recall = report.recall.set_index(["image_type", "kind"])["recall"]
    false = report.false_duplicates.set_index("image_type")
    assert report.recall["copies"].iloc[-1] >= 250 and false.loc["all", "photos"] >= 60
    assert recall[("all", "all")] >= 0.95
    assert false.loc["all", "rate"] <= 0.01
    for kind in ("resized", "reencoded", "resized+reencoded", "flipped", "flipped+reencoded"):
        assert recall[("all", kind)] >= 0.95, kind


@pytest.mark.slow
def test_every_held_out_near_duplicate_records_its_signal(held_out):
    dropped = held_out[held_out["near_dup_of"].notna()]
    assert dropped["near_dup_signal"].notna().all()
    signals = set("+".join(dropped["near_dup_signal"]).split("+"))
    assert {"deep", "hash"} <= signals <= {"deep", "hash", "agree"}
    flips = dropped[dropped["kind"] == "flipped"]
    assert flips["near_dup_signal"].str.contains("hash").all()  # deep features miss mirrors
    assert (held_out["near_dup_hamming_threshold"].dropna() <= 12).all()
