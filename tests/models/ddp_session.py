"""One session of the tiny scenario, trained alone or as one of several torchrun processes; saves the model.

    python tests/models/ddp_session.py OUT.pt                                  # one process
    torchrun --standalone --nproc_per_node 2 tests/models/ddp_session.py OUT.pt  # two (gloo on CPU)
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[2]), str(Path(__file__).resolve().parents[1])]  # the repository, and tests/ for conftest

from cvstream.models.distributed import from_environment  # noqa: E402
from cvstream.simulator import Simulator  # noqa: E402
from conftest import tiny_scenario  # noqa: E402


def main(out: str) -> None:
    scenario = tiny_scenario(
        stream={"sessions": 1, "initial_classes": 6},
        method={"name": "finetune"},
        training={"epochs": 2, "batch_size": 16, "lr": 0.05, "augment": True},
        evaluation={"probe_items": 0},
    )
    shard = from_environment("cpu")
    sim = Simulator(scenario, write=False, shard=shard)
    sim.run()
    if shard is None or shard.leader:
        steps = int(sim.tables.frame("events", committed_only=False).query("kind == 'train'").detail.str.extract(r'"steps": (\d+)')[0].iloc[0])
        torch.save({"state": sim.model.state_dict(), "steps": steps}, out)


if __name__ == "__main__":
    main(sys.argv[1])
