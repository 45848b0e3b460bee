"""DDP: two CPU processes (gloo) through one session give the model one process gives, within float tolerance."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cvstream.errors import UserError
from cvstream.models.distributed import Shard, check_batch

SCRIPT = Path(__file__).with_name("ddp_session.py")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    return env


@pytest.mark.slow
def test_two_gloo_processes_train_the_same_model_as_one(tmp_path):
    alone, together = tmp_path / "alone.pt", tmp_path / "together.pt"
    subprocess.run([sys.executable, str(SCRIPT), str(alone)], check=True, env=_env(), timeout=300)
    subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(SCRIPT), str(together)],
        check=True, env=_env(), timeout=300,
    )
    one, two = torch.load(alone, weights_only=True), torch.load(together, weights_only=True)
    assert one["steps"] == two["steps"] > 1
    assert one["state"].keys() == two["state"].keys()
    moved = 0.0  # BatchNorm statistics must have moved, or their equality would prove nothing
    for name, value in one["state"].items():
        other = two["state"][name]
        if value.is_floating_point():
            # Float sums in another order, amplified by a few SGD steps: ~1e-5 apart; without synced BatchNorm ~1 apart.
            torch.testing.assert_close(other, value, rtol=1e-3, atol=2e-4, msg=lambda m: f"{name}: {m}")
        else:
            assert torch.equal(other, value), name
        if name.endswith("running_mean"):
            moved += float(value.abs().sum())
    assert moved > 0


def test_shards_split_a_batch_evenly():
    parts = [Shard(rank=r, world_size=4).part(16) for r in range(4)]
    covered = sorted(i for p in parts for i in range(16)[p])
    assert covered == list(range(16))
    with pytest.raises(UserError, match="divisible"):
        check_batch(18, Shard(rank=0, world_size=4))
