"""The GPU path, checked on a CUDA machine in under 5 minutes; without CUDA it says so and exits 0.

    python benchmarks/gpu_check.py [--sessions 3] [--epochs 2] [--skip-ddp]

1. A CVS run on CUDA with mixed precision (`training.amp`: bfloat16 autocast, channels-last) and the
   same run on the CPU in float32 (`training.amp: false`): training throughput of each, and R@1 (all
   seen queries, mixed gallery) per session, which must agree within `tolerance`: 0.05, or three
   standard errors of the difference of two R@1 measured on that session's n queries where that is more
   (bfloat16 rounding and another order of float sums make another trajectory of the same training,
   which differs like another run does, not like a bug: a wrong path misses by far more).
2. The Faiss GPU index, when Faiss has GPU support: the same gallery searched on the GPU and on the CPU
   (200,000 x 128-d flat, 2,000 queries, k = 10): the top-1 items must agree for TOP1_AGREEMENT of the
   queries (exact search both; ties and float rounding decide the rest), top-10 recall of the CPU's
   answers likewise; both search times printed.
3. DDP over every visible GPU: `torchrun --standalone --nproc_per_node <GPUs> -m cvstream.cli run` of the
   run of step 1, whose R@1 must agree with the single-GPU run within `tolerance`; its throughput printed.
   With one GPU there is nothing to split (WORLD_SIZE 1 trains alone): said, and skipped.

Exits 0 when every check holds (or there is no CUDA device), 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

R1_TOLERANCE = 0.05  # absolute R@1, per session (or 3 standard errors where more): CUDA bf16 against CPU float32, DDP against one GPU
TOP1_AGREEMENT = 0.99  # share of queries whose top-1 item is the same on the GPU and the CPU index
NO_CUDA = "no CUDA device: nothing to check on this machine (benchmarks/gpu_check.py runs on a CUDA machine)"


def scenario_dict(*, device: str, amp: bool, sessions: int, epochs: int) -> dict:
    """CVS on synthetic 32x32 images, ResNet-18 (CIFAR form): enough arithmetic for a GPU to show, seconds on 16 cores."""
    return {
        "name": "gpu-check", "seed": 0, "device": device,
        "dataset": {"name": "synthetic", "classes": 10 * sessions, "samples_per_class": 100, "image_size": 32, "channels": 3},
        "stream": {"setup": "disjoint", "sessions": sessions, "initial_classes": 10, "classes_per_session": 10, "query_fraction": 0.2},
        "model": {"backbone": "resnet18-cifar", "embedding_dim": 128, "width": 16},
        "training": {"epochs": epochs, "batch_size": 64, "lr": 0.03, "amp": amp},
        "method": {"name": "cvs"},
        "replay": {"size": 500, "selection": "herding"},
        "gallery": {"index": "flat", "gpu": True},
        "evaluation": {"recall_at": [1, 10], "probe_items": 100},
    }


def recall_and_throughput(run_dir: Path) -> tuple[list[float], list[int], float]:
    """R@1 (all, mixed) and its number of queries per session, and training samples per second, from a run's files."""
    from cvstream.simulator import load_run

    run = load_run(run_dir)
    m = run.metrics
    rows = m[(m.metric == "recall@1") & (m.subset == "all") & (m.gallery_view == "mixed")].sort_values("session")
    train = run.costs[run.costs.phase == "train"]
    return rows.value.tolist(), rows.n_queries.astype(int).tolist(), float(train["items"].sum() / max(train["seconds"].sum(), 1e-9))


def tolerance(r1: float, n: int) -> float:
    """R1_TOLERANCE, or three standard errors of the difference of two R@1 near `r1` on `n` queries if more."""
    return max(R1_TOLERANCE, 3 * float(np.sqrt(2 * r1 * (1 - r1) / max(n, 1))))


def agreement(name: str, ours: dict, reference: dict) -> tuple[str, bool, str]:
    gaps = [abs(a - b) for a, b in zip(ours["r1"], reference["r1"])]
    allowed = [tolerance(b, n) for b, n in zip(reference["r1"], reference["n"])]
    ok = len(gaps) == len(reference["r1"]) > 0 and all(g <= t for g, t in zip(gaps, allowed))
    return (f"{name}: R@1 per session within tolerance", ok,
            f"{[round(v, 3) for v in ours['r1']]} against {[round(v, 3) for v in reference['r1']]}, "
            f"gaps {[round(g, 3) for g in gaps]}, allowed {[round(t, 3) for t in allowed]}")


def run_cli(args: list[str], *, env: dict | None = None, torchrun: int = 0) -> None:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(torchrun)] if torchrun else [sys.executable]
    subprocess.run([*launcher, "-m", "cvstream.cli", *args], check=True, env=env, cwd=ROOT, timeout=600)


def cvs_runs(work: Path, *, sessions: int, epochs: int) -> dict:
    out = {}
    for name, device, amp in (("cuda", "cuda", True), ("cpu", "cpu", False)):
        path = work / f"{name}.yaml"
        path.write_text(yaml.safe_dump(scenario_dict(device=device, amp=amp, sessions=sessions, epochs=epochs)))
        started = time.perf_counter()
        run_cli(["run", str(path), "--out", str(work / name), "--no-progress"])
        r1, n, speed = recall_and_throughput(work / name)
        out[name] = {"r1": r1, "n": n, "samples_per_s": speed, "wall_s": time.perf_counter() - started}
    info = json.loads((work / "cuda" / "gallery.json").read_text())
    out["gallery_gpu"], out["gallery_gpu_error"] = info.get("gpu"), info.get("gpu_error", "")
    return out


