"""A study's runs on several processes of this machine (`cvstream compare --workers N`).

A study runs its variants one after the other; on a machine with more cores than one run uses, `run_ahead` runs
them first in `workers` processes, and the study then reads every completed run back in its own order, as it takes up
the runs a killed study finished (`compare.run_in`): the tables are those of a study run one run at a time.

- The processes share the study's generation store, so a session two runs train alike is trained once, or at most
  twice where two processes reach it at the same moment. The runs go in an order that puts different seeds side by
  side, since runs of one seed share their first sessions (and, for the variants of one learning side, all of them).
- Each process runs torch and Faiss on its share of this process's CPUs (at least one thread), unless
  OMP_NUM_THREADS is set. Torch's CPU kernels round differently on another number of threads and training carries
  that on, so a run made with `--workers` is another draw of training than one made on every CPU without it (as
  different as another seed); a study's runs all share one thread count, so its paired differences stand.
- Plugin files travel by path and are loaded in each process before its scenario is read.
- A run that fails stops the study: the runs in flight are stopped and the error is raised, naming the run's folder.
  What finished stays, and a rerun of the same command takes it up (an interrupted run resumes after its last
  completed session).
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import FIRST_EXCEPTION, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

from cvstream.errors import UserError


def cpus() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def threads_per_worker(workers: int) -> int:
    """Torch's and Faiss' threads in each of `workers` processes: an equal share of the CPUs, at least one."""
    return max(1, cpus() // workers)


def completed(folder: Path) -> bool:
    """Whether `folder` holds a completed run (of whatever scenario: the study's read-back checks that)."""
    from cvstream.simulator.run import read_info

    try:
        return (folder / "run.json").is_file() and read_info(folder).get("status") == "completed"
    except UserError:  # a damaged record: the study's read-back reports it
        return False


def side_by_side(jobs: list[tuple[Path, Any, int]]) -> list[tuple[Path, Any, int]]:
    """Jobs (folder, scenario, seed) in an order that interleaves the seeds: a seed's first job, the next seed's
    first, ..., then each seed's second, so that processes started together run different seeds."""
    place: dict[int, int] = {}
    ranked = []
    for number, (folder, scenario, seed) in enumerate(jobs):
        place[seed] = place.get(seed, -1) + 1
        ranked.append((place[seed], number, (folder, scenario, seed)))
    return [job for *_, job in sorted(ranked, key=lambda item: item[:2])]


def _start(threads: int, plugins: tuple[str, ...]) -> None:  # pragma: no cover - runs in the worker processes
    if "OMP_NUM_THREADS" not in os.environ:
        import faiss
        import torch

        torch.set_num_threads(threads)
        faiss.omp_set_num_threads(threads)
    from cvstream.plugins import load_plugins

    load_plugins(plugins)


def _run(folder: str, scenario: dict, source: str, data_root, store) -> str:  # pragma: no cover - in the workers
    from cvstream.scenario import Scenario
    from cvstream.studies.compare import run_in

    run_in(Path(folder), Scenario.from_dict(scenario, source=source), data_root=data_root, store=store)
    return folder


def run_ahead(jobs: list[tuple[Path, Any, int]], *, workers: int, data_root=None, store=None, plugins=(), progress: bool = False,
              on_done=None) -> int:
    """Run every job (folder, scenario, seed) not yet completed in `workers` processes; returns how many ran. The
    caller then reads the runs back (`compare.run_in` loads a completed run). `on_done(folder)` after each run."""
    todo = [job for job in side_by_side(jobs) if not completed(Path(job[0]))]
    if workers <= 1 or not todo:
        return 0
    plugins = tuple(str(Path(p).expanduser().resolve()) for p in plugins)
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no torch or OpenMP state copied by a fork
    pool = ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=context, initializer=_start,
                               initargs=(threads_per_worker(workers), plugins))
    bar = _progress(len(todo)) if progress else None
    futures: dict[Future, Path] = {}
    try:
        for folder, scenario, _ in todo:
            futures[pool.submit(_run, str(folder), scenario.to_dict(complete=True), scenario.source, data_root, store)] = Path(folder)
        pending = set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_EXCEPTION)
            for future in done:
                error = future.exception()
                if error is not None:
                    raise _failed(futures[future], error) from error
                if bar is not None:
                    bar.advance(bar.task_ids[0])
                if on_done is not None:
                    on_done(futures[future])
    except BaseException:
        _stop(pool, futures)
        raise
    finally:
        if bar is not None:
            bar.stop()
    pool.shutdown()
    return len(todo)


def _failed(folder: Path, error: BaseException) -> BaseException:
    if isinstance(error, UserError):  # its message is for the user: it names the run's folder, or gets it
        named = str(folder) in str(error) or type(error).__init__ is not UserError.__init__
        return error if named else type(error)(f"{folder}: {error}")
    return UserError(f"the run in {folder} failed: {type(error).__name__}: {error} (a rerun of the study takes up what finished)")


def _stop(pool: ProcessPoolExecutor, futures: dict[Future, Path]) -> None:
    """Cancel what has not started and stop the runs in flight (they resume, on a rerun, after their last session)."""
    for future in futures:
        future.cancel()
    for process in list(getattr(pool, "_processes", {}).values()):
        if process.is_alive():
            process.terminate()
    pool.shutdown(wait=True, cancel_futures=True)


def _progress(total: int):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn("runs"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=True)
    bar.add_task("runs", total=total)
    bar.start()
    return bar
