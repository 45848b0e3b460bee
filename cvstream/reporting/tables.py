"""The reports' tables: one cell format, and one table model that the terminal (rich) and the HTML page both render.

A `ReportTable` holds text only: a title, columns (a header, numbers right-aligned), rows of cells
made by `cell`, which rows are emphasised, and a caption. The terminal prints it as a rich table
(`console.print(table)`); `cvstream.reporting.html_report.table_html` writes it as an HTML table.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

MISSING = "-"  # the cell of a missing value (None, NaN)
_FLOAT_TYPES = set("eEfFgG%")


def cell(value, form: str | None = None, *, sd: float | None = None) -> str:
    """One table cell: `MISSING` for None or NaN; a number in `form` ('{:.3f}', '{:,d}', '{:.1%}'), with its spread
    over seeds `sd` (when nonzero) as '0.450 ± 0.050'; without a form, whole numbers with thousands separators and
    other numbers to 4 significant digits; True, False and text as they are."""
    if value is None or value is pd.NA or (isinstance(value, (float, np.floating)) and np.isnan(value)):
        return MISSING
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        return str(value)
    if form is None:
        if isinstance(value, (int, np.integer)) or (float(value).is_integer() and abs(value) < 1e15):
            return f"{int(value):,}"
        return f"{value:.4g}"
    text = form.format(_as(value, form))
    return f"{text} ± {form.format(_as(sd, form))}" if sd else text


def _as(value, form: str):
    """The number as `form` takes it: an int for an integer type ('d'), a float for a float type, else itself."""
    kind = form.rstrip("}")[-1:]
    if kind == "d":
        return int(value)
    return float(value) if kind in _FLOAT_TYPES else value


@dataclass(frozen=True)
class Column:
    header: str
    numeric: bool = True  # right-aligned; text columns are left-aligned


@dataclass
class ReportTable:
    """A table of text cells with its title, columns, emphasised rows and an optional caption."""

    title: str
    columns: list[Column]
    rows: list[list[str]] = field(default_factory=list)
    strong: list[bool] = field(default_factory=list)  # per row: emphasised (a total, say)
    caption: str | None = None

    def add_row(self, *cells: str, strong: bool = False) -> None:
        if len(cells) != len(self.columns):
            raise ValueError(f"a row of {len(cells)} cells in a table of {len(self.columns)} columns")
        self.rows.append([str(c) for c in cells])
        self.strong.append(strong)

    def __rich__(self):
        """The table as rich prints it (titles and cells are plain text, never markup)."""
        from rich.markup import escape
        from rich.table import Table

        table = Table(title=escape(self.title), caption=None if self.caption is None else escape(self.caption))
        for column in self.columns:
            table.add_column(escape(column.header), justify="right" if column.numeric else "left")
        for cells, strong in zip(self.rows, self.strong):
            table.add_row(*[escape(c) for c in cells], style="bold" if strong else None)
        return table


def frame_table(frame: pd.DataFrame, *, title: str, index: bool = False, decimals: int | None = None) -> ReportTable:
    """A DataFrame as a table: numeric columns right-aligned, cells by `cell` (floats to `decimals` places where given)."""
    if index:
        frame = frame.reset_index()
    numeric = [pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c]) for c in frame.columns]
    table = ReportTable(title, [Column(str(c), n) for c, n in zip(frame.columns, numeric)])
    form = None if decimals is None else f"{{:.{decimals}f}}"
    for values in frame.itertuples(index=False):
        table.add_row(*[cell(v, form if isinstance(v, (float, np.floating)) else None) for v in values])
    return table
