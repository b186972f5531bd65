"""The one place a device name becomes a ``torch.device``.

A device is named by a ``DeviceSpec``: ``"auto"`` (CUDA when present, else CPU), ``"cpu"``,
``"cuda"`` (this process's GPU: ``cuda:LOCAL_RANK`` under DDP, ``cuda:0`` otherwise) or
``"cuda:N"``. Settings validate the spelling when they load (so a typo fails before any work);
``resolve_device`` checks, at use, that the GPU asked for is really there.

Torch is imported only by ``resolve_device``: the settings import this module, and most stages
(ingest, curation tasks, the CLI's help) should not pay for loading torch.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated

from pydantic import AfterValidator

if TYPE_CHECKING:
    import torch

__all__ = ["DeviceSpec", "fast_bf16", "parse_device_spec", "resolve_device"]

_SPEC = re.compile(r"auto|cpu|cuda(:\d+)?")
ALLOWED = "'auto', 'cpu', 'cuda' or 'cuda:N'"


def parse_device_spec(spec: str) -> str:
    """The spec, lower-cased and stripped; ``ValueError`` naming it unless it is a known form."""
    if not isinstance(spec, str):
        raise ValueError(f"device spec must be a string ({ALLOWED}), got {type(spec).__name__}")
    normalized = spec.strip().lower()
    if not _SPEC.fullmatch(normalized):
        raise ValueError(f"device spec {spec!r} is not one of {ALLOWED}")
    return normalized


# Validated at settings load; no hardware check there, so a CPU box can write a GPU config.
DeviceSpec = Annotated[str, AfterValidator(parse_device_spec)]


def resolve_device(spec: str | torch.device = "auto", local_rank: int = 0) -> torch.device:
    """The ``torch.device`` for ``spec``; ``RuntimeError`` naming it when that GPU is not here.

    ``local_rank`` picks the GPU a bare ``"cuda"`` means (torchrun's ``LOCAL_RANK``).
    """
    import torch

    if isinstance(spec, torch.device):
        spec = str(spec)
    name = parse_device_spec(spec)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda":
        name = f"cuda:{local_rank}"
    if not torch.cuda.is_available():
        raise RuntimeError(f"device {spec!r} asked for, but CUDA is not available here")
    device = torch.device(name)
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise RuntimeError(
            f"device {spec!r} asked for (as {name}), but only {count} CUDA device(s) are visible"
        )
    return device


def fast_bf16(device: str | torch.device) -> bool:
    """Whether bf16 compute is native on ``device``: a CUDA GPU that supports it, or a CPU with
    AVX-512 bf16 or AMX. Elsewhere (an AVX2-only CPU) torch emulates bf16 and it runs ~8x
    slower than float32, so callers asking for bf16 fall back to float32 there."""
    import torch

    device = torch.device(device) if isinstance(device, str) else device
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
