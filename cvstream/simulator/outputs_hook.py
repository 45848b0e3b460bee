"""The hook that writes a run's files as it goes: every completed session is on disk."""

from __future__ import annotations

import io
from datetime import datetime, timezone

import numpy as np

from cvstream.simulator import checkpoint
from cvstream.simulator.hooks import Hook
from cvstream.simulator.outputs import OutputError, atomic_write_bytes, write_json, write_parquet
from cvstream.simulator.run import run_info


class ParquetWriter(Hook):
    def before_run(self, sim) -> None:
        write_json(sim.run_dir / "run.json", run_info(sim, status="running"))
        write_parquet(sim.run_dir / "stream.parquet", sim.stream.to_frame())

    def after_event(self, sim, event, outcome) -> None:
        if event.kind == "evaluate" and sim.scenario.output.save_embeddings:
            self._save_embeddings(sim, event.session)
        if event.kind != "session_end":
            return
        for name in ("metrics", "costs", "events"):
            write_parquet(sim.run_dir / f"{name}.parquet", sim.recorder.table(name))
        sim.gallery.save(sim.run_dir)  # gallery.faiss, gallery.json, gallery.parquet
        if getattr(sim, "backfill_curve", None) is not None and event.session == sim.scenario.backfill.curve_session:
            write_parquet(sim.run_dir / "backfill_curve.parquet", sim.backfill_curve)
        checkpoint.save(sim, event.session)  # after the tables: its row counts never exceed what is on disk
        info = run_info(sim, status="running")
        info["completed_sessions"] = event.session + 1
        write_json(sim.run_dir / "run.json", info)

    def _save_embeddings(self, sim, session: int) -> None:
        """embeddings/session-<t>.npz: exactly the vectors this session's evaluation searched (and probe-<g>.npz)."""
        folder = sim.run_dir / "embeddings"
        folder.mkdir(exist_ok=True)
        done = sim.last_evaluation
        files = {f"session-{session}.npz": done.arrays}
        if done.probe_arrays is not None:
            files[f"probe-{sim.generation}.npz"] = done.probe_arrays
        for name, arrays in files.items():
            buffer = io.BytesIO()
            np.savez(buffer, **arrays)
            atomic_write_bytes(folder / name, buffer.getvalue())

    def after_run(self, sim, status: str) -> None:
        if status != "completed":
            try:  # best effort: the error that stopped the run is the one to report
                self._final_info(sim, status)
            except OutputError:
                pass
            return
        self._final_info(sim, status)

    def _final_info(self, sim, status: str) -> None:
        info = run_info(sim, status=status)
        info["ended_at"] = datetime.now(timezone.utc).isoformat()
        info["completed_sessions"] = int(sim.recorder.table("events").query("kind == 'session_end'").shape[0])
        write_json(sim.run_dir / "run.json", info)
