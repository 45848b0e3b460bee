"""Does a change of code keep the numbers? Three runs, their tables compared exactly with a saved set.

    python benchmarks/same_behaviour.py --out /tmp/before --checkout /tmp/base   # record with another checkout's code
    python benchmarks/same_behaviour.py /tmp/before --out /tmp/after            # run with this checkout's, compare

The three runs, each through the command line in a fresh process (OMP_NUM_THREADS=1 unless set):
`demo` (experiments/demo.yaml), `compare` (a tiny synthetic scenario under two backfill policies and
a transform, with the backfill curve) and `timeline` (a tiny scenario with a `timeline` section, dual
queries, a partial backfill). Compared: every Parquet table (metrics, costs, events, stream,
gallery metadata, timeline, comparison, backfill curve), every Faiss index file byte for byte,
gallery.json, generations/*.json and run.json's scenario, status, sessions and timeline summary.
Left out, as they differ between any two runs: wall and CPU seconds, start times, run ids and
folders, the resident memory figures in events' details, and the projected hours of a transform
variant (psi's mapping is billed at its measured seconds). Exit status 1 on any difference.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import yaml

HERE = Path(__file__).resolve().parents[1]

DROPPED_COLUMNS = {"seconds", "started_at", "ended_at", "run_id", "run_dir"}
RUN_JSON_KEYS = ("name", "status", "scenario", "scenario_hash", "seed", "sessions", "completed_sessions", "timeline")


def dropped_detail(key: str) -> bool:
    """Keys of an events row's details that measure this process, not the simulation."""
    return "seconds" in key or key.endswith("rss_bytes")


def write_scenarios(folder: Path, saved: Path | None) -> tuple[Path, Path]:
    """The tiny scenarios of `compare` and `timeline`: the saved set's own files where there is one (the same runs
    whatever the tests' tiny scenario has become since), else the tests' tiny scenario as it is now."""
    folder.mkdir(parents=True, exist_ok=True)
    tiny, timeline = folder / "tiny.yaml", folder / "tiny-timeline.yaml"
    if saved is not None and (saved / "scenarios").is_dir():
        for path in (tiny, timeline):
            shutil.copyfile(saved / "scenarios" / path.name, path)
        return tiny, timeline
    sys.path.insert(0, str(HERE / "tests"))
    from conftest import tiny_dict, tiny_timeline

    tiny.write_text(yaml.safe_dump(tiny_dict(method={"name": "finetune"})))
    timeline.write_text(yaml.safe_dump(tiny_dict(name="tiny-timeline", backfill={"policy": "partial", "budget": 0.5},
                                                 timeline=tiny_timeline(queries="dual"))))
    return tiny, timeline


def run_all(out: Path, checkout: Path, saved: Path | None = None) -> None:
    """The three runs, with `checkout`'s code, into out/demo, out/compare and out/timeline."""
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    env.setdefault("OMP_NUM_THREADS", "1")
    cli = [sys.executable, "-m", "cvstream.cli"]
    tiny, timeline = write_scenarios(out / "scenarios", saved)
    commands = {
        "demo": [*cli, "run", str(checkout / "experiments" / "demo.yaml"), "--out", str(out / "demo"), "--no-progress"],
        "compare": [*cli, "compare", str(tiny), "--backfill", "none,partial:0.5:far-from-mean,transform", "--curve-session", "-1",
                    "--seconds-per-forward", "0.001", "--out", str(out / "compare"), "--no-progress"],
        "timeline": [*cli, "run", str(timeline), "--out", str(out / "timeline"), "--no-progress"],
    }
    for name, command in commands.items():
        if (out / name).exists():
            print(f"{name}: {out / name} exists, kept")
            continue
        print(f"{name}: {' '.join(command[1:])}", flush=True)
        done = subprocess.run(command, cwd=checkout, env=env, capture_output=True, text=True)
        (out / f"{name}.log").write_text(done.stdout + done.stderr)
        if done.returncode != 0:
            sys.exit(f"{name} failed ({done.returncode}):\n{(done.stdout + done.stderr)[-3000:]}")


def normalized(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.drop(columns=[c for c in frame.columns if c in DROPPED_COLUMNS])
    if {"policy", "projected_hours"} <= set(frame.columns):  # comparison.parquet: psi's mapping is billed at its measured seconds
        frame = frame.assign(projected_hours=frame.projected_hours.where(frame.policy != "transform"))
    if "detail" in frame.columns:
        def clean(text):
            if not isinstance(text, str):
                return text
            return json.dumps({k: v for k, v in json.loads(text).items() if not dropped_detail(k)}, sort_keys=True)

        frame = frame.assign(detail=frame.detail.map(clean))
    return frame.reset_index(drop=True)


def compared_files(root: Path) -> set[str]:
    patterns = ("*.parquet", "*.faiss", "gallery.json", "generations/*.json", "run.json")
    return {str(p.relative_to(root)) for pattern in patterns for p in root.rglob(pattern) if "scenarios" not in p.parts}


def differences(saved: Path, new: Path) -> list[str]:
    found = []
    names = compared_files(saved) | compared_files(new)
    for name in sorted(names):
        a, b = saved / name, new / name
        if not a.exists() or not b.exists():
            found.append(f"{name}: only in {saved if a.exists() else new}")
            continue
        if name.endswith(".parquet"):
            try:
                pd.testing.assert_frame_equal(normalized(pd.read_parquet(a)), normalized(pd.read_parquet(b)), check_exact=True)
            except AssertionError as exc:
                found.append(f"{name}: {str(exc).strip()[:2000]}")
        elif name.endswith(".faiss"):
            if a.read_bytes() != b.read_bytes():
                found.append(f"{name}: the index files differ")
        elif name.endswith("run.json"):
            x, y = json.loads(a.read_text()), json.loads(b.read_text())
            for key in RUN_JSON_KEYS:
                if x.get(key) != y.get(key):
                    found.append(f"{name}: {key} differs: {x.get(key)!r} != {y.get(key)!r}"[:2000])
        elif json.loads(a.read_text()) != json.loads(b.read_text()):
            found.append(f"{name}: differs")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("saved", nargs="?", help="the runs of another checkout (its --out) to compare with")
    parser.add_argument("--out", help="where this set of runs goes (default: a new temporary folder); existing runs there are kept")
    parser.add_argument("--checkout", default=str(HERE), help="the checkout whose code runs (default: this one)")
    args = parser.parse_args(argv)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="same-behaviour-"))
    run_all(out, Path(args.checkout).resolve(), Path(args.saved) if args.saved else None)
    if not args.saved:
        print(f"runs in {out}")
        return 0
    found = differences(Path(args.saved), out)
    count = len(compared_files(out))
    if found:
        print(f"{len(found)} of {count} files differ:")
        for line in found:
            print(f"  {line}")
        return 1
    print(f"the same: {count} files ({', '.join(sorted({Path(n).suffix for n in compared_files(out)}))}) of {out} equal {args.saved}'s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
