"""Session time of the official CVS code itself against cvstream, on the same stream files, CPU seconds.

    python benchmarks/official_code.py --official PATH [--sessions 2] [--method finetune] [--threads 1]

PATH is a checkout of ivclab/CVS (commit 51aee42) made to run on the CPU with current torch and
numpy by the four patches `experiments/RESULTS.md` lists under issue 13 (none changes what it
computes), its extra dependencies importable (easydict, randaugment, scikit-learn, pretrainedmodels),
and `PATH/dataset/tinyimagenet200` the unpacked Tiny-ImageNet-32 archive of the data root. The
stream of `experiments/cvs-tiny32-general30-official.yaml` is exported into
`PATH/collections/tinyimagenet200` (`cvstream stream --format cvs-json`); the official `train.py`
then runs each session in a process of its own with `scripts/tinyimagenet.sh`'s flags (batch 64,
lr 0.03, 3 epochs, one loader worker), and cvstream runs the same sessions in this process. Time:
user + sys CPU seconds of each official session's process and its DataLoader worker, and the
`cpu_seconds` of cvstream's `session_end` events; both sides use `--threads` torch threads.
R@1: the official `result.json` (`c_recall_1`, cosine, all seen queries against its mixed gallery)
and cvstream's `recall@1` on `all` queries against the mixed gallery.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

SCENARIO = HERE.parent / "experiments" / "cvs-tiny32-general30-official.yaml"
METHOD_FLAGS = {"finetune": [], "cvs": ["--loss_m", "--loss_d", "--alpha", "10.0", "--replay", "--buffer", "2000"]}


def data_root() -> Path:
    return Path(os.environ.get("CVSTREAM_DATA", HERE.parents[1] / "shared" / "data"))


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def official_sessions(path: Path, *, sessions: int, method: str, threads: int, tag: str) -> list[dict]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    out = []
    for t in range(sessions):
        save = f"exp/{tag}{t}"
        command = [sys.executable, "train.py", "--exp_name", "general30", "--dataset", "tinyimagenet", "--bs", "64",
                   "--n_epochs", "3", "--lr", "0.03", "--kernels", "1", "--save_dir", save, "--session_id", str(t)]
        if t > 0:
            command += ["--load_dir", f"exp/{tag}{t - 1}", *METHOD_FLAGS[method]]
        before = children_cpu()
        (path / save).parent.mkdir(parents=True, exist_ok=True)
        with open(path / f"{save}.log", "w") as log:
            subprocess.run(command, cwd=path, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
        result = json.loads((path / save / "result.json").read_text())
        out.append({"cpu_seconds": children_cpu() - before, "r1": result["c_recall_1"]})
    return out


def cvstream_sessions(*, sessions: int, method: str, amp: bool, out: Path) -> list[dict]:
    from cvstream.scenario import Scenario
    from cvstream.simulator import Simulator

    overrides = [f"method={method}", f"training.amp={str(amp).lower()}"] + (["replay.size=0"] if method == "finetune" else [])
    sim = Simulator(Scenario.from_yaml(SCENARIO, overrides=overrides), out_dir=out, data_root=data_root())
    with sim.running():
        for t in range(sessions):
            sim.run_session(t)
    result = sim.result()
    ends = [json.loads(d) for d in result.events.query("kind == 'session_end'").detail]
    r1 = result.metrics.query("metric == 'recall@1' and subset == 'all' and gallery_view == 'mixed'").sort_values("session")
    return [{"cpu_seconds": d["cpu_seconds"], "r1": float(v)} for d, v in zip(ends, r1.value)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", required=True, type=Path, help="the patched ivclab/CVS checkout")
    parser.add_argument("--sessions", type=int, default=2)
    parser.add_argument("--method", choices=sorted(METHOD_FLAGS), default="finetune")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("runs/official-code"), help="cvstream's run folders")
    args = parser.parse_args()
    if not (args.official / "train.py").is_file() or not (args.official / "dataset" / "tinyimagenet200").is_dir():
        parser.error(f"--official {args.official}: not a prepared ivclab/CVS checkout (train.py and dataset/tinyimagenet200 expected)")
    import torch

    torch.set_num_threads(args.threads)
    subprocess.run([sys.executable, "-m", "cvstream.cli", "stream", str(SCENARIO), "--format", "cvs-json",
                    "--out", str(args.official / "collections" / "tinyimagenet200"), "--data-root", str(data_root())],
                   check=True, capture_output=True, cwd=HERE.parent)
    rows = {"official code": official_sessions(args.official, sessions=args.sessions, method=args.method,
                                               threads=args.threads, tag=f"cvstream-bench-{args.method}")}
    from cvstream.models.trainer import cpu_has_bf16

    for amp in (False, True) if cpu_has_bf16() else (False,):  # without native bfloat16, training.amp is float32
        label = "cvstream, bfloat16" if amp else "cvstream, float32"
        rows[label] = cvstream_sessions(sessions=args.sessions, method=args.method, amp=amp,
                                        out=args.out / f"{args.method}-{'amp' if amp else 'fp32'}")
    print(f"{args.method}, sessions 0-{args.sessions - 1} of {SCENARIO.name}, {args.threads} torch thread(s), CPU seconds (R@1)")
    official = rows["official code"]
    for label, sessions in rows.items():
        cells = "  ".join(f"{s['cpu_seconds']:7.1f} s ({s['r1']:.3f})" for s in sessions)
        ratios = "  ".join(f"{o['cpu_seconds'] / s['cpu_seconds']:.2f}" for o, s in zip(official, sessions))
        print(f"{label:20s} {cells}   official / this: {ratios}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
