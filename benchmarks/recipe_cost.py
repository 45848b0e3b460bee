"""CPU seconds of a session under the official CVS recipe against cvstream's own recipe, in one process.

    python benchmarks/recipe_cost.py [--sessions 1] [--threads 1] [--amp true|false]

Both run `experiments/cvs-tiny32-general30-official.yaml` (finetune): once as written (the official
recipe: resnet18-cvs, the rate per epoch, validation on every session's held-out samples, black-padded
crop, RandAugment, mean/std inputs, uniform classifier rows) and once with every one of those keys at
cvstream's default (torchvision's resnet18), one after the other in one process, each session timed by its
session_end event's `cpu_seconds`. Target: the official recipe costs
no more than cvstream's plus the augmentation's share of a step (benchmarks/augment.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from cpu_precision import cpu_description  # noqa: E402
from official_code import SCENARIO, data_root  # noqa: E402

OWN_RECIPE = [
    "model.backbone=resnet18", "training.lr_every=step", "training.validate_on=session", "training.crop_padding=reflect",
    "training.randaugment=false", "training.input_scaling=unit-range", "training.classifier_init=normal",
]


def session_seconds(overrides: list[str], *, sessions: int, out: Path) -> list[float]:
    from cvstream.scenario import Scenario
    from cvstream.simulator import Simulator

    sim = Simulator(Scenario.from_yaml(SCENARIO, overrides=["method=finetune", "replay.size=0", *overrides]), out_dir=out,
                    data_root=data_root())
    with sim.running():
        for t in range(sessions):
            sim.run_session(t)
    events = sim.result().events
    return [json.loads(d)["cpu_seconds"] for d in events[events.kind == "session_end"].detail]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--amp", choices=["true", "false"], default="true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(cpu_description())
    amp = [f"training.amp={args.amp}"]
    with tempfile.TemporaryDirectory() as tmp:
        official = session_seconds(amp, sessions=args.sessions, out=Path(tmp) / "official")
        own = session_seconds([*amp, *OWN_RECIPE], sessions=args.sessions, out=Path(tmp) / "own")
    print(f"finetune, sessions 0-{args.sessions - 1}, {args.threads} thread(s), training.amp {args.amp}, CPU seconds per session:")
    print("  official recipe  " + "  ".join(f"{s:7.1f}" for s in official))
    print("  cvstream recipe  " + "  ".join(f"{s:7.1f}" for s in own))
    print("  ratio            " + "  ".join(f"{a / b:7.3f}" for a, b in zip(official, own)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
