"""A run killed with SIGKILL and resumed ends bit-identical to one uninterrupted run (CPU)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from housegan.gan import checkpoint
from housegan.testing.gan import prepared_dataset

REPO = Path(__file__).resolve().parents[2]
STEPS = 24
CHECKPOINT_EVERY = 4
OVERRIDES = [
    "image_size=32",
    "batch_size=8",
    f"steps={STEPS}",
    "width=4",
    "z_dim=16",
    "embed_dim=8",
    "log_every=3",
    "snapshot_every=1000",
    f"checkpoint_every_steps={CHECKPOINT_EVERY}",
    "checkpoint_keep=2",
    "cpu_threads=1",
    "device=cpu",
    "balanced=true",
]


def _command(dataset: str, out_dir: Path, resume: bool = False) -> list[str]:
    extra = ["--resume"] if resume else []
    return [sys.executable, "-m", "housegan.gan.train", dataset, str(out_dir), *OVERRIDES, *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _run(command: list[str]) -> None:
    done = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def _kill_after_first_checkpoint(command: list[str], out_dir: Path) -> int:
    """Start training, SIGKILL it as soon as a checkpoint exists; returns that step."""
    process = subprocess.Popen(command, env=_env(), stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while not checkpoint.list_checkpoints(str(out_dir)) and time.monotonic() < deadline:
            assert process.poll() is None, process.stderr.read().decode()[-3000:]
            time.sleep(0.005)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=30)
        process.stderr.close()
    assert process.returncode == -signal.SIGKILL, "training ended before it could be killed"
    return checkpoint.list_checkpoints(str(out_dir))[-1][0]


def _final_state(out_dir: Path) -> dict:
    return checkpoint.load(checkpoint.latest(str(out_dir)))


def _assert_identical(left: dict, right: dict, key: str) -> None:
    assert left[key].keys() == right[key].keys()
    for name, tensor in left[key].items():
        assert torch.equal(tensor, right[key][name]), f"{key}.{name} differs"


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted_run_bitwise(tmp_path: Path) -> None:
    dataset = prepared_dataset(tmp_path / "data", image_size=32, per_class=4)
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"

    _run(_command(dataset, straight))
    killed_at = _kill_after_first_checkpoint(_command(dataset, interrupted), interrupted)
    assert 0 < killed_at < STEPS
    assert not (interrupted / "model.json").exists()
    at_kill = _final_state(interrupted)
    _run(_command(dataset, interrupted, resume=True))

    a, b = _final_state(straight), _final_state(interrupted)
    assert a["step"] == b["step"] == STEPS
    assert not torch.equal(at_kill["G_ema"]["stem.weight"], b["G_ema"]["stem.weight"])
    for key in ("G_ema", "G", "D"):
        _assert_identical(a, b, key)
    assert a["opt_d"]["state"].keys() == b["opt_d"]["state"].keys()
    for index, moments in a["opt_d"]["state"].items():
        assert torch.equal(moments["exp_avg_sq"], b["opt_d"]["state"][index]["exp_avg_sq"])
    exported_a = (straight / "g_ema.safetensors").read_bytes()
    assert exported_a == (interrupted / "g_ema.safetensors").read_bytes()
