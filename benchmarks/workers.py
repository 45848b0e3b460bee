"""What `compare --workers N` saves in wall time on this machine: one study, run one run at a time and in N processes.

    python benchmarks/workers.py [--scenario experiments/timeline-omniglot-year.yaml] [--sessions 6] [--seeds 2]
        [--variants none,full-hot,partial,transform] [--workers N] [--data-root ../shared/data] [--out runs/bench-workers]

The timeline study (`compare --timeline --seeds S`) of the scenario cut to its first `--sessions` sessions, run as
the command line runs it, three times, one after the other, each in a fresh output folder and a fresh generation
store: `--workers 1` (one process, torch and Faiss on every CPU), `--workers N` (default: the CPUs; each process on
its share) and `--workers 1` on the threads each of those N processes has (OMP_NUM_THREADS). Prints the wall and CPU
seconds of each (the command's children included) and their ratios, and each variant's area on each side: the
last two sides run on the same threads and must give the same areas, to the last bit (checked); the first runs on
other threads, where torch rounds differently and training carries it on, so its areas are another draw. There is
no speed target: the figure says what the option buys on this machine.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cvstream.studies.workers import cpus, threads_per_worker  # noqa: E402


def study(args, workers: int, out: Path, *, threads: int | None = None) -> tuple[float, float, pd.DataFrame]:
    """Wall and CPU seconds of one `cvstream compare --timeline` study, and its comparison table."""
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "cvstream.cli", "compare", args.scenario, "--timeline", "--variants", args.variants,
               "--seeds", str(args.seeds), "--set", f"stream.sessions={args.sessions}", "--out", str(out / "study"),
               "--store", str(out / "store"), "--no-progress", "--workers", str(workers)]
    if args.data_root:
        command += ["--data-root", args.data_root]
    environ = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}  # each side its own threads
    if threads is not None:
        environ["OMP_NUM_THREADS"] = environ["MKL_NUM_THREADS"] = str(threads)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    clock = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, env=environ, capture_output=True, text=True)
    wall = time.perf_counter() - clock
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"--workers {workers} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, pd.read_parquet(out / "study" / "timeline_comparison.parquet")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default="experiments/timeline-omniglot-year.yaml")
    parser.add_argument("--sessions", type=int, default=6)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--variants", default="none,full-hot,partial,transform")
    parser.add_argument("--workers", type=int, default=cpus())
    parser.add_argument("--data-root", default=os.environ.get("CVSTREAM_DATA"))
    parser.add_argument("--out", default="runs/bench-workers")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    runs = len(args.variants.split(",")) * args.seeds
    print(f"{args.scenario} cut to {args.sessions} sessions: {args.variants} x {args.seeds} seeds = {runs} runs; {cpus()} CPUs")
    share = threads_per_worker(args.workers)
    sides = {f"--workers 1 ({cpus()} threads)": study(args, 1, out / "workers-1"),
             f"--workers {args.workers} ({share} each)": study(args, args.workers, out / f"workers-{args.workers}"),
             f"--workers 1 ({share} thread{'s' if share > 1 else ''})": study(args, 1, out / "workers-1-shared", threads=share)}
    names = list(sides)
    print(f"{'':>28} {'wall s':>9} {'CPU s':>9}")
    for name, (wall, cpu, _) in sides.items():
        print(f"{name:>28} {wall:>9.1f} {cpu:>9.1f}")
    (w1, c1, _), (wn, cn, _), (ws, cs, _) = sides.values()
    print(f"wall: --workers {args.workers} is {w1 / wn:.2f}x faster than --workers 1 on every CPU, {ws / wn:.2f}x faster than "
          f"--workers 1 on its threads; CPU {cn / c1:.2f}x and {cn / cs:.2f}x")
    areas = pd.DataFrame({name: table.set_index("variant").quality_time_area for name, (_, _, table) in sides.items()})
    print("R@1 area by variant, means over seeds:")
    print(areas.round(4).to_string())
    same = areas[names[1]].equals(areas[names[2]])
    print(f"same threads, same areas to the last bit: {same}; other threads: largest difference "
          f"{(areas[names[0]] - areas[names[1]]).abs().max():.4f} (another draw of training, not rounding)")
    if not same:
        raise SystemExit("the study in processes differs from the study one run at a time on the same threads")


if __name__ == "__main__":
    main()
