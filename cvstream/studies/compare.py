"""`cvstream compare`: the same scenario, stream and seed under several backfill policies, side by side.

A variant is written `POLICY[:BUDGET[:ORDER]]` with a registered backfill policy and order
(`none`, `full`, `partial:BUDGET[:ORDER]`, `transform[:BUDGET[:ORDER]]`, and any a plugin adds);
BUDGET is a fraction (`0.25`) or a count (`100`). Each variant runs into its own folder;
`comparison.parquet` holds one row per variant, `backfill_curve.parquet` the curve measured
on the `none` variant (or the first one).

With `seeds` > 1 every variant runs once per seed (the scenario's `seed`, then the next ones), into
`<variant>/seed-<s>`: `comparison_runs.parquet` keeps a row per run, `comparison.parquet` each figure's
mean over the seeds with its 95% interval and each variant's paired difference against the reference
(`intervals`). `compare --timeline --budgets` runs the variants at several numbers of backfill
accelerators and marks, per budget, the Pareto frontier of quality-time area against cost (`frontier`).
A scenario that fixes `training.seed` keeps it: its seeds vary the stream and the gallery, not training.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cvstream.errors import UserError
from cvstream.gallery.backfill import BACKFILL_ORDERS, BACKFILL_POLICIES, backfill_problem, listed
from cvstream.reporting.projection import project_costs
from cvstream.reporting.study_report import interval_cell, seeds_note
from cvstream.reporting.tables import Column, ReportTable
from cvstream.studies.frontier import frontier_frame
from cvstream.studies.intervals import paired_differences, summarize_seeds
from cvstream.studies.workers import run_ahead

log = logging.getLogger(__name__)

COMPARISON_COLUMNS = [
    "variant", "policy", "budget", "order", "ar@1", "last_r@1_old", "last_r@1_new", "last_r@1_all", "last_map@r",
    "backbone_forwards", "backfill_forwards", "transform_forwards", "seconds", "projected_gallery", "projected_hours", "run_dir",
]
COMPARISON_FIGURES = [  # averaged over seeds, each with its interval
    "ar@1", "last_r@1_old", "last_r@1_new", "last_r@1_all", "last_map@r", "backbone_forwards", "backfill_forwards",
    "transform_forwards", "seconds", "projected_hours",
]
COMPARISON_DIFFERENCES = ["ar@1", "last_r@1_all"]  # paired against the reference variant, seed by seed


@dataclass(frozen=True)
class Variant:
    name: str
    policy: str
    budget: int | float | None = None
    order: str = "random"

    @property
    def folder(self) -> str:
        return self.name.replace(":", "-")

    def overrides(self) -> list[str]:
        budget = "null" if self.budget is None else repr(self.budget)
        return [f"backfill.policy={self.policy}", f"backfill.budget={budget}", f"backfill.order={self.order}"]


def parse_variants(text: str) -> list[Variant]:
    """`none,full,partial:0.25:random,transform` -> variants; a malformed one is a UserError.

    The policies, which of them take a budget, and the orders are the registries' (a plugin's count)."""
    variants = []
    for raw in [part.strip() for part in text.split(",")]:
        if not raw:
            raise UserError(f"--backfill {text!r}: an empty variant between commas")
        policy, *rest = raw.split(":")
        takes_budget = BACKFILL_POLICIES.get(policy).budget != "never" if policy in BACKFILL_POLICIES else False
        if policy not in BACKFILL_POLICIES or len(rest) > 2 or (rest and not takes_budget):
            raise UserError(
                f"--backfill: {raw!r} is not a variant; write {_forms()} "
                f"(BUDGET a fraction in (0, 1] or a count >= 1, ORDER one of {', '.join(BACKFILL_ORDERS.names())})"
            )
        budget = _budget(rest[0], raw) if rest else None
        order = rest[1] if len(rest) > 1 else "random"
        if order not in BACKFILL_ORDERS:
            raise UserError(f"--backfill: {raw!r}: {BACKFILL_ORDERS.unknown_message(order)}")
        problem = backfill_problem(policy, budget, order)
        if problem:
            raise UserError(f"--backfill: {raw!r}: {problem}")
        variants.append(Variant(raw, policy, budget, order))
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise UserError(f"--backfill: a variant is listed twice ({', '.join(names)})")
    return variants


def _forms() -> str:
    """How each registered policy is written as a variant."""
    shape = {"never": "{}", "optional": "{}[:BUDGET[:ORDER]]", "required": "{}:BUDGET[:ORDER]"}
    forms = [shape.get(BACKFILL_POLICIES.get(name).budget, "{}").format(name) for name in BACKFILL_POLICIES.names()]
    return listed(forms, "or")


def _budget(text: str, raw: str) -> int | float:
    try:
        return int(text) if text.strip().lstrip("+-").isdigit() else float(text)
    except ValueError:
        raise UserError(f"--backfill: {raw!r}: budget {text!r} is not a number") from None


def quality_figures(metrics: pd.DataFrame) -> dict[str, float]:
    """A run's quality against the mixed gallery: AR@1 (R@1 of all queries, averaged over sessions) and, at the last
    session, R@1 of old, new and all queries and mAP@R."""
    metrics = metrics[metrics.gallery_view == "mixed"]

    def per_session(metric: str, subset: str) -> pd.Series:
        chosen = metrics[(metrics.metric == metric) & (metrics.subset == subset)]
        return chosen.groupby("session")["value"].mean().sort_index()

    r1_all = per_session("recall@1", "all")
    last = int(r1_all.index.max()) if len(r1_all) else -1

    def at_last(metric: str, subset: str) -> float:
        series = per_session(metric, subset)
        return float(series.get(last, np.nan))

    return {
        "ar@1": float(r1_all.mean()) if len(r1_all) else float("nan"),
        "last_r@1_old": at_last("recall@1", "old"), "last_r@1_new": at_last("recall@1", "new"), "last_r@1_all": at_last("recall@1", "all"),
        "last_map@r": at_last("map@r", "all"),
    }


def summarize(result, variant: Variant, *, gallery_items: int, seconds_per_forward: float | None = None) -> dict:
    """One comparison row from a finished run."""
    costs = result.costs
    projection = project_costs(costs, gallery_items, seconds_per_forward, events=result.events)
    return {
        "variant": variant.name, "policy": variant.policy, "budget": None if variant.budget is None else float(variant.budget),
        "order": variant.order if variant.budget is not None else None,
        **quality_figures(result.metrics),
        "backbone_forwards": int(costs.backbone_forwards.sum()),
        "backfill_forwards": int(costs[costs.phase.isin(["backfill", "transform"])].backbone_forwards.sum()),
        "transform_forwards": int(costs.transform_forwards.sum()),
        "seconds": float(costs.seconds.sum()),
        "projected_gallery": int(gallery_items), "projected_hours": float(projection.update_hours.sum()),
        "run_dir": str(result.run_dir) if result.run_dir else None,
    }


def comparison_table(table: pd.DataFrame, *, title: str) -> ReportTable:
    """The comparison (one `summarize` row per variant) as a report table: quality, forwards, seconds, projected hours;
    over several seeds each cell is the mean ± the half-width of its 95% interval."""
    n = int(table.projected_gallery.iloc[0]) if len(table) else 0
    columns = [
        ("variant", "variant", None), ("AR@1", "ar@1", "{:.3f}"), ("R@1 old", "last_r@1_old", "{:.3f}"),
        ("R@1 new", "last_r@1_new", "{:.3f}"), ("R@1 all", "last_r@1_all", "{:.3f}"), ("mAP@R", "last_map@r", "{:.3f}"),
        ("backbone fwd", "backbone_forwards", "{:,}"), ("backfill fwd", "backfill_forwards", "{:,}"), ("seconds", "seconds", "{:.1f}"),
        (f"acc-hours @ {n:.0e}", "projected_hours", "{:,.1f}"),
    ]
    out = ReportTable(title, [Column(header, numeric=key != "variant") for header, key, _ in columns])
    for row in table.to_dict("records"):
        out.add_row(*[interval_cell(row, key, form) for _, key, form in columns])
    out.caption = seeds_note(table.seeds) if "seeds" in table else None
    return out


def seed_list(first: int, seeds: int) -> list[int]:
    """The seeds of a study of `seeds` seeds: the scenario's own, then the next ones."""
    return [first + i for i in range(seeds)]


