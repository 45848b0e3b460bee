"""Relative vs absolute compatibility at the first update: is generation 1 near generation 0 in absolute terms?

Runs the first two sessions of a scenario, then embeds session 0's queries with generation 1 and
reports their R@1 against session 0's gallery as generation 0 stored it (relative compatibility),
and the mean best similarity to those old items against that to session 1's items (generation 1).
Run: CVSTREAM_DATA=../shared/data .venv/bin/python benchmarks/compat_shift.py experiments/omniglot-methods-cpu.yaml nccl
"""

from __future__ import annotations

import argparse

import numpy as np
import yaml

from cvstream.models.trainer import embed
from cvstream.scenario import Scenario
from cvstream.simulator import Simulator


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("scenario")
    parser.add_argument("method")
    args = parser.parse_args()
    data = yaml.safe_load(open(args.scenario))
    data["stream"]["sessions"] = 2
    data["method"] = {"name": args.method}
    sim = Simulator(Scenario.from_dict(data, source=args.scenario), write=False)
    result = sim.run()
    s0, s1 = sim.stream[0], sim.stream[1]
    # Only methods that keep the previous generation past deploy leave it to compare with.
    if sim.previous_model is None:
        raise SystemExit(f"{args.method} does not keep the previous generation; nothing to compare")

    def emb(model, ids):
        return embed(model, sim.images, ids, batch_size=512, amp=False)

    queries, old_items, new_items = emb(sim.model, s0.query_ids), emb(sim.previous_model, s0.gallery_ids), emb(sim.model, s1.gallery_ids)
    nearest = np.argmax(queries @ old_items.T, axis=1)
    relative = np.mean(sim.labels_of(s0.gallery_ids)[nearest] == sim.labels_of(s0.query_ids))
    mixed = result.recall_table(1).loc[1, "old"]
    print(
        f"{args.method}: R@1 of gen-1 queries (session-0 classes) against gen-0 items only {relative:.3f}; "
        f"in the mixed gallery {mixed:.3f}; best similarity to gen-0 items {(queries @ old_items.T).max(1).mean():.3f}, "
        f"to gen-1 items of the new classes {(queries @ new_items.T).max(1).mean():.3f}"
    )


if __name__ == "__main__":
    main()
