"""The command line, thin: parse, call the library, print. User errors exit with status 2."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from cvstream.errors import UserError

EXIT_USER_ERROR = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cvstream", description="A continual visual-search simulator for session streams.")
    sub = parser.add_subparsers(dest="command", required=True)

    def scenario_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("scenario", help="scenario file (YAML)")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE", help="override a scenario key")
        p.add_argument("--data-root", default=None, help="where relative dataset roots resolve (default $CVSTREAM_DATA, else ~/.cache/cvstream)")

    run = sub.add_parser("run", help="run a scenario")
    scenario_args(run)
    run.add_argument("--out", default=None, help="write the run's files directly into this folder")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")

    validate = sub.add_parser("validate", help="check a scenario file, its data and its stream, without running")
    scenario_args(validate)

    stream = sub.add_parser("stream", help="describe a scenario's stream per session and write it to stream.parquet")
    scenario_args(stream)
    stream.add_argument("--out", default=None, help="folder for stream.parquet (default <output.dir>/<scenario name>)")
    return parser




def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    console = Console()
    err = Console(stderr=True)
    try:
        if args.command == "validate":
            return _validate(args, console)
        if args.command == "run":
            return _run(args, console)
        if args.command == "stream":
            return _stream(args, console)
    except UserError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        err.print("interrupted; the files of completed sessions are kept")
        return 130
    return 0


def _load(args):
    from cvstream.scenario import Scenario

    return Scenario.from_yaml(args.scenario, overrides=args.overrides)


def _validate(args, console: Console) -> int:
    from cvstream.sessions import build_stream, load_labels, open_dataset

    scenario = _load(args)
    source = open_dataset(scenario, data_root=args.data_root)
    label_set = load_labels(scenario, source)
    stream = build_stream(scenario, label_set, source=scenario.source)
    train = sum(len(s.train_ids) for s in stream)
    console.print(
        f"{scenario.source}: valid. {len(stream)} sessions, {len(stream.home_session)} classes, {train} training arrivals, "
        f"method {scenario.method.name}, data set {scenario.dataset.name} ({label_set.num_classes} classes)."
    )
    return 0


def _stream(args, console: Console) -> int:
    from cvstream.sessions import build_stream, load_labels, open_dataset
    from cvstream.simulator.outputs import write_parquet

    scenario = _load(args)
    label_set = load_labels(scenario, open_dataset(scenario, data_root=args.data_root))
    stream = build_stream(scenario, label_set, source=scenario.source, data_root=args.data_root)
    summary = stream.summary()
    table = Table(title=f"{scenario.name}: {scenario.stream.name} stream of {scenario.dataset.name}")
    headers = {"session": "session", "new_classes": "new classes", "old_classes_present": "old present",
               "future_classes_present": "future present", "train_samples": "training samples",
               "off_home_share": "off-home share", "queries": "queries"}
    for header in headers.values():
        table.add_column(header, justify="right")
    for row in summary.itertuples(index=False):
        table.add_row(*[f"{v:.3f}" if isinstance(v, float) else str(v) for v in row])
    console.print(table)
    out = Path(args.out) if args.out else Path(scenario.output.dir) / scenario.name
    try:
        out.mkdir(parents=True, exist_ok=True)
        write_parquet(out / "stream.parquet", stream.to_frame())
    except OSError as exc:
        raise UserError(f"cannot write {out / 'stream.parquet'}: {exc}") from None
    console.print(f"{sum(len(s.train_ids) for s in stream)} training arrivals, {len(stream.home_session)} classes -> {out / 'stream.parquet'}")
    return 0


def _run(args, console: Console) -> int:
    from cvstream.simulator import Simulator

    scenario = _load(args)
    progress = not args.no_progress and console.is_terminal
    sim = Simulator(scenario, out_dir=args.out, data_root=args.data_root, progress=progress)
    console.print(f"run {sim.run_id}: {scenario.name}, {len(sim.stream)} sessions, method {scenario.method.name} -> {sim.run_dir}")
    result = sim.run()
    console.print(recall_table(result, title=f"R@1 against the mixed gallery ({scenario.name}, {scenario.method.name})"))
    console.print(f"files in {result.run_dir}")
    return 0


def recall_table(result, *, title: str) -> Table:
    table = Table(title=title)
    pivot = result.recall_table(1)
    table.add_column("session", justify="right")
    for column in pivot.columns:
        table.add_column(f"R@1 {column}", justify="right")
    for session, row in pivot.iterrows():
        table.add_row(str(session), *["-" if row[c] != row[c] else f"{row[c]:.3f}" for c in pivot.columns])
    return table


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