def pick_reference(names: list[str], reference: str | None) -> str:
    """The variant the others are paired against: `reference`, which must be one of them, or the first."""
    if reference is None:
        return names[0]
    if reference not in names:
        raise UserError(f"--reference {reference!r} is not one of the variants ({', '.join(names)})")
    return reference


def run_in(folder: Path, scenario, *, data_root=None, progress: bool = False, store=None):
    """Run `scenario` into `folder` (through the service timeline where it has one), or take up what a killed study
    left there: a completed run of the same scenario is read back, an interrupted one resumed. Returns its RunResult."""
    from cvstream.simulator import Simulator, load_run
    from cvstream.simulator.run import read_info
    from cvstream.timeline import run

    if not (Path(folder) / "run.json").is_file():
        return run(Simulator(scenario, out_dir=folder, data_root=data_root, progress=progress, store=store))
    recorded = read_info(folder)  # a damaged run.json is a user error, as for `run --resume`
    if recorded.get("scenario_hash") != scenario.digest():
        raise UserError(f"{folder} holds a run of another scenario than this study's; choose another --out, or remove it")
    if recorded.get("status") == "completed":
        return load_run(folder)
    return run(Simulator(scenario, out_dir=folder, resume=True, data_root=data_root, progress=progress, store=store))


def mixed_threads(folders) -> str | None:
    """Where a study's runs were made on different torch thread counts (each run's `run.json`; an older run has no
    record), a warning, logged and returned: torch rounds differently on each count and training carries it on, so
    such runs are different draws of training, and a paired difference between them mixes that in."""
    from cvstream.simulator.run import read_info

    counts: dict[int, int] = {}
    for folder in dict.fromkeys(str(f) for f in folders):
        try:
            threads = (read_info(folder).get("threads") or {}).get("torch")
        except UserError:
            continue
        if threads is not None:
            counts[threads] = counts.get(threads, 0) + 1
    if len(counts) < 2:
        return None
    listed = ", ".join(f"{n} on {threads} thread{'s' if threads > 1 else ''}" for threads, n in sorted(counts.items()))
    message = (f"the study's runs were made on different torch thread counts ({listed} of them): each count is another draw "
               "of training, so the paired differences mix that in; run them all on one count (OMP_NUM_THREADS, or --workers)")
    log.warning(message)
    return message


