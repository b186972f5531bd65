"""Training checkpoints: the full state, written atomically, loaded without unpickling objects.

A checkpoint is a ``torch.save``d dict of tensors and plain Python values only (state dicts,
numbers, strings, lists, RNG states as tensors), so ``torch.load(weights_only=True)`` reads it.
Files are ``<out_dir>/checkpoints/ckpt-<step>.pt``; each is written to a temporary name and
renamed (one PUT on S3), and only the newest ``keep`` are kept.
"""

from __future__ import annotations

import io
import random
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from housegan import storage

CHECKPOINTS_DIR = "checkpoints"
_NAME = re.compile(r"^ckpt-(\d+)\.pt$")
_PARTIAL = re.compile(r"^\.ckpt-\d+\.pt\..*\.tmp$")  # left behind by a writer killed mid-write


def checkpoint_dir(out_dir: str) -> str:
    return storage.join(storage.normalize_uri(out_dir), CHECKPOINTS_DIR)


def checkpoint_name(step: int) -> str:
    return f"ckpt-{step:09d}.pt"


def list_checkpoints(
    out_dir: str, storage_options: Mapping[str, Any] | None = None
) -> list[tuple[int, str]]:
    """(step, uri) of every complete checkpoint, oldest first; temporary files are ignored."""
    folder = checkpoint_dir(out_dir)
    fs, path = storage.get_fs(folder, storage_options)
    if not fs.exists(path):
        return []
    found = []
    for entry in fs.ls(path, detail=False):
        match = _NAME.match(entry.rstrip("/").rsplit("/", 1)[-1])
        if match:
            found.append((int(match.group(1)), storage.join(folder, match.group(0))))
    return sorted(found)


def latest(out_dir: str, storage_options: Mapping[str, Any] | None = None) -> str | None:
    found = list_checkpoints(out_dir, storage_options)
    return found[-1][1] if found else None


def save(
    state: Mapping[str, Any],
    out_dir: str,
    step: int,
    keep: int,
    storage_options: Mapping[str, Any] | None = None,
) -> str:
    """Write ``state`` as the checkpoint of ``step``, then prune to the newest ``keep``."""
    buffer = io.BytesIO()
    torch.save(dict(state), buffer)
    uri = storage.join(checkpoint_dir(out_dir), checkpoint_name(step))
    storage.write_bytes_atomic(uri, buffer.getvalue(), storage_options)
    fs, folder = storage.get_fs(checkpoint_dir(out_dir), storage_options)
    names = {entry: entry.rstrip("/").rsplit("/", 1)[-1] for entry in fs.ls(folder, detail=False)}
    partial = [entry for entry, name in names.items() if _PARTIAL.match(name)]
    complete = sorted((int(m.group(1)), e) for e, n in names.items() if (m := _NAME.match(n)))
    for path in partial + [entry for _, entry in complete[:-keep]]:
        fs.rm(path)
    return uri


def load(
    uri: str, storage_options: Mapping[str, Any] | None = None, map_location: Any = "cpu"
) -> dict[str, Any]:
    """Read a checkpoint; refuses anything but tensors and plain values (no unpickling)."""
    data = storage.read_bytes(uri, storage_options)
    return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)


def global_rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU and CUDA generator states as plain values and tensors."""
    version, mt_state, gauss = random.getstate()
    numpy_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": [version, list(mt_state), gauss],
        "numpy": {
            "key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
            "pos": int(numpy_state["state"]["pos"]),
            "has_gauss": int(numpy_state["has_gauss"]),
            "gauss": float(numpy_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_global_rng_state(state: Mapping[str, Any]) -> None:
    version, mt_state, gauss = state["python"]
    random.setstate((version, tuple(mt_state), gauss))
    numpy = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": "MT19937",
            "state": {"key": numpy["key"].numpy().astype(np.uint32), "pos": numpy["pos"]},
            "has_gauss": numpy["has_gauss"],
            "gauss": numpy["gauss"],
        }
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
