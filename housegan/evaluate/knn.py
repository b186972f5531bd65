"""Exact k nearest neighbours in blocks: bounded memory however many rows there are.

10k generated x 200k real x 4096-d would be an 8 GB similarity matrix; it is never built. Keys
(the large side) are read one block at a time, each block is centred/normalized once, every
query block is multiplied against it (``torch.mm``) and reduced with ``topk``; a running best
``[n_queries, k]`` is all that outlives a block. Block sizes follow from a memory budget
(``plan_blocks``), so the working set stays under it whatever the inputs' sizes.

With ``precision="bfloat16"`` the block products run in bf16 (about 3.5x float32 on a CPU with
AVX-512 bf16) and the best ``k + rerank`` candidates of every query are re-scored exactly in
float32 at the end: the values returned are float32 products of the inputs, and the winner
differs from a float32 search only when more than ``rerank`` keys lie within bf16 rounding
(~1e-4 in cosine) of it.

Inputs may be float16 numpy arrays (what the embedding store holds): a block is converted to
float32 when it is used, so the full matrix is never copied.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from housegan.devices import fast_bf16

Metric = Literal["cosine", "euclidean"]
KnnPrecision = Literal["auto", "float32", "bfloat16"]  # auto: bf16 where native

_F32 = 4
_I64 = 8
_SMALL = 64 * 1024  # norms, masks and other per-block vectors
# The allocator keeps freed blocks and fragments: plan for this share of the budget (measured:
# the process's peak RSS stayed under the budget at 5k x 50k x 4096).
_ALLOCATOR_SHARE = 0.9


@dataclass(frozen=True)
class Blocks:
    """Rows per block of queries and keys, and per re-scoring step."""

    queries: int
    keys: int
    rerank: int = 0


@dataclass(frozen=True)
class Neighbours:
    """Per query, the k nearest keys, best first."""

    values: np.ndarray  # float32 [n, k]: cosine similarity (descending) or distance (ascending)
    indices: np.ndarray  # int64 [n, k] into the keys
    blocks: Blocks


def _bytes_per_value(precision: KnnPrecision) -> int:
    return 2 if precision == "bfloat16" else _F32


def plan_blocks(
    n_queries: int,
    n_keys: int,
    dim: int,
    candidates: int,
    memory_bytes: float,
    precision: KnnPrecision = "float32",
) -> Blocks:
    """The largest blocks whose working set fits ``memory_bytes``.

    Counted: the running best (``n_queries x candidates`` values and indices), a key block and a
    query block (float32, plus their bf16 copies), their product, and in re-scoring the gathered
    candidate rows.
    """
    # the running best, and a merge's concatenation, top-k and gathered copies of a block of it
    fixed = n_queries * candidates * (_F32 + _I64) * 4 + _SMALL
    avail = memory_bytes * _ALLOCATOR_SHARE - fixed
    row = dim * (_F32 + (2 if precision == "bfloat16" else 0))  # one prepared row
    cell = _bytes_per_value(precision) + _F32  # one product entry (+ float32 view on merge)
    if avail < 2 * row + cell:
        raise ValueError(
            f"a {memory_bytes / 2**20:.1f} MiB budget cannot hold one block of {dim}-d rows for "
            f"{n_queries} queries x {candidates} candidates; raise evaluate.knn_memory_mb"
        )
    # Square blocks first (s*b^2 + 2*row*b = avail), then any left-over goes to the keys.
    side = int((-2 * row + math.sqrt(4 * row * row + 4 * cell * avail)) / (2 * cell))
    queries = _balanced(n_queries, max(1, side))
    keys = _balanced(n_keys, max(1, int((avail - queries * row) // (row + queries * cell))))
    per_rescored = candidates * dim * (_F32 * 2 + 2) + candidates * _F32 * 2
    rerank = max(1, min(n_queries, int(avail // per_rescored)))
    return Blocks(queries=queries, keys=keys, rerank=rerank)


def _balanced(n: int, most: int) -> int:
    """Rows per block when ``n`` rows are cut into equal blocks of at most ``most`` (9845 + 155
    would waste the second block's matrix product)."""
    blocks = math.ceil(n / max(1, min(n, most))) if n else 1
    return max(1, math.ceil(n / blocks))


def _prepare(
    rows: np.ndarray | torch.Tensor,
    center: torch.Tensor | None,
    metric: Metric,
    device: torch.device,
) -> torch.Tensor:
    """A float32 copy of ``rows`` on ``device``: centred, and unit length for cosine."""
    block = torch.as_tensor(rows).to(device=device, dtype=torch.float32, copy=True)
    if center is not None:
        block.sub_(center)
    if metric == "cosine":
        block.div_(torch.linalg.vector_norm(block, dim=1, keepdim=True).clamp_min_(1e-12))
    return block


def _as_center(center: np.ndarray | None, device: torch.device) -> torch.Tensor | None:
    if center is None:
        return None
    return torch.as_tensor(np.asarray(center, dtype=np.float32), device=device)


class _Rows:
    """Some rows of an array, indexed like an array of just those rows: a block is copied when
    it is read, so 190k of 200k rows are never copied at once."""

    def __init__(self, array: np.ndarray, rows: np.ndarray) -> None:
        self.array, self.rows = array, np.asarray(rows, dtype=np.int64)
        self.ndim, self.shape = 2, (len(self.rows), array.shape[1])

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, item: slice | np.ndarray) -> np.ndarray:
        return self.array[self.rows[item]]