def _seed_folder(folder: Path, seed: int, seeds: int) -> Path:
    return folder / f"seed-{seed}" if seeds > 1 else folder


def run_comparison(
    scenario_path: str | Path, variants: list[Variant], *, out_dir: str | Path, overrides: list[str] = (), data_root=None,
    gallery_items: int = 10**9, seconds_per_forward: float | None = None, curve_session: int | None = None,
    curve_order: str = "random", seeds: int = 1, reference: str | None = None, progress: bool = False, on_variant=None,
    store=None, workers: int = 1, plugins=(), on_run_done=None,
) -> pd.DataFrame:
    """Run every variant on the same scenario, for each of `seeds` seeds; write each run and comparison.parquet under
    `out_dir` (and, over several seeds, comparison_runs.parquet). Returns the comparison: one row per variant.
    `store`: the generation store (a folder) the runs share: a session that two runs train alike is trained once.
    `workers` > 1: the runs go first in that many processes (`cvstream.studies.workers`; `plugins`, the plugin files
    they load; `on_run_done(folder)` as each ends), then are read back in order."""
    from cvstream.scenario import Scenario
    from cvstream.sessions import scenario_stream
    from cvstream.simulator.outputs import write_parquet

    out_dir = Path(out_dir)
    if (out_dir / "comparison.parquet").exists():
        raise UserError(f"{out_dir} already holds a comparison (comparison.parquet); choose another --out, or remove it")
    reference = pick_reference([v.name for v in variants], reference)
    curve_variant = next((v for v in variants if v.policy == "none"), variants[0])
    base = Scenario.from_yaml(scenario_path, overrides=list(overrides))
    if curve_session is not None:
        _, _, stream = scenario_stream(base, data_root=data_root)
        sessions = len(stream)
        curve_session += sessions if curve_session < 0 else 0  # counted from the end: -1 is the last session
        if not 0 <= curve_session < sessions:
            raise UserError(f"--curve-session: the stream has {sessions} sessions (0..{sessions - 1}, or -1 for the last)")
    seed_values = seed_list(base.seed, seeds)
    scenarios = {}
    for seed in seed_values:  # validate every run before the first one starts
        for variant in variants:
            extra = list(overrides) + variant.overrides() + [f"seed={seed}"]
            if variant is curve_variant and seed == seed_values[0]:  # the curve is measured once, on the first seed
                extra += [f"backfill.curve_session={'null' if curve_session is None else curve_session}", f"backfill.curve_order={curve_order}"]
            scenarios[variant, seed] = Scenario.from_yaml(scenario_path, overrides=extra)
    folders = {(variant, seed): _seed_folder(out_dir / variant.folder, seed, seeds) for seed in seed_values for variant in variants}
    run_ahead([(folders[key], scenarios[key], key[1]) for key in folders], workers=workers, data_root=data_root, store=store,
              plugins=plugins, progress=progress, on_done=on_run_done)
    rows = []
    for seed in seed_values:
        for variant in variants:
            result = run_in(folders[variant, seed], scenarios[variant, seed], data_root=data_root, progress=progress, store=store)
            rows.append({**summarize(result, variant, gallery_items=gallery_items, seconds_per_forward=seconds_per_forward), "seed": seed})
            if on_variant is not None:
                on_variant(rows[-1])
    mixed_threads(folders.values())
    if seeds == 1:
        table = pd.DataFrame(rows, columns=COMPARISON_COLUMNS)
    else:
        runs = pd.DataFrame(rows, columns=["seed", *COMPARISON_COLUMNS])
        write_parquet(out_dir / "comparison_runs.parquet", runs)
        table = _over_seeds(runs, keys=["variant"], keep=["policy", "budget", "order", "projected_gallery"], figures=COMPARISON_FIGURES,
                            differences=COMPARISON_DIFFERENCES, reference=reference)
        table["run_dir"] = [str(out_dir / v.folder) for v in variants]
    write_parquet(out_dir / "comparison.parquet", table)
    curve = _seed_folder(out_dir / curve_variant.folder, seed_values[0], seeds) / "backfill_curve.parquet"
    if curve.is_file():
        shutil.copyfile(curve, out_dir / "backfill_curve.parquet")
    return table


