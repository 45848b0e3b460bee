"""Cost projection: measured forwards and seconds of a run -> accelerator-hours for a gallery of N items.

Re-embedding scales with the gallery: the share of the gallery a session backfilled (or
mapped with psi) is applied to N items. Fixed per-update work (the items embedded to learn
psi, psi's own training forwards) does not scale. Indexing a session's new items is the
same under every policy and is left out.

The rate of a backbone forward is the run's measured one (index and backfill phases), one
given in seconds, or an accelerator profile: `backbone_flops` (costs.parquet, FLOPs per
image of the generation that did the work) over the profile's sustained FLOP rate, so that
the projection does not depend on how fast this machine happened to be.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from cvstream.errors import UserError
from cvstream.reporting.tables import Column, ReportTable, cell

PROJECTION_COLUMNS = [
    "session", "gallery_items", "backfill_fraction", "mapped_fraction", "projected_gallery",
    "seconds_per_forward", "seconds_per_transform_forward", "backfill_hours", "transform_hours", "update_hours", "forward_rate",
]


def measured_seconds_per_forward(costs: pd.DataFrame) -> float:
    """Seconds per backbone forward in inference (index and backfill phases); NaN when there were none."""
    inference = costs[costs.phase.isin(["index", "backfill"])]
    forwards = inference.backbone_forwards.sum()
    return float(inference.seconds.sum() / forwards) if forwards else float("nan")


def accelerator_seconds_per_forward(costs: pd.DataFrame, sessions: np.ndarray, *, tflops: float, utilization: float) -> np.ndarray:
    """Per session, seconds per backbone forward of the generation that embedded for it (its index, replay,
    transform and backfill rows' `backbone_flops`) on an accelerator of `tflops` peak at `utilization`."""
    from cvstream.models.flops import images_per_second

    inference = costs[costs.phase.isin(["index", "replay", "transform", "backfill"])]
    if "backbone_flops" not in inference.columns or (inference.backbone_flops <= 0).any():
        raise UserError("the run's costs.parquet has no backbone_flops (it was written by an older cvstream): "
                        "project with the measured rate or --seconds-per-forward instead")
    flops = inference.groupby("session").backbone_flops.max().reindex(sessions)
    if flops.isna().any():
        raise UserError(f"sessions {', '.join(map(str, flops.index[flops.isna()]))} have no inference costs rows with backbone_flops")
    return np.array([1.0 / images_per_second(float(f), tflops=tflops, utilization=utilization) for f in flops], dtype=np.float64)


def _transform_apply_seconds(events: pd.DataFrame | None, sessions: np.ndarray) -> np.ndarray | None:
    """Per session, the seconds psi spent mapping stale items (from the transform events), if recorded."""
    if events is None or not len(events):
        return None
    rows = events[events.kind == "transform"]
    seconds = pd.Series([json.loads(d).get("apply_seconds", np.nan) for d in rows.detail], index=rows.session.to_numpy(), dtype=float)
    if seconds.isna().any():
        return None
    return seconds.groupby(level=0).sum().reindex(sessions, fill_value=0.0).to_numpy(dtype=np.float64)


def project_costs(
    costs: pd.DataFrame, gallery_items: int, seconds_per_forward: float | None = None, *,
    transform_seconds_per_forward: float | None = None, events: pd.DataFrame | None = None,
    accelerator: tuple[float, float] | None = None,
) -> pd.DataFrame:
    """One row per session: accelerator-hours of that update's backfill and transform for `gallery_items` items.

    With the run's `events`, psi's cost splits into a fixed part (learning psi) and the measured mapping
    time, scaled with the gallery; without them every psi forward is billed at the phase's mean rate.
    `accelerator` (tflops, utilization) bills a backbone forward at backbone_flops / (tflops 1e12 x utilization)
    instead of the measured or given `seconds_per_forward`; psi's forwards keep their measured rate.
    """
    if gallery_items < 0:
        raise ValueError("gallery_items must be >= 0")
    if accelerator is not None and seconds_per_forward is not None:
        raise ValueError("give seconds_per_forward or an accelerator profile, not both")
    sessions = np.sort(costs.session.unique()) if len(costs) else np.empty(0, np.int64)
    measured = measured_seconds_per_forward(costs)
    if accelerator is not None:
        tflops, utilization = accelerator
        spf = accelerator_seconds_per_forward(costs, sessions, tflops=tflops, utilization=utilization)
        rate = f"backbone_flops / ({tflops:g} TFLOPS x {utilization:g} utilization)"
    else:
        spf = measured if seconds_per_forward is None else float(seconds_per_forward)
        rate = "measured on this machine" if seconds_per_forward is None else "given"
    # Splitting a measured phase into its parts takes the measured rate, whatever rate the projection bills at.
    split_spf = measured if accelerator is not None else spf

    def per_session(phase: str, column: str) -> np.ndarray:
        rows = costs[costs.phase == phase].groupby("session")[column].sum()
        return rows.reindex(sessions, fill_value=0).to_numpy(dtype=np.float64)

    size = np.cumsum(per_session("index", "items"))
    backfilled = per_session("backfill", "backbone_forwards")
    pairs = per_session("transform", "backbone_forwards")
    mapped = per_session("transform", "items")
    psi_forwards = per_session("transform", "transform_forwards")
    phase_seconds = per_session("transform", "seconds")
    applying = _transform_apply_seconds(events, sessions)
    with np.errstate(invalid="ignore", divide="ignore"):
        backfill_fraction = np.where(size > 0, backfilled / size, 0.0)
        mapped_fraction = np.where(size > 0, mapped / size, 0.0)
    if transform_seconds_per_forward is None and applying is not None:
        # Fixed: embedding the pairs and learning psi. Scaled: mapping the stale share of the gallery.
        transform_seconds_per_forward = float(applying.sum() / mapped.sum()) if mapped.sum() else 0.0
        fixed_seconds = np.clip(phase_seconds - applying, 0, None)
        transform_hours = (fixed_seconds + mapped_fraction * gallery_items * transform_seconds_per_forward) / 3600
        backfill_hours = backfill_fraction * gallery_items * spf / 3600
    else:
        if transform_seconds_per_forward is None:
            psi_seconds = np.clip(phase_seconds - pairs * split_spf, 0, None)
            total = psi_forwards.sum()
            transform_seconds_per_forward = float(psi_seconds.sum() / total) if total else 0.0
        backfill_hours = (backfill_fraction * gallery_items + pairs) * spf / 3600
        transform_hours = ((psi_forwards - mapped) + mapped_fraction * gallery_items) * transform_seconds_per_forward / 3600
    return pd.DataFrame(
        {
            "session": sessions.astype(np.int64), "gallery_items": size.astype(np.int64), "backfill_fraction": backfill_fraction,
            "mapped_fraction": mapped_fraction, "projected_gallery": np.full(len(sessions), gallery_items, dtype=np.int64),
            "seconds_per_forward": spf, "seconds_per_transform_forward": transform_seconds_per_forward,
            "backfill_hours": backfill_hours, "transform_hours": transform_hours, "update_hours": backfill_hours + transform_hours,
            "forward_rate": rate,
        },
        columns=PROJECTION_COLUMNS,
    )


def projection_table(projection: pd.DataFrame, *, title: str) -> ReportTable:
    """A table of `project_costs` rows, with the total over the stream."""
    table = ReportTable(title, [Column(h) for h in ("session", "gallery", "backfilled", "mapped", "backfill h", "transform h", "update h")])
    for _, row in projection.iterrows():
        table.add_row(
            cell(row.session, "{:d}"), cell(row.gallery_items, "{:,d}"), cell(row.backfill_fraction, "{:.1%}"),
            cell(row.mapped_fraction, "{:.1%}"), *[cell(row[c], "{:,.2f}") for c in ("backfill_hours", "transform_hours", "update_hours")],
        )
    table.add_row("all", "", "", "", *[cell(projection[c].sum(), "{:,.2f}") for c in ("backfill_hours", "transform_hours", "update_hours")],
                  strong=True)
    if len(projection):
        spf = projection.seconds_per_forward
        per_forward = f"{spf.iloc[0]:.2e}" if spf.nunique() == 1 else f"{spf.min():.2e}-{spf.max():.2e}"
        rate = projection.forward_rate.iloc[0] if "forward_rate" in projection else "measured on this machine"
        table.caption = (f"{per_forward} s per backbone forward ({rate}), "
                         f"{projection.seconds_per_transform_forward.iloc[0]:.2e} s per psi forward")
    return table
