"""DDP through torchrun: 2 CPU processes (gloo) train one model; EMA weights agree across ranks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from housegan.gan import checkpoint
from housegan.testing.gan import prepared_dataset

REPO = Path(__file__).resolve().parents[2]
STEPS, BATCH = 6, 4

RANK_SCRIPT = """
import sys
from pathlib import Path
import torch
from housegan.config import GanSettings
from housegan.gan import ddp
from housegan.gan.train import Trainer

dataset, out = sys.argv[1], sys.argv[2]
Path(out).mkdir(parents=True, exist_ok=True)
cfg = GanSettings(image_size=32, batch_size={batch}, steps={steps}, width=4, z_dim=16,
                  embed_dim=8, log_every=3, device="cpu", cpu_threads=1)
trainer = Trainer(dataset, out, cfg)
sampler_state = {{k: v.clone() for k, v in trainer.sampler.state_dict().items()}}
first_batch = trainer.sampler.next().clone()
trainer.sampler.load_state_dict(sampler_state)
start = {{k: v.detach().clone() for k, v in trainer.G_ema.named_parameters()}}
result = trainer.run()
torch.save(
    {{
        "world_size": trainer.dist.world_size,
        "first_batch": first_batch,
        "start": start,
        "end": {{k: v.detach().clone() for k, v in trainer.G_ema.named_parameters()}},
        "step": result.step,
        "kimg": result.kimg,
    }},
    f"{{out}}/rank{{trainer.dist.rank}}.pt",
)
ddp.teardown(trainer.dist)
"""


@pytest.mark.slow
def test_two_gloo_processes_train_and_agree_on_ema_weights(tmp_path: Path) -> None:
    dataset = prepared_dataset(tmp_path / "data", image_size=32, per_class=4)
    out = tmp_path / "run"
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT.format(batch=BATCH, steps=STEPS))
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(script),
        dataset,
        str(out),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]

    rank0, rank1 = (torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert rank0["world_size"] == rank1["world_size"] == 2
    # each rank trained on its own shard of the global batch
    assert not set(rank0["first_batch"].tolist()) & set(rank1["first_batch"].tolist())
    # both ranks count every image shown, over both
    assert rank0["step"] == rank1["step"] == STEPS
    assert rank0["kimg"] == pytest.approx(STEPS * BATCH * 2 / 1000)
    moved = [k for k, v in rank0["end"].items() if not torch.equal(v, rank0["start"][k])]
    assert moved, "EMA generator did not change: nothing was trained"
    for name, tensor in rank0["end"].items():
        assert torch.equal(tensor, rank1["end"][name]), name

    # rank 0 alone wrote the model and a checkpoint carrying both ranks' RNG streams
    state = checkpoint.load(checkpoint.latest(str(out)))
    assert state["world_size"] == 2 and len(state["noise"]) == len(state["augment"]) == 2
    assert not torch.equal(state["noise"][0], state["noise"][1])
    assert (out / "g_ema.safetensors").is_file()
