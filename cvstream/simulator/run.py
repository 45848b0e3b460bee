"""A run's folder, its run.json, and the result of a run as pandas tables."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import pandas as pd

from cvstream.errors import UserError
from cvstream.gallery.parts import saved_metadata
from cvstream.simulator.outputs import read_parquet

FORMAT_VERSION = 1


@dataclass
class RunResult:
    run_dir: Path | None
    run_id: str
    status: str
    metrics: pd.DataFrame
    costs: pd.DataFrame
    events: pd.DataFrame
    stream: pd.DataFrame
    gallery: pd.DataFrame
    timeline: pd.DataFrame | None = None  # the service timeline (timeline.parquet), when the scenario has one
    timeline_summary: dict | None = None  # its summary figures (run.json's `timeline`)

    def recall_table(self, k: int = 1, view: str = "mixed") -> pd.DataFrame:
        """R@k per session (rows) and subset (old, new, all), against the given gallery view."""
        return self.metric_table(f"recall@{k}", view)

    def metric_table(self, metric: str, view: str = "mixed") -> pd.DataFrame:
        """One metric per session (rows) and subset (old, new, all), against the given gallery view."""
        m = self.metrics
        m = m[(m.metric == metric) & (m.gallery_view == view)]
        table = m.pivot_table(index="session", columns="subset", values="value")
        return table.reindex(columns=[c for c in ("old", "new", "all") if c in table.columns])


def new_run_dir(scenario, out_dir: str | Path | None) -> tuple[Path, str]:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    run_id = f"{stamp}-{scenario.digest()[:6]}"
    if out_dir is not None:
        path = Path(out_dir)
        if (path / "run.json").exists():
            raise UserError(f"{path} already holds a run (run.json); choose another --out, or remove it")
    else:
        path = Path(scenario.output.dir) / scenario.name / run_id
        suffix = 1
        while path.exists():
            path = path.with_name(f"{run_id}-{suffix}")
            suffix += 1
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the run folder {path}: {exc}") from None
    return path, run_id


def read_info(path: str | Path) -> dict:
    """run.json of a run folder; a folder that is not a run, or one of another format, is a user error."""
    path = Path(path)
    info_path = path / "run.json"
    if not info_path.is_file():
        raise UserError(f"{path} is not a cvstream run folder (no run.json)")
    try:
        info = json.loads(info_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{info_path} cannot be read: {exc}") from None
    if not isinstance(info, dict) or info.get("format_version") != FORMAT_VERSION:
        version = info.get("format_version") if isinstance(info, dict) else None
        raise UserError(f"{path} was written by an incompatible cvstream (format {version}, expected {FORMAT_VERSION})")
    return info


def resumable_run(path: str | Path) -> dict:
    """run.json of a run that `--resume` can continue; a finished run is a user error."""
    info = read_info(path)
    if info.get("status") == "completed":
        raise UserError(f"{path}: the run is finished ({info.get('sessions')} sessions completed); nothing to resume")
    return info


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("cvstream", "torch", "torchvision", "faiss-cpu", "faiss-gpu-cu12", "numpy", "pandas", "pyarrow"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def _threads() -> dict[str, int]:
    """The threads torch and Faiss compute with in this process."""
    import faiss
    import torch

    return {"torch": torch.get_num_threads(), "faiss": faiss.omp_get_max_threads()}


def _git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        done = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


def run_info(sim, *, status: str, record: dict | None = None) -> dict:
    """run.json of `sim`'s run; `record`, what the driver recorded of it at the end (the service timeline's summary)."""
    return {
        "format_version": FORMAT_VERSION,
        "run_id": sim.run_id,
        "name": sim.scenario.name,
        "status": status,
        "scenario": sim.scenario.to_dict(complete=True),  # every key with its value: a later default change keeps its meaning
        "scenario_hash": sim.scenario.digest(),
        "seed": sim.scenario.seed,
        "versions": _versions(),
        "git_commit": _git_commit(),
        "device": str(sim.device),
        "threads": _threads(),  # torch's CPU kernels may round differently on another number of threads
        "platform": platform.platform(),
        "argv": sys.argv,
        "started_at": sim.started_at.isoformat() if sim.started_at else None,
        "sessions": len(sim.stream),
        **(record or {}),
    }


def load_run(path: str | Path) -> RunResult:
    """Read a run folder written by `cvstream run` back into a `RunResult`."""
    path = Path(path)
    info = read_info(path)

    def table(name: str) -> pd.DataFrame:
        return read_parquet(path / f"{name}.parquet")

    return RunResult(
        run_dir=path, run_id=info["run_id"], status=info.get("status", "unknown"),
        metrics=table("metrics"), costs=table("costs"), events=table("events"), stream=table("stream"),
        gallery=saved_metadata(path),  # one table from the per-session parts (or an older run's gallery.parquet)
        timeline=read_parquet(path / "timeline.parquet") if (path / "timeline.parquet").is_file() else None,
        timeline_summary=info.get("timeline"),
    )
