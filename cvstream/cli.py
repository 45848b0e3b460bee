"""The command line, thin: parse, load the plugins, call the library, print. User errors exit with status 2."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table

from cvstream.allocator import allocator_chosen, on_glibc, restart_tuned
from cvstream.errors import UserError

EXIT_USER_ERROR = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cvstream", description="A continual visual-search simulator for session streams.")
    sub = parser.add_subparsers(dest="command", required=True)

    def plugin_args(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--plugin", dest="plugins", action="append", default=[], metavar="FILE",
            help="a Python file that registers components (orders, selections, metrics, methods ...); repeatable",
        )

    def scenario_args(p: argparse.ArgumentParser, *, optional: bool = False) -> None:
        p.add_argument("scenario", nargs="?" if optional else None, help="scenario file (YAML)")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE", help="override a scenario key")
        p.add_argument("--data-root", default=None, help="where relative dataset roots resolve (default $CVSTREAM_DATA, else ~/.cache/cvstream)")
        plugin_args(p)

    def projection_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--project-gallery", type=_positive_int, default=10**9, metavar="N", help="project update costs to a gallery of N items (default 10^9)")
        p.add_argument("--seconds-per-forward", type=_positive_float, default=None, metavar="S", help="seconds per backbone forward (default: measured)")

    def store_args(p: argparse.ArgumentParser, *, default_on: bool) -> None:
        where = "default: the cache's generations/ folder" if default_on else "default: none, every session trains"
        p.add_argument("--store", default=None, metavar="DIR",
                       help=f"the generation store: a session trained alike by another run is taken from it, not trained again ({where})")
        if default_on:
            p.add_argument("--no-store", action="store_true", help="train every session, reading and writing no generation store")

    run = sub.add_parser("run", help="run a scenario")
    scenario_args(run, optional=True)
    run.add_argument("--out", default=None, help="write the run's files directly into this folder")
    run.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue an interrupted run after its last completed session")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    store_args(run, default_on=False)

    validate = sub.add_parser("validate", help="check a scenario file, its data and its stream, without running")
    scenario_args(validate)

    stream = sub.add_parser("stream", help="describe a scenario's stream per session and write it to stream.parquet or CVS JSON collections")
    scenario_args(stream)
    stream.add_argument("--out", default=None, help="folder for the files (default <output.dir>/<scenario name>)")
    stream.add_argument(
        "--format", default="parquet", choices=["parquet", "cvs-json"],
        help="parquet: stream.parquet; cvs-json: Rainbow-Memory / CVS JSON collections, for data sets with file names (default: %(default)s)",
    )

    compare = sub.add_parser("compare", help="run a scenario under several backfill policies and compare accuracy and cost")
    scenario_args(compare)
    compare.add_argument(
        "--backfill", default="none,full,partial:0.25:random,partial:0.25:far-from-mean,transform",
        help="comma-separated variants POLICY[:BUDGET[:ORDER]], a registered backfill policy and order (default: %(default)s)",
    )
    compare.add_argument("--out", default=None, help="folder for the runs and comparison.parquet (default runs/<name>/compare-<time>)")
    compare.add_argument("--curve-session", type=int, default=-1, help="session of the backfill curve, measured on the none variant (default -1: the last)")
    compare.add_argument("--curve-order", default="random", help="backfill order of the curve (backfill.curve_order; default: %(default)s)")
    projection_args(compare)
    compare.add_argument("--timeline", action="store_true", help="lay the policies side by side on the service timeline (SPEC section 11)")
    compare.add_argument("--variants", default=None, help="with --timeline: presets to run, comma-separated "
                         "(none, full-hot, full-after-backfill, partial, transform, dual, adapter; default all but adapter)")
    compare.add_argument("--partial-budget", type=_positive_float, default=0.25, help="with --timeline: the partial variant's budget (default %(default)s)")
    compare.add_argument("--seeds", type=_seed_count, default=1, metavar="N",
                         help="run every variant for N seeds (the scenario's seed and the next ones): means with 95%% intervals, and "
                         "paired differences against --reference (default 1)")
    compare.add_argument("--reference", default=None, metavar="VARIANT", help="with --seeds: the variant the others are paired against (default: the first)")
    compare.add_argument("--budgets", type=_budget_list, default=None, metavar="B1,B2,...",
                         help="with --timeline: run the variants at each number of backfill accelerators and report, per budget, the "
                         "Pareto frontier of quality-time area against cost (frontier.parquet, frontier.png)")
    compare.add_argument("--workers", type=_positive_int, default=1, metavar="N",
                         help="run the study's runs in N processes of this machine, each on its share of the CPUs, then read them "
                         "back in order (default 1: one run at a time)")
    compare.add_argument("--no-progress", action="store_true", help="no progress bar")
    store_args(compare, default_on=True)

    report = sub.add_parser("report", help="tables in the terminal and PNG plots next to the data, for one run or several")
    report.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders; runs of one scenario with different seeds are averaged")
    report.add_argument("--paragon", default=None, metavar="RUN_DIR", help="a run trained without compatibility on the same stream: update gain")
    report.add_argument("--out", default=None, help="folder for the plots (default RUN_DIR/report, or the runs' common folder/report)")
    report.add_argument("--project-gallery", type=_positive_int, default=None, metavar="N", help="project each update's backfill cost to a gallery of N items")
    report.add_argument("--seconds-per-forward", type=_positive_float, default=None, metavar="S", help="seconds per backbone forward (default: measured)")
    # an accelerator profile that prices the projection from FLOPs, and the HTML page
    report.add_argument("--accelerator-tflops", type=_positive_float, default=None, metavar="T",
                        help="with --project-gallery: bill a backbone forward at backbone_flops / (T 1e12 x U) instead of this machine's rate")
    report.add_argument("--utilization", type=_positive_float, default=None, metavar="U", help="share (0-1] of the accelerator's peak sustained")
    report.add_argument("--html", action="store_true", help="also write report.html: one self-contained page that opens offline")

    sweep = sub.add_parser("sweep", help="run scenarios x seeds x methods x backfill policies; one Parquet dataset per sweep")
    sweep.add_argument("sweep", help="sweep file (YAML)")
    sweep.add_argument("--out", default=None, help="folder of the sweep (default runs/sweeps/<sweep name>); rerun to finish an interrupted sweep")
    sweep.add_argument("--engine", default=None, choices=["auto", "local", "ray"], help="override the sweep file's engine")
    sweep.add_argument("--data-root", default=None, help="where relative dataset roots resolve (default $CVSTREAM_DATA, else ~/.cache/cvstream)")
    plugin_args(sweep)
    store_args(sweep, default_on=True)

    store = sub.add_parser("store", help="what the generation store holds, or clear it")
    store.add_argument("action", choices=["info", "clear"], help="info: its folder, entries and size; clear: remove every entry")
    store.add_argument("--store", default=None, metavar="DIR", help="the store's folder (default: the cache's generations/ folder)")
    return parser




# Where output goes to a file, a log or CI, rich would fall back to 80 columns and cut table headers to dots;
# there the tables get this width instead (COLUMNS, where set, still wins).
LOG_WIDTH = 200


def make_console(*, stderr: bool = False, **kwargs) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    if "width" not in kwargs and "COLUMNS" not in os.environ and not stream.isatty():
        kwargs["width"] = LOG_WIDTH
    return Console(stderr=stderr, **kwargs)


# Process settings for long runs (benchmarks/README.md, memory at session 200 against 20). A run frees tensors of
# ever-changing sizes (queries of all seen classes, replay batches): glibc's default raises its mmap threshold at
# each large free, after which such blocks come from the heap and its holes stay resident; a fixed threshold
# keeps them in their own mappings. Under bfloat16 on the CPU, oneDNN and ideep cache a primitive per tensor shape
# (1,024 each by default), and a growing classifier and growing query sets make new shapes every session; 64
# hold every shape one training step uses (ResNet-18 included) and bound the rest.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
ONEDNN_CACHES = ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")


def tune_memory() -> None:
    """Settings of this process, each only where the user has not chosen it: glibc's mmap threshold fixed at 128 KiB
    as MALLOC_MMAP_THRESHOLD_=131072 would (only on glibc, and not if any MALLOC_* variable or GLIBC_TUNABLES is
    set), and the oneDNN primitive caches at 64 entries (read when torch first uses oneDNN, after this).

    The trim threshold is fixed at its default as well: a raise of the mmap threshold before this call (while
    Python imports) would have set it to twice the raised value, which a variable read at start-up never allows."""
    for name in ONEDNN_CACHES:
        os.environ.setdefault(name, "64")
    if allocator_chosen(os.environ) or not on_glibc():
        return
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # no libc.so.6
        return
    libc.mallopt(M_MMAP_THRESHOLD, 128 * 1024)
    libc.mallopt(M_TRIM_THRESHOLD, 128 * 1024)


def main(argv: list[str] | None = None) -> int:
    tune_memory()  # first: before the run allocates anything that lasts
    parser = _parser()
    args = parser.parse_args(argv)
    console = make_console()
    err = make_console(stderr=True)
    commands = {"validate": _validate, "run": _run, "stream": _stream, "compare": _compare, "report": _report, "sweep": _sweep, "store": _store}
    try:
        from cvstream.plugins import load_plugins

        load_plugins(getattr(args, "plugins", []))  # before any scenario is read: its names may be a plugin's
        return commands[args.command](args, console)
    except UserError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        err.print("interrupted; the files of completed sessions are kept")
        return 130


def _load(args):
    from cvstream.scenario import Scenario

    scenario = Scenario.from_yaml(args.scenario, overrides=args.overrides)
    for note in scenario._notes:
        make_console(stderr=True).print(note, highlight=False)
    return scenario


def _validate(args, console: Console) -> int:
    from cvstream.models import build_method
    from cvstream.sessions import scenario_stream

    scenario = _load(args)
    method = build_method(scenario)  # the method's own checks: can the setup give it what it needs?
    _, label_set, stream = scenario_stream(scenario, data_root=args.data_root)
    from cvstream.simulator.engine import preflight

    preflight(scenario, stream, method)  # what every run checks before training: the gallery index, the curve session, the replay
    train = sum(len(s.train_ids) for s in stream)
    console.print(
        f"{scenario.source}: valid. {len(stream)} sessions, {len(stream.home_session)} classes, {train} training arrivals, "
        f"method {scenario.method.name}, data set {scenario.dataset.name} ({label_set.num_classes} classes)."
    )
    recipe = yaml.safe_dump({"training": scenario.to_dict(complete=True)["training"]}, default_flow_style=True, width=10**6, sort_keys=False)
    console.print(f"recipe, as run.json records it: {recipe.strip()}", markup=False, soft_wrap=True)
    return 0


def _stream(args, console: Console) -> int:
    from cvstream.sessions import paths, scenario_stream
    from cvstream.sessions.collections import cvs_setup, write_collections
    from cvstream.simulator.outputs import write_parquet

    scenario = _load(args)
    _, label_set, stream = scenario_stream(scenario, data_root=args.data_root)
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
    if args.format == "cvs-json":
        files = write_collections(
            stream, label_set, out, dataset=scenario.dataset.name, setup=cvs_setup(scenario.stream.name, scenario.stream.params),
            seed=scenario.seed,
        )
        root = paths.data_root(args.data_root)
        try:
            where = out.resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            where = f"<the folder, moved under the data root {root}>"
        console.print(f"{len(files)} collection files -> {out}; read back with stream: {{setup: explicit, collections: {where}}}")
        return 0
    try:
        out.mkdir(parents=True, exist_ok=True)
        write_parquet(out / "stream.parquet", stream.to_frame())
    except OSError as exc:
        raise UserError(f"cannot write {out / 'stream.parquet'}: {exc}") from None
    console.print(f"{sum(len(s.train_ids) for s in stream)} training arrivals, {len(stream.home_session)} classes -> {out / 'stream.parquet'}")
    return 0


def _run(args, console: Console) -> int:
    from cvstream.scenario import Scenario
    from cvstream.simulator import Simulator
    from cvstream.timeline import run

    progress = not args.no_progress and console.is_terminal
    if args.resume:
        if args.scenario or args.overrides or args.out:
            raise UserError("--resume RUN_DIR continues a run with its own scenario: give no scenario, --set or --out")
        sim = Simulator(Scenario.from_run(args.resume), out_dir=args.resume, resume=True, data_root=args.data_root, progress=progress,
                        store=_store_folder(args))
        scenario = sim.scenario
    else:
        if not args.scenario:
            raise UserError("cvstream run needs a scenario file (or --resume RUN_DIR)")
        from cvstream.models.distributed import from_environment

        scenario = _load(args)
        shard = from_environment(scenario.device)  # under torchrun: each session's training is split across the processes
        leader = shard is None or shard.leader
        console = console if leader else make_console(quiet=True)  # one process writes the run's files and prints
        sim = Simulator(scenario, out_dir=args.out, data_root=args.data_root, progress=progress and leader, write=leader, shard=shard,
                        store=_store_folder(args) if shard is None else None)
    console.print(f"run {sim.run_id}: {scenario.name}, {len(sim.stream)} sessions, method {scenario.method.name} -> {sim.run_dir}")
    try:
        result = run(sim)  # through the service timeline where the scenario has one
    except KeyboardInterrupt:
        make_console(stderr=True).print(
            f"interrupted; the files of completed sessions are kept in {sim.run_dir}.\nresume with: cvstream run --resume {sim.run_dir}",
            soft_wrap=True, highlight=False,
        )
        return 130
    from cvstream.reporting.report import recall_table

    console.print(recall_table(result.recall_table(1), title=f"R@1 against the mixed gallery ({scenario.name}, {scenario.method.name})"))
    if result.timeline_summary is not None:
        from cvstream.reporting.timeline_report import summary_table

        console.print(summary_table({scenario.name: result.timeline_summary}, title="service timeline"))
    console.print(f"files in {result.run_dir}")
    return 0


def _store_folder(args) -> Path | None:
    """The generation store a command uses: --store, else (for the studies) the cache's generations/ folder; None with
    --no-store, or for `run` without --store."""
    from cvstream.sessions.paths import cache_dir

    if getattr(args, "no_store", False):
        if args.store:
            raise UserError("--store and --no-store contradict each other: give one")
        return None
    if args.store:
        return Path(args.store)
    return cache_dir() / "generations" if hasattr(args, "no_store") or args.command == "store" else None


def _store(args, console: Console) -> int:
    from cvstream.simulator.generation_store import GenerationStore

    store = GenerationStore(_store_folder(args))
    entries = store.entries()
    if args.action == "clear":
        console.print(f"removed {store.clear():,} stored generations from {store.folder}")
    else:
        size = sum(p.stat().st_size for p in entries)
        console.print(f"generation store {store.folder}: {len(entries):,} stored generations, {size / 1e6:,.1f} MB")
    return 0


def _sweep(args, console: Console) -> int:
    from cvstream.studies.sweep import load_sweep, run_sweep

    spec, runs = load_sweep(args.sweep)
    out = Path(args.out) if args.out else Path("runs") / "sweeps" / spec.name
    console.print(f"sweep {spec.name}: {len(runs)} runs -> {out}")

    def done(run, row) -> None:
        labels = ", ".join(f"{k} {v}" for k, v in run.labels.items())
        console.print(f"  run {run.index} ({labels}): {row['status']}, {row['seconds']:.1f} s{'  ' + row['error'] if row['error'] else ''}")

    result = run_sweep(args.sweep, out_dir=out, data_root=args.data_root, engine=args.engine, on_run=done, plugins=args.plugins,
                       store=_store_folder(args))
    if len(result.summary):
        from cvstream.studies.sweep import summary_table

        console.print(summary_table(result.summary, title=f"sweep {spec.name}: each cell over its seeds (summary.parquet)"))
    console.print(f"{len(result.runs) - len(result.failed)} of {len(result.runs)} runs completed ({result.engine}); "
                  f"tables in {out}/metrics and {out}/costs (pandas.read_parquet), runs in {out}/runs.parquet")
    return 1 if len(result.failed) else 0


def _report(args, console: Console) -> int:
    from cvstream.reporting.report import build_report

    accelerator = _accelerator(args)
    report = build_report(args.runs, out=args.out, paragon=args.paragon, html=args.html)
    for table in report.tables:
        console.print(table)
    for file in report.files:
        console.print(f"wrote {file}")
    if args.project_gallery:
        from cvstream.reporting.projection import project_costs, projection_table
        from cvstream.simulator.run import load_run

        for path in args.runs:
            run = load_run(path)
            projection = project_costs(run.costs, args.project_gallery, args.seconds_per_forward, events=run.events, accelerator=accelerator)
            console.print(projection_table(projection, title=f"update costs projected to {args.project_gallery:,} items: {path}"))
    return 0


def _accelerator(args) -> tuple[float, float] | None:
    """`report --accelerator-tflops T --utilization U`: the profile (T, U), checked against the other options."""
    if args.accelerator_tflops is None and args.utilization is None:
        return None
    if args.accelerator_tflops is None or args.utilization is None:
        raise UserError("--accelerator-tflops T and --utilization U go together: the accelerator's peak TFLOP/s and the share of it sustained")
    if args.utilization > 1:
        raise UserError(f"--utilization {args.utilization:g}: a share of the peak, at most 1")
    if not args.project_gallery:
        raise UserError("--accelerator-tflops prices the projection: give --project-gallery N too")
    if args.seconds_per_forward is not None:
        raise UserError("--seconds-per-forward and --accelerator-tflops each set the rate of a forward: give one")
    return args.accelerator_tflops, args.utilization


def _whole_number(text: str, noun: str = "") -> int:
    """An argument as a whole number (1e9 allowed), or the usage error that says it is not one (of `noun`)."""
    try:
        return int(float(text)) if "e" in text.lower() else int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number{noun}") from None


def _positive_int(text: str) -> int:
    value = _whole_number(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be >= 1")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} must be > 0")
    return value


def _seed_count(text: str) -> int:
    """`--seeds N`: a whole number >= 1."""
    value = _whole_number(text, " of seeds")
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: at least 1 seed")
    return value


def _budget_list(text: str) -> list[int]:
    """`--budgets 2,8,32`: distinct whole numbers >= 1 of backfill accelerators, comma-separated."""
    budgets = []
    for item in text.split(","):
        try:
            value = int(item)
        except ValueError:
            what = "an empty item between commas" if not item.strip() else f"{item.strip()!r} is not a whole number"
            raise argparse.ArgumentTypeError(f"{text!r}: {what}; write numbers of backfill accelerators, e.g. 2,8,32") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"{text!r}: {value} backfill accelerators; each budget must be >= 1")
        if value in budgets:
            raise argparse.ArgumentTypeError(f"{text!r}: {value} is listed twice")
        budgets.append(value)
    return budgets


def _compare(args, console: Console) -> int:
    from datetime import datetime, timezone

    from cvstream.studies.compare import comparison_table, parse_variants, run_comparison

    scenario = _load(args)
    out = args.out or str(Path(scenario.output.dir) / scenario.name / f"compare-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}")
    if args.budgets is not None and not args.timeline:
        raise UserError("--budgets sets the backfill accelerators of the service timeline: give --timeline too")
    if args.seeds > 1 and scenario.training.seed is not None:
        make_console(stderr=True).print(f"note: training.seed is fixed at {scenario.training.seed}: the {args.seeds} seeds vary the "
                                        "stream (and what depends on it), not what training draws", highlight=False)
    if args.timeline:
        return _compare_timeline(args, scenario, out, console)
    variants = parse_variants(args.backfill)
    seeds = f" x {args.seeds} seeds" if args.seeds > 1 else ""
    console.print(f"comparing {len(variants)} backfill variants{seeds} of {scenario.name} (method {scenario.method.name}) -> {out}")
    table = run_comparison(
        args.scenario, variants, out_dir=out, overrides=args.overrides, data_root=args.data_root,
        gallery_items=args.project_gallery, seconds_per_forward=args.seconds_per_forward,
        curve_session=args.curve_session, curve_order=args.curve_order, seeds=args.seeds, reference=args.reference,
        progress=not args.no_progress and console.is_terminal, store=_store_folder(args), workers=args.workers, plugins=args.plugins,
        on_run_done=_run_done(console, out), on_variant=lambda row: console.print(f"  {row['variant']}{_seed_label(row, args.seeds)}: AR@1 {row['ar@1']:.3f}, {row['seconds']:.1f} s"),
    )
    console.print(comparison_table(table, title=f"backfill policies on {scenario.name} ({scenario.method.name})"))
    if args.seeds > 1:
        from cvstream.reporting.study_report import difference_table
        from cvstream.studies.compare import COMPARISON_DIFFERENCES

        forms = {"ar@1": ("AR@1", "{:.3f}"), "last_r@1_all": ("R@1 all", "{:.3f}")}
        console.print(difference_table(table, [(key, *forms[key]) for key in COMPARISON_DIFFERENCES],
                                       title=f"paired differences against {table.reference.iloc[0]}"))
    console.print(f"files in {out}")
    return 0


def _run_done(console: Console, out: str):
    """With --workers: a line as each run ends (its figures follow when the study reads the runs back)."""
    return lambda folder: console.print(f"  ran {Path(folder).relative_to(out) if Path(folder).is_relative_to(out) else folder}", highlight=False)


def _seed_label(row: dict, seeds: int) -> str:
    return f" (seed {row['seed']})" if seeds > 1 else ""


def _compare_timeline(args, scenario, out: str, console: Console) -> int:
    from cvstream.reporting.study_report import difference_table, frontier_table
    from cvstream.reporting.timeline_report import summary_table
    from cvstream.studies.compare import parse_timeline_variants, run_timeline_comparison
    from cvstream.studies.frontier import frontier_frame

    variants = parse_timeline_variants(args.variants)
    grid = (f" x {args.seeds} seeds" if args.seeds > 1 else "") + (f" x {len(args.budgets)} budgets" if args.budgets is not None else "")
    console.print(f"comparing {len(variants)} timeline variants{grid} of {scenario.name} (method {scenario.method.name}) -> {out}")

    def done(row: dict) -> None:
        budget = f" at {row['backfill_accelerators']} backfill accelerators" if args.budgets is not None else ""
        console.print(f"  {row['variant']}{budget}{_seed_label(row, args.seeds)}: R@1 area {row['quality_time_area']:.3f}")
        for warning in row.get("warnings", []):
            console.print(f"    warning: {warning}", highlight=False)

    table = run_timeline_comparison(
        args.scenario, variants, out_dir=out, overrides=args.overrides, data_root=args.data_root, partial_budget=args.partial_budget,
        seeds=args.seeds, budgets=args.budgets, reference=args.reference, progress=not args.no_progress and console.is_terminal,
        on_variant=done, store=_store_folder(args), workers=args.workers, plugins=args.plugins, on_run_done=_run_done(console, out),
    )
    title = f"the service timeline of {scenario.name} ({scenario.method.name}), by policy"
    differences = [("quality_time_area", "R@1 area", "{:.3f}"), ("regret_area", "regret", "{:.3f}"),
                   ("accel_hours_total", "acc-hours", "{:,.1f}"), ("cost_total", "cost", "{:,.0f}")]
    groups = table.groupby("backfill_accelerators", sort=False) if args.budgets is not None else [(None, table)]
    for budget, part in groups:
        where = f" at {budget} backfill accelerators" if budget is not None else ""
        console.print(summary_table({row["variant"]: row for row in part.to_dict("records")}, title=title + where))
        if args.seeds > 1:
            console.print(difference_table(part, differences, title=f"paired differences against {part.reference.iloc[0]}{where}"))
    files = "timeline_comparison.parquet, timeline.png"
    if args.budgets is not None:
        title = f"which policy at which budget: the frontier of R@1 area against cost ({scenario.name})"
        console.print(frontier_table(frontier_frame(table), title=title))
        files = "timeline_comparison.parquet, frontier.parquet, frontier.png; budget-<b>/timeline.png"
    console.print(f"files in {out} ({files}{', timeline_comparison_runs.parquet' if args.seeds > 1 or args.budgets is not None else ''})")
    return 0


def entry() -> None:  # pragma: no cover - the console script: starts itself again once under the tuned allocator
    restart_tuned("cvstream.cli")
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    entry()
