"""Device names: one resolver (embed, training, DDP, serving) and a validated settings type."""

from __future__ import annotations

import pydantic
import pytest
import torch

from housegan.config import EmbedSettings, GanSettings
from housegan.devices import resolve_device
from housegan.gan import ddp, serving

needs_no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present here")


def test_cpu_resolves_to_the_cpu() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")


def test_auto_is_cuda_when_present_else_cpu() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device().type == expected


@needs_no_cuda
@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_without_a_gpu_is_a_clear_error_naming_the_spec(spec: str) -> None:
    with pytest.raises(RuntimeError, match=rf"device '{spec}'.*CUDA is not available"):
        resolve_device(spec)


@pytest.mark.parametrize("spec", ["gpu", "cuda:", "cuda:-1", "cuda:x", "cpu:0", "", "mps"])
def test_a_malformed_spec_is_a_value_error_naming_it(spec: str) -> None:
    with pytest.raises(ValueError, match=f"device spec {spec!r} is not one of"):
        resolve_device(spec)


def _pretend_gpus(monkeypatch: pytest.MonkeyPatch, count: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


def test_bare_cuda_means_this_process_local_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    _pretend_gpus(monkeypatch, 2)
    assert resolve_device("cuda") == torch.device("cuda:0")
    assert resolve_device("cuda", local_rank=1) == torch.device("cuda:1")
    assert resolve_device("cuda:0", local_rank=1) == torch.device("cuda:0")  # explicit wins


def test_a_gpu_index_beyond_the_visible_ones_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _pretend_gpus(monkeypatch, 2)
    with pytest.raises(RuntimeError, match=r"device 'cuda:2'.*only 2 CUDA device"):
        resolve_device("cuda:2")
    with pytest.raises(RuntimeError, match=r"device 'cuda' asked for \(as cuda:3\)"):
        resolve_device("cuda", local_rank=3)


def test_settings_validate_the_device_spelling_when_they_load() -> None:
    assert GanSettings(device=" CUDA:1 ").device == "cuda:1"  # no GPU needed to write a config
    assert EmbedSettings().device == "cpu" and GanSettings().device == "auto"
    with pytest.raises(pydantic.ValidationError, match="device spec 'gpu'"):
        GanSettings(device="gpu")
    with pytest.raises(pydantic.ValidationError, match="device spec 'cuda0'"):
        EmbedSettings(device="cuda0")


def test_single_process_ddp_setup_resolves_through_the_same_rules(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    info, device = ddp.setup("cpu")
    assert not info.enabled and device == torch.device("cpu")
    with pytest.raises(ValueError, match="device spec 'gpu'"):
        ddp.setup("gpu")


def test_serving_refuses_a_malformed_device_before_loading(tmp_path) -> None:
    with pytest.raises(ValueError, match="device spec 'gpu'"):
        serving.load_generator_files(tmp_path / "w", tmp_path / "c", device="gpu")