def faiss_gpu_check() -> dict | None:
    from cvstream.gallery import Gallery, IndexSpec
    from cvstream.gallery.index import gpu_available

    if not gpu_available():
        return None
    rng = np.random.default_rng(0)
    n, dim, q = 200_000, 128, 2_000
    x = rng.standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    queries = x[rng.choice(n, q, replace=False)] + 0.05 * rng.standard_normal((q, dim), dtype=np.float32)
    results = {}
    for name, gpu in (("gpu", True), ("cpu", False)):
        gallery = Gallery(dim, IndexSpec(index="flat", gpu=gpu))
        gallery.add(x, sample_ids=np.arange(n), class_ids=np.zeros(n, np.int64), session=0, generation=0)
        gallery.search(queries[:10], 10)  # the GPU copy is made here, not timed
        started = time.perf_counter()
        _, ids = gallery.search(queries, 10)
        results[name] = {"ids": ids, "seconds": time.perf_counter() - started, "used_gpu": gallery.gpu, "error": gallery.gpu_error}
    gpu_ids, cpu_ids = results["gpu"]["ids"], results["cpu"]["ids"]
    top1 = float(np.mean(gpu_ids[:, 0] == cpu_ids[:, 0]))
    top10 = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(gpu_ids, cpu_ids)]))
    return {"top1_agreement": top1, "top10_overlap": top10, "gpu_s": results["gpu"]["seconds"], "cpu_s": results["cpu"]["seconds"],
            "used_gpu": results["gpu"]["used_gpu"], "error": results["gpu"]["error"]}


def ddp_run(work: Path, *, gpus: int, sessions: int, epochs: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    started = time.perf_counter()
    run_cli(["run", str(work / "cuda.yaml"), "--out", str(work / "ddp"), "--no-progress"], env=env, torchrun=gpus)
    r1, n, speed = recall_and_throughput(work / "ddp")
    return {"r1": r1, "n": n, "samples_per_s": speed, "wall_s": time.perf_counter() - started}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--skip-ddp", action="store_true")
    parser.add_argument("--work", default=None, help="folder for the runs (default: a temporary one)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print(NO_CUDA)
        return 0
    gpus = torch.cuda.device_count()
    print(f"{gpus} CUDA device(s): {torch.cuda.get_device_name(0)}; torch {torch.__version__}; bf16 {torch.cuda.is_bf16_supported()}")
    checks: list[tuple[str, bool, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        runs = cvs_runs(work, sessions=args.sessions, epochs=args.epochs)
        cuda, cpu = runs["cuda"], runs["cpu"]
        checks.append(agreement("CVS on CUDA (bf16) against the CPU (float32)", cuda, cpu))
        print(f"training throughput: cuda {cuda['samples_per_s']:,.0f} samples/s, cpu {cpu['samples_per_s']:,.0f} samples/s "
              f"({cuda['samples_per_s'] / cpu['samples_per_s']:.1f}x); runs {cuda['wall_s']:.0f} s and {cpu['wall_s']:.0f} s wall")
        print(f"the run's gallery searched on the GPU: {runs['gallery_gpu']} {runs['gallery_gpu_error']}".rstrip())
        faiss_result = faiss_gpu_check()
        if faiss_result is None:
            print("Faiss has no GPU support here (pip install 'cvstream[gpu]'): the gallery searches on the CPU; GPU index not checked")
        else:
            ok = faiss_result["used_gpu"] and faiss_result["top1_agreement"] >= TOP1_AGREEMENT
            checks.append((f"Faiss GPU flat index against the CPU one, top-1 agreement >= {TOP1_AGREEMENT}", ok,
                           f"top-1 {faiss_result['top1_agreement']:.4f}, top-10 overlap {faiss_result['top10_overlap']:.4f}; "
                           f"search of 2,000 queries over 200,000: GPU {faiss_result['gpu_s'] * 1e3:.1f} ms, CPU {faiss_result['cpu_s'] * 1e3:.1f} ms"
                           + (f"; GPU error: {faiss_result['error']}" if faiss_result["error"] else "")))
        if args.skip_ddp:
            print("DDP: skipped (--skip-ddp)")
        elif gpus < 2:
            print("DDP: one GPU visible, nothing to split (WORLD_SIZE 1 trains alone); tests/models/test_distributed.py checks DDP on CPU")
        else:
            ddp = ddp_run(work, gpus=gpus, sessions=args.sessions, epochs=args.epochs)
            name, ok, detail = agreement(f"DDP over {gpus} GPUs against one GPU", ddp, cuda)
            checks.append((name, ok, f"{detail}; {ddp['samples_per_s']:,.0f} samples/s "
                           f"({ddp['samples_per_s'] / cuda['samples_per_s']:.2f}x one GPU), {ddp['wall_s']:.0f} s wall"))
    ok = True
    for name, passed, detail in checks:
        ok &= passed
        print(f"{name}: {'ok' if passed else 'MISSED'}  [{detail}]")
    print(f"all checks hold: {ok}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
