"""CPU seconds of a session under the official CVS recipe against cvstream's own recipe, interleaved in one process.

    python benchmarks/recipe_cost.py [--sessions 1] [--threads 1] [--amp true|false] [--repeats 3]

Both run `experiments/cvs-tiny32-general30-official.yaml` (finetune): as written (the official recipe:
resnet18-cvs, the rate per epoch, validation on every session's held-out samples, black-padded crop,
RandAugment, mean/std inputs, uniform classifier rows) and with every one of those keys at cvstream's default
(torchvision's resnet18). The recipes alternate, official, own, own, official, official, own, ... (`--repeats`
of each), so that a load that changes while the script runs falls on both alike: each pair's ratio is taken
between neighbours, and the median of the pairs is the figure. Each session is timed by its session_end event's
`cpu_seconds`; the data set is read once before the first timed run. Target: the official recipe costs no more
than cvstream's plus the augmentation's share of a step (benchmarks/augment.py).
"""

from __future__ import annotations

import argparse
import json
import statistics
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
    parser.add_argument("--repeats", type=int, default=3, help="runs of each recipe, alternating (default %(default)s)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(cpu_description())
    amp = [f"training.amp={args.amp}"]
    recipes = {"official": amp, "own": [*amp, *OWN_RECIPE]}
    order = [("official", "own") if i % 2 == 0 else ("own", "official") for i in range(args.repeats)]  # A B, B A, A B, ...
    seconds: dict[str, list[list[float]]] = {"official": [], "own": []}
    with tempfile.TemporaryDirectory() as tmp:
        warm_up(out=Path(tmp) / "warm-up")
        for number, pair in enumerate(order):
            for name in pair:
                seconds[name].append(session_seconds(recipes[name], sessions=args.sessions, out=Path(tmp) / f"{name}-{number}"))
                print(f"  {name:8s} run {number}: " + "  ".join(f"{s:7.1f}" for s in seconds[name][-1]), flush=True)
    print(f"finetune, sessions 0-{args.sessions - 1}, {args.threads} thread(s), training.amp {args.amp}, CPU seconds per session, "
          f"{args.repeats} runs of each recipe interleaved:")
    ratios = []
    for number in range(args.repeats):
        official, own = seconds["official"][number], seconds["own"][number]
        ratios.append([a / b for a, b in zip(official, own)])
        print(f"  pair {number}: official " + "  ".join(f"{s:7.1f}" for s in official) + "   own " + "  ".join(f"{s:7.1f}" for s in own)
              + "   ratio " + "  ".join(f"{r:6.3f}" for r in ratios[-1]))
    per_session = list(zip(*ratios))
    print("  median ratio     " + "  ".join(f"{statistics.median(r):7.3f}" for r in per_session)
          + "   (pairs from " + ", ".join(f"{min(r):.3f} to {max(r):.3f}" for r in per_session) + ")")
    return 0


def warm_up(*, out: Path) -> None:
    """Read the data set (and build its cache) before the first timed run."""
    from cvstream.scenario import Scenario
    from cvstream.simulator import Simulator

    Simulator(Scenario.from_yaml(SCENARIO, overrides=["method=finetune", "replay.size=0"]), out_dir=out, data_root=data_root())


if __name__ == "__main__":
    sys.exit(main())
