"""A table as text: rich, CSV, JSON or Markdown, from one `TableData`.

    print(render(table, "markdown"))

A cell is a `Cell`: the text a reader sees plus the raw values (mean, CI, delta, p) that CSV and
JSON carry, so no number is lost to formatting. Builders (repro/tables.py, repro/reference.py)
make the `TableData`; nothing here reads the database.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass
class Cell:
    text: str  # what rich and Markdown show
    values: dict[str, Any] = field(default_factory=dict)  # what CSV and JSON carry

    def __str__(self) -> str:
        return self.text


@dataclass
class TableData:
    title: str
    columns: list[str]
    rows: list[dict[str, Any]]  # column -> Cell | str | number | None (blank)
    notes: list[str] = field(default_factory=list)


def format_value(value: Any) -> str:
    """A cell value as text: blank for None, 4 significant digits for floats."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_pct(x: float | None) -> str:
    """A share as a percentage with one decimal; blank for None."""
    return "" if x is None else f"{100 * x:.1f}"


def _flat(table: TableData) -> tuple[list[str], list[list[Any]]]:
    """CSV view: a Cell column expands to `column.key` for each raw value (text kept as `column`)."""
    spec: list[tuple[str, str | None]] = []
    for col in table.columns:
        spec.append((col, None))
        keys: list[str] = []
        for row in table.rows:
            cell = row.get(col)
            if isinstance(cell, Cell):
                keys += [k for k in cell.values if k not in keys]
        spec += [(col, k) for k in keys]
    rows = [[(cell.values.get(key) if isinstance(cell, Cell) else None) if key else format_value(cell)
             for col, key in spec for cell in [row.get(col)]] for row in table.rows]
    return [col if key is None else f"{col}.{key}" for col, key in spec], rows


def render_json(table: TableData) -> str:
    rows = [{c: (r.get(c).values | {"text": r.get(c).text}) if isinstance(r.get(c), Cell) else r.get(c)
             for c in table.columns} for r in table.rows]
    return json.dumps({"title": table.title, "columns": table.columns, "rows": rows, "notes": table.notes},
                      indent=2, default=str)


def render_csv(table: TableData) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    header, rows = _flat(table)
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def render_markdown(table: TableData) -> str:
    esc = lambda s: format_value(s).replace("|", "\\|").replace("\n", "<br>")  # noqa: E731
    lines = [f"**{table.title}**", "", "| " + " | ".join(map(esc, table.columns)) + " |",
             "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(esc(r.get(c)) for c in table.columns) + " |" for r in table.rows]
    lines += [""] + [f"- {n}" for n in table.notes]
    return "\n".join(lines) + "\n"


def render_rich(table: TableData) -> str:
    """Rich output captured as text, not printed."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text  # plain Text: "[16.2–32.5]" and notes are never parsed as markup

    t = Table(title=table.title, show_lines=True)
    for c in table.columns:
        t.add_column(Text(c), overflow="fold")
    for r in table.rows:
        t.add_row(*(Text(format_value(r.get(c))) for c in table.columns))
    console = Console(record=True, width=max(100, 24 * len(table.columns)), file=io.StringIO())
    console.print(t)
    for n in table.notes:
        console.print(Text(f"- {n}", style="dim"))
    return console.export_text()


RENDERERS: dict[str, Callable[[TableData], str]] = {"rich": render_rich, "csv": render_csv, "json": render_json,
                                                    "markdown": render_markdown}
FORMATS = tuple(RENDERERS)


def render(table: TableData, fmt: str = "rich") -> str:
    """The table as a string in one of FORMATS."""
    if fmt not in RENDERERS:
        raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    return RENDERERS[fmt](table)
