"""What the tuned C allocator saves (`cvstream/allocator.py`): the same command run twice, with glibc's default
settings and with cvstream's, CPU seconds (user and system) of each, and whether the results are the same.

    python benchmarks/allocator.py [--scenario experiments/timeline-omniglot-year.yaml] [--sessions 8]
        [--variant full-hot] [--data-root ../shared/data] [--out runs/bench-allocator]

Runs `cvstream compare SCENARIO --timeline --variants VARIANT` on the first `--sessions` sessions, no generation
store, torch and Faiss on one thread, in two child processes one after the other (`CVSTREAM_MALLOC=default`, then
the command line's own restart under the tuned allocator). Prints user, system and total CPU seconds, wall seconds and
the peak resident size of each, the ratio of the totals, and checks that the two runs' timeline summaries (run.json)
are equal. Ratios are taken in one run: this machine's absolute figures move with its load.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(argv: list[str], allocator: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}  # as a user who set nothing
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(ROOT), CVSTREAM_MALLOC=allocator)
    wall = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "cvstream.cli", *argv], env=env, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)  # this child's own usage (it restarts itself in place: the same process)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"cvstream exited with {child.returncode}")
    user, system = usage.ru_utime, usage.ru_stime
    return {"user": user, "system": system, "cpu": user + system, "wall": time.perf_counter() - wall, "peak_mb": usage.ru_maxrss / 1024}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", default=str(ROOT / "experiments" / "timeline-omniglot-year.yaml"))
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--variant", default="full-hot")
    parser.add_argument("--data-root", default=os.environ.get("CVSTREAM_DATA", str(ROOT.parent / "shared" / "data")))
    parser.add_argument("--out", default="runs/bench-allocator")
    args = parser.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    figures, summaries = {}, {}
    for allocator in ("default", ""):  # "": the command line restarts itself under the tuned settings
        name = allocator or "tuned"
        folder = out / name
        argv = ["compare", args.scenario, "--timeline", "--variants", args.variant, "--set", f"stream.sessions={args.sessions}",
                "--out", str(folder), "--no-store", "--no-progress", "--data-root", args.data_root]
        figures[name] = run(argv, allocator)
        summaries[name] = json.dumps(json.loads((folder / args.variant / "run.json").read_text())["timeline"], sort_keys=True)
    print(f"{args.variant}, first {args.sessions} sessions of {Path(args.scenario).name}, one thread, no store")
    print(f"{'allocator':<10} {'user s':>8} {'system s':>9} {'CPU s':>8} {'wall s':>8} {'peak MB':>8}")
    for name, f in figures.items():
        print(f"{name:<10} {f['user']:>8.1f} {f['system']:>9.1f} {f['cpu']:>8.1f} {f['wall']:>8.1f} {f['peak_mb']:>8.0f}")
    print(f"CPU default / tuned: {figures['default']['cpu'] / figures['tuned']['cpu']:.2f}x; "
          f"peak resident tuned / default: {figures['tuned']['peak_mb'] / figures['default']['peak_mb']:.2f}")
    same = summaries["default"] == summaries["tuned"]
    print("timeline summaries equal:", same)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
