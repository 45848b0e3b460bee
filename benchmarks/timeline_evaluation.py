"""What one evaluation instant of the service timeline costs, against one raw search of the same size.

    python benchmarks/timeline_evaluation.py [--scenario experiments/timeline-omniglot-year.yaml] [--sessions N]
        [--epochs E] [--set backfill.policy=full ...] [--data-root ../shared/data]

Runs the scenario's timeline (all its sessions, or its first `--sessions`; `--epochs` epochs a session, default the
scenario's; default `--set backfill.policy=full`, the policy whose chunks make the most evaluation instants) and
prints what the run cost in wall and CPU seconds, without the raw searches it adds, against the 10 minutes a
variant of the year may take; and it times every
evaluation instant (`Timeline._evaluate`: admitting arrivals, the served search with its subsets and scores, the
references when they are due, the negative flips, the row); right after each, one raw search of the same queries
against the same gallery for the same number of neighbours (`Gallery.search`), what any evaluation must at least
do. Prints the ratio of the totals, by why the instant ran, and the instants per simulated week. Target: < 1.5.
Wall-clock seconds on this machine, one process; the ratio is measured in one run, instant by instant.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from cvstream.evaluation.evaluator import neighbors_per_query  # noqa: E402
from cvstream.scenario import Scenario  # noqa: E402
from cvstream.simulator import Simulator  # noqa: E402
from cvstream.timeline import Timeline  # noqa: E402


class TimedTimeline(Timeline):
    """The timeline, with every evaluation instant timed beside a raw search of its size."""

    def __init__(self, sim):
        super().__init__(sim)
        self.timings: dict[str, list[tuple[float, float]]] = defaultdict(list)
        self.raw_cpu = 0.0  # CPU seconds of the raw searches this benchmark adds

    def _evaluate(self, why: str, **options) -> None:
        clock = time.perf_counter()
        super()._evaluate(why, **options)
        spent = time.perf_counter() - clock
        if self.serving < 0 or len(self.gallery) == 0:
            return
        asked = self.gallery.class_counts(self.query_classes) > 0
        queries = self._query_vectors(self.serving)[asked]
        k = int(neighbors_per_query(self.query_classes[asked], self.gallery, recall_at=[1],
                                    map_at_r=self.scenario.evaluation.map_at_r).max())
        clock, cpu = time.perf_counter(), time.process_time()
        self.gallery.search(queries, k)
        self.timings[why].append((spent, time.perf_counter() - clock))
        self.raw_cpu += time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", default="experiments/timeline-omniglot-year.yaml")
    parser.add_argument("--sessions", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=None, help="scenario overrides (default backfill.policy=full)")
    parser.add_argument("--data-root", default=os.environ.get("CVSTREAM_DATA", "../shared/data"))
    args = parser.parse_args()
    overrides = list(args.overrides if args.overrides is not None else ["backfill.policy=full"])
    overrides += [f"stream.sessions={args.sessions}"] if args.sessions else []
    overrides += [f"training.epochs={args.epochs}"] if args.epochs else []
    scenario = Scenario.from_yaml(args.scenario, overrides)
    sim = Simulator(scenario, data_root=args.data_root, write=False)
    with sim.running():
        line = TimedTimeline(sim)
        clock, cpu = time.perf_counter(), time.process_time()
        line.run()
        total, cpu = time.perf_counter() - clock, time.process_time() - cpu
    evaluated = sum(spent for rows in line.timings.values() for spent, _ in rows)
    raw = sum(search for rows in line.timings.values() for _, search in rows)
    instants = sum(len(rows) for rows in line.timings.values())
    sessions = len(sim.stream)
    print(f"{scenario.name} ({', '.join(overrides)}): {sessions} sessions, {scenario.training.epochs} epoch(s); gallery at the end "
          f"{len(line.gallery):,} items; {instants:,} evaluation instants ({instants / max(sessions, 1):.0f} a session)")
    print(f"the run without the raw searches: {(total - raw) / 60:.1f} min wall, {(cpu - line.raw_cpu) / 60:.1f} min CPU "
          f"(torch threads {torch.get_num_threads()}); target < 10 min a variant")
    print(f"{'why':<15}{'instants':>9}{'eval s':>9}{'raw s':>9}{'ratio':>7}")
    for why, rows in sorted(line.timings.items()):
        e, r = sum(s for s, _ in rows), sum(q for _, q in rows)
        print(f"{why:<15}{len(rows):>9,}{e:>9.2f}{r:>9.2f}{e / r:>7.2f}")
    print(f"{'all':<15}{instants:>9,}{evaluated:>9.2f}{raw:>9.2f}{evaluated / raw:>7.2f}   target < 1.5")


if __name__ == "__main__":
    main()
