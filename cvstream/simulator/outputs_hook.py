"""The hook that writes a run's files as it goes: every completed session is on disk.

A step's files for the writer travel in its outcome's `artifacts` (the backfill curve, the
evaluated embeddings), gathered in the `SessionResult`, and are written with the session's tables; the
table schemas are in `cvstream.simulator.tables`. The engine checkpoints after this hook.
"""

from __future__ import annotations

import io
from datetime import datetime, timezone

import numpy as np

from cvstream.simulator.hooks import Hook
from cvstream.simulator.outputs import OutputError, atomic_write_bytes, write_json, write_parquet
from cvstream.simulator.run import run_info
from cvstream.simulator.tables import COLUMNS


class ParquetWriter(Hook):
    def before_run(self, sim) -> None:
        write_json(sim.run_dir / "run.json", run_info(sim, status="running"))
        write_parquet(sim.run_dir / "stream.parquet", sim.stream.to_frame())

    def after_session(self, sim, result) -> None:
        for name in COLUMNS:
            write_parquet(sim.run_dir / f"{name}.parquet", sim.tables.frame(name))
        sim.gallery.save(sim.run_dir)  # gallery-NNNN.faiss, gallery.json, gallery-metadata/part-<t>.parquet
        if "backfill_curve" in result.artifacts:
            write_parquet(sim.run_dir / "backfill_curve.parquet", result.artifacts["backfill_curve"])
        self._save_embeddings(sim, result.artifacts.get("embeddings", {}))
        info = run_info(sim, status="running")
        info["completed_sessions"] = result.session + 1
        write_json(sim.run_dir / "run.json", info)

    def _save_embeddings(self, sim, files: dict[str, dict[str, np.ndarray]]) -> None:
        """embeddings/session-<t>.npz: exactly the vectors a session's evaluation searched (and probe-<g>.npz)."""
        if not files:
            return
        folder = sim.run_dir / "embeddings"
        folder.mkdir(exist_ok=True)
        for name, arrays in files.items():
            buffer = io.BytesIO()
            np.savez(buffer, **arrays)
            atomic_write_bytes(folder / f"{name}.npz", buffer.getvalue())

    def after_run(self, sim, status: str, record: dict) -> None:
        if status != "completed":
            try:  # best effort: the error that stopped the run is the one to report
                self._final_info(sim, status, record)
            except OutputError:
                pass
            return
        self._final_info(sim, status, record)

    def _final_info(self, sim, status: str, record: dict) -> None:
        info = run_info(sim, status=status, record=record)
        info["ended_at"] = datetime.now(timezone.utc).isoformat()
        info["completed_sessions"] = sim.state.next_session if sim.state is not None else 0
        write_json(sim.run_dir / "run.json", info)
