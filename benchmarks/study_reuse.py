"""What a study costs with the generation store, against its floor and against its variants run apart.

    python benchmarks/study_reuse.py [--scenario experiments/timeline-omniglot-year.yaml] [--sessions 8]
        [--epochs E] [--data-root ../shared/data] [--out runs/bench-study]

The six-variant timeline comparison (`compare --timeline`: none, full-hot, full-after-backfill, partial, transform,
dual) of the scenario cut to its first `--sessions` sessions, run twice in this process, one after the other:
apart (no store: every variant trains every session) and as a study (one fresh generation store). CPU seconds of
the process per variant (`time.process_time`, torch on one thread), and of every training step. The floor is what
the study cannot avoid: each variant's own work, measured apart (its CPU minus its training steps' CPU), plus each
distinct training once (the training steps, measured apart, of the sessions the study did not take from the store). Targets: study /
floor < 1.1; and the study's trainings are the distinct ones (four of six variants' learning sides here: full-hot,
full-after-backfill and dual train alike).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cvstream.simulator.engine import Simulator  # noqa: E402
from cvstream.studies.compare import DEFAULT_TIMELINE_VARIANTS, run_timeline_comparison  # noqa: E402

TRAINING_CPU: dict[tuple[str, int], float] = {}  # (run folder, session) -> CPU seconds of its training step


def _timed_train(train):
    """`Simulator._train`, its CPU seconds recorded: wall seconds of a loaded machine would overstate it."""

    def timed(self, t):
        clock = time.process_time()
        try:
            return train(self, t)
        finally:
            TRAINING_CPU[str(self.run_dir), t] = time.process_time() - clock

    return timed


Simulator._train = _timed_train(Simulator._train)


def study(scenario: str, overrides: list[str], *, out: Path, data_root: str, store: Path | None) -> pd.DataFrame:
    """Run the comparison; per variant its process CPU seconds, training seconds (trained here) and reused sessions."""
    marks, rows = [time.process_time()], []

    def done(row: dict) -> None:
        marks.append(time.process_time())
        costs = pd.read_parquet(Path(row["run_dir"]) / "costs.parquet").query("phase == 'train'")
        trained = [TRAINING_CPU.get((str(row["run_dir"]), int(t)), 0.0) for t in costs.session]
        rows.append({"variant": row["variant"], "cpu": marks[-1] - marks[-2], "area": row["quality_time_area"],
                     "trained_seconds": float(sum(trained)), "train_seconds": np.array(trained), "reused": costs.reused.to_numpy()})

    run_timeline_comparison(scenario, list(DEFAULT_TIMELINE_VARIANTS), out_dir=out, overrides=overrides, data_root=data_root,
                            on_variant=done, store=store)
    return pd.DataFrame(rows).set_index("variant")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", default="experiments/timeline-omniglot-year.yaml")
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--data-root", default=os.environ.get("CVSTREAM_DATA", "../shared/data"))
    parser.add_argument("--out", default="runs/bench-study")
    args = parser.parse_args()
    torch.set_num_threads(1)
    overrides = [f"stream.sessions={args.sessions}"] + ([f"training.epochs={args.epochs}"] if args.epochs else [])
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    apart = study(args.scenario, overrides, out=out / "apart", data_root=args.data_root, store=None)
    shared = study(args.scenario, overrides, out=out / "study", data_root=args.data_root, store=out / "store")
    own = apart.cpu - apart.trained_seconds  # each variant's own work: its replay, backfill forwards and evaluation
    distinct = sum(float(apart.train_seconds[v][~shared.reused[v]].sum()) for v in apart.index)
    floor = own.sum() + distinct
    trainings = {v: f"{int((~shared.reused[v]).sum())}/{len(shared.reused[v])}" for v in shared.index}
    print(f"{args.scenario} ({', '.join(overrides)}), six timeline variants, CPU seconds (torch threads 1)")
    print(f"{'variant':<22}{'apart':>9}{'study':>9}{'own work':>10}{'trained here':>14}{'same area':>11}")
    for v in apart.index:
        print(f"{v:<22}{apart.cpu[v]:>9.1f}{shared.cpu[v]:>9.1f}{own[v]:>10.1f}{trainings[v]:>14}"
              f"{str(apart.area[v] == shared.area[v]):>11}")
    print(f"apart {apart.cpu.sum():.1f} s; study {shared.cpu.sum():.1f} s; floor {floor:.1f} s (own work {own.sum():.1f} + "
          f"distinct trainings {distinct:.1f})")
    print(f"study / floor {shared.cpu.sum() / floor:.3f} (target < 1.1); apart / study {apart.cpu.sum() / shared.cpu.sum():.2f}")


if __name__ == "__main__":
    main()