def _check(queries: np.ndarray, keys: np.ndarray, k: int, exclude: np.ndarray | None) -> None:
    if queries.ndim != 2 or keys.ndim != 2 or queries.shape[1] != keys.shape[1]:
        raise ValueError(f"queries {queries.shape} and keys {keys.shape} must be [n, d] alike")
    usable = len(keys) - (1 if exclude is not None else 0)
    if not 1 <= k <= usable:
        raise ValueError(f"k={k} needs 1..{usable} keys; there are {len(keys)}")
    if exclude is not None and len(exclude) != len(queries):
        raise ValueError(f"exclude has {len(exclude)} entries for {len(queries)} queries")


@torch.inference_mode()
def knn(
    queries: np.ndarray,
    keys: np.ndarray,
    k: int = 1,
    *,
    metric: Metric = "cosine",
    center: np.ndarray | None = None,
    exclude: np.ndarray | None = None,
    memory_bytes: float = 2**30,
    precision: KnnPrecision = "float32",
    rerank: int = 16,
    device: str | torch.device = "cpu",
    key_rows: np.ndarray | None = None,
) -> Neighbours:
    """The ``k`` nearest keys of every query, exactly, within ``memory_bytes`` of working set.

    ``center`` is subtracted from both sides first (cosine of centred vectors; distances do not
    change, but their float32 expansion loses less). ``exclude[i]`` names a key that query ``i``
    may not match (its own row when queries are keys; -1 for none). ``key_rows`` searches only
    those rows of ``keys``; indices (and ``exclude``) then count within them.
    """
    if key_rows is not None:
        keys = _Rows(keys, key_rows)
    _check(queries, keys, k, exclude)
    device = torch.device(device)
    if precision == "auto":  # emulated bf16 (AVX2-only CPUs) is slower than float32
        precision = "bfloat16" if fast_bf16(device) else "float32"
    candidates = min(
        k + (rerank if precision != "float32" else 0), len(keys) - (exclude is not None)
    )
    blocks = plan_blocks(
        len(queries), len(keys), keys.shape[1], candidates, memory_bytes, precision
    )
    center_t = _as_center(center, device)
    best, best_index = _scan(
        queries, keys, candidates, metric, center_t, exclude, blocks, precision, device
    )
    if precision != "float32":
        best, best_index = _rescore(queries, keys, best_index, k, metric, center_t, blocks, device)
    else:
        best, best_index = best[:, :k], best_index[:, :k]
        if metric == "euclidean":
            best = _distances_from_scores(queries, best, center_t, blocks, device)
    values = best.clamp(-1.0, 1.0) if metric == "cosine" else best
    return Neighbours(values.cpu().numpy(), best_index.cpu().numpy(), blocks)


