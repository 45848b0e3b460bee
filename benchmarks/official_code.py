"""Session time of the official CVS code itself against cvstream, on the same stream files, CPU seconds.

    python benchmarks/official_code.py --official PATH [--sessions 2] [--method finetune] [--threads 1] [--json OUT]
    python benchmarks/official_code.py --official PATH --both-methods [--sessions 5] [--tag run-] [--json OUT]

PATH is a checkout of ivclab/CVS (commit 51aee42) made to run on the CPU with current torch and
numpy by the four patches `experiments/RESULTS.md` lists (none changes what it
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

`--both-methods` runs the official code only: session 0 once, then `finetune` and `cvs` each from that
same session-0 model, and measures every session's R@1 on all seen test queries and on old (home session,
the first whose training file has the class, before t) and new (home session t) classes, from the saved
`ckpt.pth` (embeds the test queries of sessions 0..t) and `gallery_features.npy` (cosine, top 1);
`r1_all` reproduces `result.json`'s `r1`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
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


def official_session(path: Path, *, t: int, save: str, load: str, method: str, threads: int) -> dict:
    if (path / save).exists():  # train.py exits 0 without training into an existing folder
        raise FileExistsError(path / save)
    command = [sys.executable, "train.py", "--exp_name", "general30", "--dataset", "tinyimagenet", "--bs", "64",
               "--n_epochs", "3", "--lr", "0.03", "--kernels", "1", "--save_dir", save, "--session_id", str(t)]
    if t > 0:
        command += ["--load_dir", load, *METHOD_FLAGS[method]]
    before = children_cpu()
    (path / save).parent.mkdir(parents=True, exist_ok=True)
    with open(path / f"{save}.log", "w") as log:
        subprocess.run(command, cwd=path, env={**os.environ, "OMP_NUM_THREADS": str(threads)},
                       stdout=log, stderr=subprocess.STDOUT, check=True)
    result = json.loads((path / save / "result.json").read_text())
    return {"cpu_seconds": children_cpu() - before, "r1": result["c_recall_1"]}


def official_sessions(path: Path, *, sessions: int, method: str, threads: int, tag: str) -> list[dict]:
    return [official_session(path, t=t, save=f"exp/{tag}{t}", load=f"exp/{tag}{t - 1}", method=method, threads=threads)
            for t in range(sessions)]


def official_recall(path: Path, save: Path, t: int) -> dict:
    """R@1 of session t's saved model: all seen test queries, old and new classes, against its mixed gallery."""
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
    import numpy as np
    import torch
    import torch.nn.functional as F
    from loader.tinyimagenet import TINYIMAGENET
    from utils.train_utils import select_model

    collections = path / "collections" / "tinyimagenet200"
    home: dict[int, int] = {}
    for s in range(t + 1):
        for item in json.loads((collections / f"tinyimagenet200_train_general30_rand1_cls20_task{s}.json").read_text()):
            home.setdefault(item["label"], s)
    queries = TINYIMAGENET(root=str(path / "dataset" / "tinyimagenet200"), prefix=str(collections), mode="test",
                           session_id=t, exp_name="general30")
    net = select_model("resnet18", "tinyimagenet", num_classes=20 * (t + 1), feature_size=128, nsloss=True)
    net.load_state_dict(torch.load(save / "ckpt.pth", weights_only=False)["net"])
    net.eval()
    with torch.no_grad():
        embedded = torch.cat([net(x, True) for x, _ in torch.utils.data.DataLoader(queries, batch_size=100)])
    gallery = F.normalize(torch.from_numpy(np.load(save / "gallery_features.npy")), dim=1)
    found = np.load(save / "gallery_labels.npy").reshape(-1)[(F.normalize(embedded, dim=1) @ gallery.T).argmax(1).numpy()]
    hit, born = found == np.array(queries.targets), np.array([home[c] for c in queries.targets])
    return {"r1_all": float(hit.mean()), "r1_old": float(hit[born < t].mean()) if t else None,
            "r1_new": float(hit[born == t].mean())}


def official_both(path: Path, *, sessions: int, threads: int, tag: str, out: Path | None) -> dict[str, list[dict]]:
    """finetune and cvs from one shared session 0; `out` is rewritten after every session, and a rerun with the same
    `out` and `tag` takes the sessions it already finished from it (an unfinished one is trained again)."""
    done = json.loads(out.read_text()) if out is not None and out.is_file() else {}
    finished = {(m, r["session"]): r for m, method_rows in done.items() for r in method_rows}

    def run(t: int, save: str, load: str, method: str) -> dict:
        if (method, t) in finished and (path / save / "result.json").is_file():
            return finished[(method, t)]
        shutil.rmtree(path / save, ignore_errors=True)  # a session killed half-way
        row = official_session(path, t=t, save=save, load=load, method=method, threads=threads)
        row |= {"session": t, **official_recall(path, path / save, t)}
        print(method, json.dumps(row), flush=True)
        return row

    first = run(0, f"exp/{tag}0", "", "finetune")
    rows = {"finetune": [first], "cvs": [first]}
    if out:
        out.write_text(json.dumps(rows, indent=1))
    for method in rows:
        for t in range(1, sessions):
            load = f"exp/{tag}0" if t == 1 else f"exp/{tag}{method}{t - 1}"
            rows[method].append(run(t, f"exp/{tag}{method}{t}", load, method))
            if out:
                out.write_text(json.dumps(rows, indent=1))
    return rows


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
    parser.add_argument("--both-methods", action="store_true",
                        help="the official code only: finetune and cvs from one shared session 0, R@1 all / old / new")
    parser.add_argument("--tag", default="cvstream-bench-", help="prefix of the official save folders under PATH/exp")
    parser.add_argument("--json", type=Path, help="write the per-session rows here")
    args = parser.parse_args()
    if not (args.official / "train.py").is_file() or not (args.official / "dataset" / "tinyimagenet200").is_dir():
        parser.error(f"--official {args.official}: not a prepared ivclab/CVS checkout (train.py and dataset/tinyimagenet200 expected)")
    import torch
    from cpu_precision import cpu_description

    print(cpu_description(), flush=True)
    torch.set_num_threads(args.threads)
    subprocess.run([sys.executable, "-m", "cvstream.cli", "stream", str(SCENARIO), "--format", "cvs-json",
                    "--out", str(args.official / "collections" / "tinyimagenet200"), "--data-root", str(data_root())],
                   check=True, capture_output=True, cwd=HERE.parent)
    if args.both_methods:
        rows = official_both(args.official, sessions=args.sessions, threads=args.threads, tag=args.tag, out=args.json)
        print(f"official code, sessions 0-{args.sessions - 1} of {SCENARIO.name}, {args.threads} torch thread(s): "
              "R@1 all (old / new), CPU seconds")
        for t, pair in enumerate(zip(rows["finetune"], rows["cvs"])):
            f, c = (f"{r['r1_all']:.3f} ({r['r1_old'] if t else float('nan'):.3f} / {r['r1_new']:.3f}) {r['cpu_seconds']:6.1f} s"
                    for r in pair)
            print(f"session {t}  finetune {f}  cvs {c}")
        if args.json:
            args.json.write_text(json.dumps(rows, indent=1))
        return 0
    rows = {"official code": official_sessions(args.official, sessions=args.sessions, method=args.method,
                                               threads=args.threads, tag=f"{args.tag}{args.method}")}
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
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