def _over_seeds(runs: pd.DataFrame, *, keys: list[str], keep: list[str], figures: list[str], differences: list[str],
                reference: str, within: list[str] = ()) -> pd.DataFrame:
    """Per variant (within each group of `within`): every figure's mean and interval over the seeds, then the paired
    differences against the reference variant."""
    table = summarize_seeds(runs, keys=keys, keep=keep, figures=figures)
    differences = [f for f in differences if f in runs and runs[f].notna().any()]  # cost_total only where a price is given
    if not differences:
        return table
    paired = paired_differences(runs, reference=reference, figures=differences, within=list(within))
    return table.merge(paired, on=[*within, "variant"], how="left", validate="one_to_one")


# -- the service timeline, policy against policy (`cvstream compare SCENARIO --timeline`) --------------------

TIMELINE_VARIANTS: dict[str, dict] = {
    # name -> what it sets: the backfill policy, the deploy rule and how queries search a mixed gallery
    "none": {"policy": "none", "deploy": "hot", "queries": "new"},
    "full-hot": {"policy": "full", "deploy": "hot", "queries": "new"},
    "full-after-backfill": {"policy": "full", "deploy": "after-backfill", "queries": "new"},
    "partial": {"policy": "partial", "deploy": "hot", "queries": "new"},
    "transform": {"policy": "transform", "deploy": "hot", "queries": "new"},
    "dual": {"policy": "full", "deploy": "hot", "queries": "dual"},
    "adapter": {"policy": "full", "deploy": "hot", "queries": "adapter"},
}
DEFAULT_TIMELINE_VARIANTS = ("none", "full-hot", "full-after-backfill", "partial", "transform", "dual")
TIMELINE_COMPARISON_COLUMNS = [
    "variant", "policy", "deploy", "queries", "quality_time_area", "best_area", "regret_area", "worst_dip", "dip_mean",
    "recovery_hours_mean", "recovery_hours_max", "recovered_deploys", "censored_deploys", "deploys", "negative_flips",
    "accel_hours_train", "accel_hours_backfill", "accel_hours_serve", "accel_hours_ingest", "accel_hours_adapter", "accel_hours_total",
    "cost_memory", "cost_total", "serve_utilization_peak", "memory_bytes_peak", "memory_tb_hours_used", "memory_tb_hours_provisioned", "run_dir",
]
TIMELINE_FIGURES = TIMELINE_COMPARISON_COLUMNS[4:-1]  # averaged over seeds, each with its interval
TIMELINE_DIFFERENCES = ["quality_time_area", "regret_area", "accel_hours_total", "cost_total"]  # cost_total where priced


