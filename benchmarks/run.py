"""The scale benchmarks, as ratios measured in one run, each with its target.

    python benchmarks/run.py [--quick] [--sessions 200] [--repeats 5] [--threads 1] [--memory-from RUN_DIR] [--skip-others]

(a) the simulator's training throughput against a plain PyTorch loop over the same model,
    data and batch (target >= 0.95);
(b) peak memory of session 200 against session 20, gallery bytes excluded (target <= 1.10):
    each session's own peak (VmHWM reset at session start) minus the gallery's bytes then, of a
    plain `cvstream run` (a process of its own, no MALLOC_* variables) of the long-horizon settings
    on synthetic images;
(c) vectorised hardest-negative mining against a per-sample Python loop, batch 64 (>= 20x);
(d) cvstream's speed-up over a plain loop in the official CVS code's style, JPEG decoding per
    batch in DataLoader workers (benchmarks/official_style.py), CPU seconds, divided by this CPU's own
    ceiling measured in the same run: one training step of the same network in float32 against
    bfloat16 with channels-last (benchmarks/cpu_precision.py), 1.0 on a CPU without native bfloat16
    (target >= 0.9);
(e) bytes one session writes (its files and checkpoint) at two gallery sizes, for the same new
    items (benchmarks/io_per_session.py; target < 1.3);
then the other benchmark scripts in this folder (streams, methods, gallery, evaluation),
each run as it is and judged by its own exit status. Exits 0 when every target holds.
`--quick` runs each at a size of a minute or two (a 60-session stream for (b), so session 60
against 20), one repeat, without the other scripts.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from cpu_precision import VARIANTS, cpu_description, step_seconds  # noqa: E402
from cvstream.models import build_model  # noqa: E402
from cvstream.models.trainer import cpu_has_bf16  # noqa: E402
from cvstream.scenario import Scenario  # noqa: E402
from cvstream.simulator import Hook, Simulator  # noqa: E402

# CPU seconds of this process: with one torch thread, other work on a shared machine does not count against either side.
CLOCK = time.process_time
OTHERS = {  # script -> arguments that keep it to a few minutes on a small CPU
    "streams.py": [],
    "methods.py": [],
    "gallery.py": ["--large", "300000", "--repeats", "2"],
    "evaluation.py": ["--gallery", "50000", "--queries", "5000"],
}


# -- (a) training throughput ---------------------------------------------------------------


def throughput_scenario(*, samples_per_class: int, epochs: int) -> Scenario:
    """One session of finetune on synthetic images: the training loop and nothing else."""
    return Scenario.from_dict({
        "name": "throughput", "seed": 0, "device": "cpu",
        "dataset": {"name": "synthetic", "classes": 16, "samples_per_class": samples_per_class, "image_size": 32, "channels": 3},
        "stream": {"setup": "disjoint", "sessions": 1, "initial_classes": 16, "classes_per_session": 16, "query_fraction": 0.1},
        "model": {"backbone": "convnet", "embedding_dim": 128, "width": 16},
        # float32 like the plain loop: (a) measures the engine around the arithmetic, not the arithmetic ((d) does)
        "training": {"epochs": epochs, "batch_size": 64, "lr": 0.03, "warmup_epochs": 0, "augment": False, "amp": False},
        "method": {"name": "finetune"},
        "replay": {"size": 0},
        "evaluation": {"recall_at": [1], "map_at_r": False, "probe_items": 0},
    })


class TrainTimer(Hook):
    """Wall time of the engine's whole train step (model growth, context, loop; after the session's bookkeeping start),
    and the samples it trained."""

    def before_session(self, sim, session: int) -> None:
        self.started = CLOCK()

    def after_training(self, sim, outcome) -> None:
        self.seconds, self.samples = CLOCK() - self.started, outcome.items


def simulator_throughput(scenario: Scenario) -> tuple[float, Simulator]:
    timer = TrainTimer()
    sim = Simulator(scenario, write=False, hooks=[timer])
    sim.run()
    return timer.samples / timer.seconds, sim


def plain_throughput(scenario: Scenario, sim: Simulator) -> float:
    """The loop anyone would write: same model, data, batch, optimiser and loss; no engine, no hooks."""
    spec = scenario.training
    session = sim.stream[0]
    images = sim.images
    model = build_model(scenario, in_channels=images.shape[1], input_ndim=images.ndim)
    model.add_classes(session.new_classes, torch.Generator().manual_seed(0))
    ids = torch.as_tensor(session.train_ids)
    rows = model.rows_of(torch.as_tensor(sim.labels_of(session.train_ids)))
    temperature = scenario.method.params.temperature
    started = CLOCK()
    optimizer = torch.optim.SGD(model.parameters(), lr=spec.lr, momentum=spec.momentum, nesterov=True, weight_decay=spec.weight_decay)
    generator = torch.Generator().manual_seed(0)
    samples = 0
    model.train()
    for _ in range(spec.epochs):
        order = torch.randperm(len(ids), generator=generator)
        for i in range(len(ids) // spec.batch_size):
            pick = order[i * spec.batch_size : (i + 1) * spec.batch_size]
            x = images[ids[pick]].float().div_(127.5).sub_(1.0)
            loss = F.cross_entropy(model.cosine(model(x)) / temperature, rows[pick])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            samples += len(pick)
    return samples / (CLOCK() - started)


def training_ratio(*, repeats: int) -> dict:
    scenario = throughput_scenario(samples_per_class=80, epochs=2)
    simulator_throughput(scenario)  # warm-up: lazy imports, allocator, kernels
    sims, plains = [], []
    for _ in range(repeats):  # interleaved, best of each: other work on the machine slows both alike
        speed, sim = simulator_throughput(scenario)
        sims.append(speed)
        plains.append(plain_throughput(scenario, sim))
    return {"simulator_samples_per_s": max(sims), "plain_samples_per_s": max(plains), "ratio": max(sims) / max(plains)}


# -- (b) memory over a long stream ---------------------------------------------------------


def memory_scenario(sessions: int) -> dict:
    """experiments/long-horizon.yaml on synthetic 28x28 images: CVS, replay 320, probe 200, 8 classes a session."""
    return {
        "name": "memory", "seed": 0, "device": "cpu",
        "dataset": {"name": "synthetic", "classes": 8 * sessions, "samples_per_class": 20, "image_size": 28, "channels": 1},
        "stream": {"setup": "disjoint", "sessions": sessions, "initial_classes": 8, "classes_per_session": 8, "query_fraction": 0.25},
        "model": {"backbone": "convnet", "embedding_dim": 64, "width": 8},
        "training": {"epochs": 1, "batch_size": 64, "lr": 0.03, "warmup_epochs": 0},
        "method": {"name": "cvs", "alpha": 10, "beta": 1, "margin": 0.1, "temperature": 0.05},
        "replay": {"size": 320, "selection": "herding"},
        "evaluation": {"recall_at": [1, 10], "probe_items": 200},
    }


def memory_figures(events: pd.DataFrame, *, early: int, late: int) -> dict:
    """Each session's peak RSS minus the gallery's bytes, at `early` and `late`, from session_end events."""
    ends = events[events.kind == "session_end"].set_index("session").detail.map(json.loads)
    if late not in ends.index or early not in ends.index:
        raise SystemExit(f"the run has no session_end events for sessions {early} and {late}")

    def net(t: int) -> int:
        return ends[t]["peak_rss_bytes"] - ends[t]["gallery_bytes"]

    return {"early": early, "late": late, "early_mib": net(early) / 2**20, "late_mib": net(late) / 2**20,
            "gallery_late_mib": ends[late]["gallery_bytes"] / 2**20, "ratio": net(late) / net(early)}


def memory_ratio(*, sessions: int, run_dir: str | None, threads: int) -> dict:
    """From a finished run, or from a plain `cvstream run` of `memory_scenario` in a process of its own."""
    if not run_dir:
        import yaml

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "memory.yaml"
            path.write_text(yaml.safe_dump(memory_scenario(sessions)))
            env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
            env["OMP_NUM_THREADS"] = str(threads)
            subprocess.run([sys.executable, "-m", "cvstream.cli", "run", str(path), "--out", f"{tmp}/run", "--no-progress"],
                           check=True, env=env, cwd=HERE.parent, capture_output=True)
            events = pd.read_parquet(Path(tmp) / "run" / "events.parquet")
    else:
        events = pd.read_parquet(Path(run_dir) / "events.parquet")
    late = int(events.session.max())
    return memory_figures(events, early=19 if late > 19 else max(late // 2, 1), late=late)  # session 20 (index 19)


# -- (c) hardest-negative mining ----------------------------------------------------------


def mining_ratio(*, batch: int, repeats: int) -> dict:
    """Vectorised mining (the package's loss) against the per-sample loop in benchmarks/methods.py."""
    from cvstream.models.losses import hardest_negative_triplet

    methods = _load("methods.py")
    g = torch.Generator().manual_seed(3)
    anchor = F.normalize(torch.randn(batch, 128, generator=g), dim=1)
    old = F.normalize(torch.randn(batch, 128, generator=g), dim=1)
    labels = torch.randint(0, 20, (batch,), generator=g)
    same = torch.allclose(hardest_negative_triplet(anchor, old, old, labels, 0.1), methods.looped_mining(anchor, old, old, labels, 0.1), atol=1e-5)
    fast = min(methods.mining_seconds(hardest_negative_triplet, batch=batch, repeats=repeats) for _ in range(3))
    slow = min(methods.mining_seconds(methods.looped_mining, batch=batch, repeats=max(repeats // 10, 3)) for _ in range(3))
    return {"vectorised_ms": fast * 1e3, "loop_ms": slow * 1e3, "ratio": slow / fast, "same_loss": same}


def precision_ceiling(*, steps: int) -> dict:
    """The most (d) can ask of this CPU: a ResNet-18 training step (official_style.py's network) in float32
    against bfloat16 with channels-last, cvstream's setting; 1.0 without native bfloat16, where both are float32."""
    if not cpu_has_bf16():
        return {"ceiling": 1.0, "detail": "1.00 (no native bfloat16: float32 on both sides)"}
    float32 = step_seconds("resnet18", VARIANTS["float32"], steps=steps)
    bf16 = step_seconds("resnet18", VARIANTS["bf16 + channels-last"], steps=steps)
    return {"ceiling": float32 / bf16,
            "detail": f"{float32 / bf16:.2f} (ResNet-18 step {float32:.3f} s float32 / {bf16:.3f} s bfloat16 + channels-last)"}


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name[:-3]}", HERE / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- the other benchmark scripts -------------------------------------------------------------


def run_others(timeout: int) -> list[tuple[str, int, str]]:
    out = []
    for script, extra in OTHERS.items():
        path = HERE / script
        if not path.is_file():
            out.append((script, -1, "not present"))
            continue
        try:
            done = subprocess.run([sys.executable, str(path), *extra], capture_output=True, text=True, timeout=timeout)
            out.append((f"{script} {' '.join(extra)}".strip(), done.returncode, (done.stdout + done.stderr).strip()))
        except subprocess.TimeoutExpired:
            out.append((script, -2, f"did not finish in {timeout} s"))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=200, help="(b): length of the synthetic stream")
    parser.add_argument("--memory-from", default=None, metavar="RUN_DIR", help="(b): read the figure from a finished run instead")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier ratios on a shared CPU)")
    parser.add_argument("--skip-others", action="store_true", help="do not run the other benchmark scripts")
    parser.add_argument("--timeout", type=int, default=900, help="seconds allowed to each other script")
    parser.add_argument("--quick", action="store_true", help="each benchmark at a small size, one repeat, no other scripts")
    args = parser.parse_args()
    if args.quick:
        args.sessions, args.repeats, args.skip_others = min(args.sessions, 60), 1, True
    torch.set_num_threads(args.threads)
    print(cpu_description(), flush=True)
    rows = []

    a = training_ratio(repeats=args.repeats)
    rows.append(("(a) simulator / plain training throughput", a["ratio"], ">= 0.95", a["ratio"] >= 0.95,
                 f"{a['simulator_samples_per_s']:.0f} vs {a['plain_samples_per_s']:.0f} samples/s"))
    c = mining_ratio(batch=64, repeats=50)
    rows.append(("(c) vectorised / looped hardest-negative mining, batch 64", c["ratio"], ">= 20", c["ratio"] >= 20 and c["same_loss"],
                 f"{c['vectorised_ms']:.3f} vs {c['loop_ms']:.1f} ms per batch, same loss: {c['same_loss']}"))
    b = memory_ratio(sessions=args.sessions, run_dir=args.memory_from, threads=args.threads)
    rows.append((f"(b) peak memory, session {b['late'] + 1} / session {b['early'] + 1}, gallery excluded, plain cvstream run",
                 b["ratio"], "<= 1.10", b["ratio"] <= 1.10,
                 f"{b['late_mib']:.0f} vs {b['early_mib']:.0f} MiB (gallery then {b['gallery_late_mib']:.1f} MiB)"))
    official = _load("official_style.py")
    size = {"classes": 8, "per_class": 80, "epochs": 1} if args.quick else {"classes": 20, "per_class": 150, "epochs": 3}
    d = official.compare(**size, workers=1)
    ceiling = precision_ceiling(steps=3 if args.quick else 7)
    quotient = d["ratio"] / ceiling["ceiling"]
    rows.append(("(d) speed-up over the official-style loop / this CPU's bfloat16 ceiling", quotient, ">= 0.9", quotient >= 0.9,
                 f"speed-up {d['ratio']:.2f}, ceiling {ceiling['detail']}; {official.describe(d)}"))
    io = _load("io_per_session.py")
    e = io.measure(small=20, large=200 if args.quick else 1000, per_class=20, big_class=200 if args.quick else 1000)
    rows.append((f"(e) bytes written per session, gallery {e['large']['gallery_before']:,} / {e['small']['gallery_before']:,}",
                 e["ratio"], "< 1.3", e["ratio"] < 1.3,
                 f"{e['large']['bytes'] / 1024:.0f} vs {e['small']['bytes'] / 1024:.0f} KiB for {e['small']['new_items']} new items"))
    ok = True
    for name, value, target, passed, detail in rows:
        ok &= bool(passed)
        print(f"{name}: {value:.3f} (target {target}) {'ok' if passed else 'MISSED'}  [{detail}]")
    if not args.skip_others:
        for script, status, output in run_others(args.timeout):
            passed = status == 0
            ok &= passed or status == -1
            print(f"\n== {script}: {'ok' if passed else 'not present' if status == -1 else f'MISSED (exit {status})'}")
            print(output[-3000:])
    print(f"\nall targets hold: {ok}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
