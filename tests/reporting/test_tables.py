"""The reports' one cell format and table model, rendered for the terminal and for the HTML page."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from rich.console import Console

from cvstream.reporting.html_report import table_html
from cvstream.reporting.tables import Column, ReportTable, cell, frame_table


def test_cells_of_a_hand_made_row():
    assert [cell(v) for v in (None, float("nan"), np.float32("nan"), pd.NA)] == ["-"] * 4
    assert cell(float("nan"), "{:.3f}", sd=0.1) == "-"
    assert cell(0.45, "{:.3f}") == "0.450" and cell(np.float64(0.45), "{:.3f}", sd=0.05) == "0.450 ± 0.050"
    assert cell(0.45, "{:.3f}", sd=0.0) == "0.450"  # a single run: no spread written
    assert cell(1234567, "{:,}") == "1,234,567" and cell(np.int64(7), "{:d}") == "7" and cell(2.0, "{:d}") == "2"
    assert cell(np.float64(3.0), "{:,d}") == "3" and cell(12345.678, "{:,.1f}") == "12,345.7"
    assert cell(0.1234, "{:.1%}") == "12.3%" and cell(np.int64(1), "{:.2f}") == "1.00"
    assert cell(np.int64(1234)) == "1,234" and cell(2.0) == "2" and cell(1e20) == "1e+20" and cell(0.123456) == "0.1235"
    assert cell(True) == "True" and cell("run-1") == "run-1" and cell("text", "{:.3f}") == "text"


def _console_text(renderable) -> str:
    console = Console(file=io.StringIO(), record=True, width=120, color_system=None)
    console.print(renderable)
    return console.export_text()


def test_one_table_model_renders_to_the_terminal_and_to_html():
    table = ReportTable("costs [i]", [Column("phase", numeric=False), Column("hours")], caption="a <note>")
    table.add_row("train", cell(1.5, "{:.2f}"))
    table.add_row("[bold]all", cell(float("nan"), "{:.2f}"), strong=True)
    text = _console_text(table)
    assert "costs [i]" in text and "[bold]all" in text and "a <note>" in text  # plain text, never rich markup
    assert "│ train     │  1.50 │" in text and "│ [bold]all │     - │" in text  # numbers right-aligned, text left
    page = table_html(table)
    assert "<caption>costs [i]</caption>" in page and '<p class="note">a &lt;note&gt;</p>' in page
    assert '<th class="">phase</th><th class="num">hours</th>' in page
    assert '<tr><td class="">train</td><td class="num">1.50</td></tr>' in page
    assert '<tr class="strong"><td class="">[bold]all</td><td class="num">-</td></tr>' in page
    with pytest.raises(ValueError, match="a row of 1 cells in a table of 2 columns"):
        table.add_row("x")


def test_a_frame_becomes_a_table_with_numeric_columns_right_aligned():
    frame = pd.DataFrame({"session": [0, 1], "value": [0.5, np.nan], "name": ["a", "b"]})
    table = frame_table(frame, title="t", decimals=3)
    assert [(c.header, c.numeric) for c in table.columns] == [("session", True), ("value", True), ("name", False)]
    assert table.rows == [["0", "0.500", "a"], ["1", "-", "b"]]
