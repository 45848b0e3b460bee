"""What one evaluation instant of the service timeline costs, against one raw search of the same size.

    python benchmarks/timeline_evaluation.py [--scenario experiments/timeline-omniglot-year.yaml] [--sessions 16]
        [--epochs 1] [--data-root ../shared/data]

Runs the scenario's timeline (its first `--sessions` sessions, `--epochs` epochs a session) and times every
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

from cvstream.evaluation.evaluator import neighbors_per_query  # noqa: E402
from cvstream.scenario import Scenario  # noqa: E402
from cvstream.simulator import Simulator  # noqa: E402
from cvstream.timeline import Timeline  # noqa: E402


class TimedTimeline(Timeline):
    """The timeline, with every evaluation instant timed beside a raw search of its size."""

    def __init__(self, sim):
        super().__init__(sim)
        self.timings: dict[str, list[tuple[float, float]]] = defaultdict(list)

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
        clock = time.perf_counter()
        self.gallery.search(queries, k)
        self.timings[why].append((spent, time.perf_counter() - clock))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", default="experiments/timeline-omniglot-year.yaml")
    parser.add_argument("--sessions", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--data-root", default=os.environ.get("CVSTREAM_DATA", "../shared/data"))
    args = parser.parse_args()
    scenario = Scenario.from_yaml(args.scenario, [f"stream.sessions={args.sessions}", f"training.epochs={args.epochs}"])
    sim = Simulator(scenario, data_root=args.data_root, write=False)
    with sim.running():
        line = TimedTimeline(sim)
        clock = time.perf_counter()
        line.run()
        total = time.perf_counter() - clock
    evaluated = sum(spent for rows in line.timings.values() for spent, _ in rows)
    raw = sum(search for rows in line.timings.values() for _, search in rows)
    instants = sum(len(rows) for rows in line.timings.values())
    print(f"{scenario.name}, {args.sessions} sessions, {args.epochs} epoch(s); gallery at the end {len(line.gallery):,} items, "
          f"{instants:,} evaluation instants ({instants / max(args.sessions, 1):.0f} a session) in {total:.0f} s of run")
    print(f"{'why':<15}{'instants':>9}{'eval s':>9}{'raw s':>9}{'ratio':>7}")
    for why, rows in sorted(line.timings.items()):
        e, r = sum(s for s, _ in rows), sum(q for _, q in rows)
        print(f"{why:<15}{len(rows):>9,}{e:>9.2f}{r:>9.2f}{e / r:>7.2f}")
    print(f"{'all':<15}{instants:>9,}{evaluated:>9.2f}{raw:>9.2f}{evaluated / raw:>7.2f}   target < 1.5")


if __name__ == "__main__":
    main()