def _scan(
    queries: np.ndarray,
    keys: np.ndarray,
    candidates: int,
    metric: Metric,
    center: torch.Tensor | None,
    exclude: np.ndarray | None,
    blocks: Blocks,
    precision: KnnPrecision,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Running top-``candidates`` scores over key blocks (outer) x query blocks (inner).

    Score: cosine, or ``2 q.k - |k|^2`` for euclidean (larger is nearer; ``|q|^2`` is the same for
    every key of a query, so it is added back only at the end).
    """
    dtype = torch.bfloat16 if precision == "bfloat16" else torch.float32
    n = len(queries)
    best = torch.full((n, candidates), -math.inf, device=device)
    best_index = torch.full((n, candidates), -1, dtype=torch.long, device=device)
    excluded = (
        None if exclude is None else torch.as_tensor(exclude, dtype=torch.long, device=device)
    )
    for k0 in range(0, len(keys), blocks.keys):
        key_block = _prepare(keys[k0 : k0 + blocks.keys], center, metric, device)
        key_sq = key_block.square().sum(dim=1) if metric == "euclidean" else None
        key_block = key_block.to(dtype)
        for q0 in range(0, n, blocks.queries):
            q1 = min(n, q0 + blocks.queries)
            scores = torch.mm(
                _prepare(queries[q0:q1], center, metric, device).to(dtype), key_block.T
            )
            if key_sq is not None:
                scores.mul_(2).sub_(key_sq.to(dtype))
            if excluded is not None:
                _mask_excluded(scores, excluded[q0:q1], k0)
            top, top_index = scores.topk(min(candidates, scores.shape[1]), dim=1)
            merged = torch.cat([best[q0:q1], top.float()], dim=1)
            merged_index = torch.cat([best_index[q0:q1], top_index + k0], dim=1)
            best[q0:q1], order = merged.topk(candidates, dim=1)
            best_index[q0:q1] = merged_index.gather(1, order)
    return best, best_index


def _mask_excluded(scores: torch.Tensor, excluded: torch.Tensor, k0: int) -> None:
    local = excluded - k0
    rows = torch.nonzero((local >= 0) & (local < scores.shape[1])).flatten()
    scores[rows, local[rows]] = -math.inf


def _rescore(
    queries: np.ndarray,
    keys: np.ndarray,
    index: torch.Tensor,
    k: int,
    metric: Metric,
    center: torch.Tensor | None,
    blocks: Blocks,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact float32 cosine / distance of every candidate; the best ``k`` of them, re-sorted."""
    values = torch.empty((len(queries), k), device=device)
    chosen = torch.empty((len(queries), k), dtype=torch.long, device=device)
    for q0 in range(0, len(queries), blocks.rerank):
        q1 = min(len(queries), q0 + blocks.rerank)
        rows = index[q0:q1]
        query_block = _prepare(queries[q0:q1], center, metric, device)
        gathered = _prepare(keys[rows.cpu().numpy().ravel()], center, metric, device)
        gathered = gathered.view(q1 - q0, rows.shape[1], -1)
        if metric == "cosine":
            exact = torch.bmm(gathered, query_block.unsqueeze(2)).squeeze(2)
            top, order = exact.topk(k, dim=1)
        else:
            exact = torch.linalg.vector_norm(gathered - query_block.unsqueeze(1), dim=2)
            top, order = exact.topk(k, dim=1, largest=False)
        values[q0:q1], chosen[q0:q1] = top, rows.gather(1, order)
    return values, chosen


def _distances_from_scores(
    queries: np.ndarray,
    scores: torch.Tensor,
    center: torch.Tensor | None,
    blocks: Blocks,
    device: torch.device,
) -> torch.Tensor:
    """``|q - k| = sqrt(|q|^2 - (2 q.k - |k|^2))``, the query norms taken one block at a time."""
    out = torch.empty_like(scores)
    for q0 in range(0, len(queries), blocks.queries):
        q1 = min(len(queries), q0 + blocks.queries)
        query_sq = _prepare(queries[q0:q1], center, "euclidean", device).square().sum(dim=1)
        out[q0:q1] = (query_sq[:, None] - scores[q0:q1]).clamp_min_(0).sqrt_()
    return out


def distance_blocks(
    a: np.ndarray,
    b: np.ndarray,
    *,
    center: np.ndarray | None = None,
    memory_bytes: float = 2**30,
    device: str | torch.device = "cpu",
) -> Iterator[tuple[slice, slice, torch.Tensor]]:
    """Euclidean distances ``a[i] - b[j]`` one float32 block at a time: (rows, cols, block)."""
    device = torch.device(device)
    center_t = _as_center(center, device)
    blocks = plan_blocks(len(a), len(b), a.shape[1], 1, memory_bytes)
    for j0 in range(0, len(b), blocks.keys):
        cols = slice(j0, min(len(b), j0 + blocks.keys))
        b_block = _prepare(b[cols], center_t, "euclidean", device)
        b_sq = b_block.square().sum(dim=1)
        for i0 in range(0, len(a), blocks.queries):
            rows = slice(i0, min(len(a), i0 + blocks.queries))
            a_block = _prepare(a[rows], center_t, "euclidean", device)
            a_sq = a_block.square().sum(dim=1, keepdim=True)
            block = torch.mm(a_block, b_block.T).mul_(-2).add_(a_sq).add_(b_sq)
            yield rows, cols, block.clamp_min_(0).sqrt_()