def parse_timeline_variants(text: str | None) -> list[str]:
    """`none,full-hot,dual` -> those presets (default: DEFAULT_TIMELINE_VARIANTS, six); an unknown one is a UserError."""
    if not text:
        return list(DEFAULT_TIMELINE_VARIANTS)
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [n for n in names if n not in TIMELINE_VARIANTS]
    if unknown or not names:
        raise UserError(f"--variants: {', '.join(unknown) or text!r} unknown; choose from {', '.join(TIMELINE_VARIANTS)}")
    if len(set(names)) != len(names):
        raise UserError(f"--variants: a variant is listed twice ({', '.join(names)})")
    return names


def budget_blind(variant: str) -> bool:
    """Whether a timeline variant's run does not depend on the backfill accelerators: one that never backfills (`none`)
    is the same run at every budget, so a study with `--budgets` runs it once and reports it under each budget."""
    return TIMELINE_VARIANTS[variant]["policy"] == "none"


def run_timeline_comparison(
    scenario_path: str | Path, variants: list[str], *, out_dir: str | Path, overrides: list[str] = (), data_root=None,
    partial_budget: float = 0.25, seeds: int = 1, budgets: list[int] | None = None, reference: str | None = None,
    progress: bool = False, on_variant=None, store=None, workers: int = 1, plugins=(), on_run_done=None,
) -> pd.DataFrame:
    """Every variant on the same scenario, stream, seed and timeline settings (the scenario's `timeline` section, or
    every default): one run folder each, `timeline_comparison.parquet` and an overlaid `timeline.png` under `out_dir`.
    Each variant's learning side runs its own sessions (a method that reads the gallery, cvs, learns from what its
    policy left); with a generation store (`store`, a folder) a session that several variants, seeds or budgets train
    alike is trained once and reused by the others.

    With `seeds` > 1 or `budgets` (numbers of backfill accelerators), every variant runs at each budget and seed, into
    `[budget-<b>/]<variant>[/seed-<s>]`: `timeline_comparison_runs.parquet` keeps a row per run, the comparison one
    row per (budget, variant) with means, intervals and paired differences, and, with budgets, `frontier.parquet` and
    `frontier.png` the Pareto frontier of quality-time area against cost per budget. A variant that never backfills
    (`none`) is the same run at every budget: it runs once, at the first budget, and is reported under each (its
    `run_dir` is that budget's). `workers` > 1: the runs go first in that many processes (`cvstream.studies.workers`;
    `plugins`, the plugin files they load; `on_run_done(folder)` as each ends), then are read back in order. Returns
    the comparison."""
    from cvstream.reporting.study_report import plot_frontier
    from cvstream.reporting.timeline_report import plot_timeline
    from cvstream.scenario import Scenario
    from cvstream.simulator.outputs import write_parquet

    out_dir = Path(out_dir)
    if (out_dir / "timeline_comparison.parquet").exists():
        raise UserError(f"{out_dir} already holds a timeline comparison; choose another --out, or remove it")
    reference = pick_reference(list(variants), reference)
    base = Scenario.from_yaml(scenario_path, overrides=list(overrides))
    timeline = base.timeline.model_dump(mode="json") if base.timeline is not None else {}
    study = seeds > 1 or budgets is not None  # else one run per variant, written as before
    seed_values = seed_list(base.seed, seeds)
    budget_values = list(budgets) if budgets is not None else [None]
    scenarios = {}
    for budget in budget_values:  # validate every run before the first one starts
        for seed in seed_values:
            for name in variants:
                preset = TIMELINE_VARIANTS[name]
                data = base.to_dict(complete=True)
                data["seed"] = seed
                partial = partial_budget if preset["policy"] == "partial" else None
                data["backfill"] = {**data["backfill"], "policy": preset["policy"], "budget": partial,
                                    "order": data["backfill"]["order"] if partial is not None else "random"}
                data["timeline"] = {**timeline, "deploy": preset["deploy"], "queries": preset["queries"]}
                if budget is not None:
                    data["timeline"]["accelerators"] = {**timeline.get("accelerators", {}), "backfill": budget}
                where = name + (f", seed {seed}" if seeds > 1 else "") + (f", {budget} backfill accelerators" if budget is not None else "")
                scenarios[budget, seed, name] = Scenario.from_dict(data, source=f"{scenario_path} ({where})")

    def budget_folder(budget) -> Path:
        return out_dir / f"budget-{budget}" if budget is not None else out_dir

    def ran_at(budget, name: str):
        """The budget whose run a variant's row at `budget` is: its own, or the first for a budget-blind variant."""
        return budget_values[0] if budget_blind(name) else budget

    folders = {(at, seed, name): _seed_folder(budget_folder(at) / name, seed, seeds)
               for budget, seed, name in scenarios for at in [ran_at(budget, name)]}  # a budget-blind variant's run once
    run_ahead([(folders[key], scenarios[key], key[1]) for key in folders], workers=workers, data_root=data_root, store=store,
              plugins=plugins, progress=progress, on_done=on_run_done)
    rows, frames, results = [], {budget: {} for budget in budget_values}, {}  # results: by folder key, a budget-blind run read once
    for budget in budget_values:
        for seed in seed_values:
            for name in variants:
                scenario, key = scenarios[budget, seed, name], (ran_at(budget, name), seed, name)
                if key not in results:
                    results[key] = run_in(folders[key], scenarios[key], data_root=data_root, progress=progress, store=store)
                result = results[key]
                if seed == seed_values[0]:
                    frames[budget][name] = result.timeline
                preset = TIMELINE_VARIANTS[name]
                rows.append({"backfill_accelerators": scenario.timeline.accelerators.backfill, "seed": seed, "variant": name, **preset,
                             **{k: result.timeline_summary[k] for k in TIMELINE_COMPARISON_COLUMNS if k in result.timeline_summary},
                             "run_dir": str(result.run_dir)})
                if on_variant is not None:  # with the run's warnings (traffic beyond the serving capacity), which no table keeps
                    on_variant({**rows[-1], "warnings": list(result.timeline_summary.get("warnings", []))})
    mixed_threads(folders.values())
    if not study:
        table = pd.DataFrame(rows, columns=TIMELINE_COMPARISON_COLUMNS)
    else:
        runs = pd.DataFrame(rows, columns=["backfill_accelerators", "seed", *TIMELINE_COMPARISON_COLUMNS])
        write_parquet(out_dir / "timeline_comparison_runs.parquet", runs)
        table = _over_seeds(runs, keys=["backfill_accelerators", "variant"], keep=["policy", "deploy", "queries"], figures=TIMELINE_FIGURES,
                            differences=TIMELINE_DIFFERENCES if seeds > 1 else [], reference=reference, within=["backfill_accelerators"])
        table["run_dir"] = [str(budget_folder(ran_at(b if budgets is not None else None, v)) / v)
                            for b, v in zip(table.backfill_accelerators, table.variant)]
    write_parquet(out_dir / "timeline_comparison.parquet", table)
    for budget, by_variant in frames.items():  # the first seed's timelines, one plot per budget
        notes = ", ".join(([f"{budget} backfill accelerators"] if budget is not None else []) + ([f"seed {seed_values[0]}"] if seeds > 1 else []))
        title = f"{base.name}: quality over simulated time, by policy" + (f" ({notes})" if notes else "")
        plot_timeline(by_variant, budget_folder(budget) / "timeline.png", title=title)
    if budgets is not None:
        frontier = frontier_frame(table)
        write_parquet(out_dir / "frontier.parquet", frontier)
        plot_frontier(frontier, out_dir / "frontier.png", title=f"{base.name}: quality-time area against cost, per backfill budget")
    return table
