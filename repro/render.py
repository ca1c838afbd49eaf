"""A table as text: rich, CSV, JSON or Markdown, from one `TableData`.

    print(render(table, "markdown"))

A cell is a `Cell`: the text a reader sees plus the raw values (mean, CI, delta, p) that CSV and
JSON carry, so no number is lost to formatting. Builders (repro/tables.py, repro/reference.py)
make the `TableData`; nothing here reads the database.

Rich output is laid out for an 80-column terminal: benchmark names shortened by a fixed map
(BENCH_ABBREV, listed under the table), and when the columns do not fit side by side without
breaking a word, the table is wrapped into several (each repeating the first column) or, as a
last resort, stacked one row per block. No cell is ever cut with an ellipsis.
"""

from __future__ import annotations

import csv
import io
import json
import re
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


RICH_WIDTH = 80  # the terminal width the rich layout is made for (tests render at it; wider terminals pass theirs)
# Benchmark names as rich tables print them, so five benchmarks and the average fit 80 columns. A fixed map (not
# computed) so a reader learns it once; CSV, JSON and Markdown keep the full names. Each table says which it used.
BENCH_ABBREV: dict[str, str] = {
    "math500": "M500", "aime24": "AIME24", "aime25": "AIME25", "amc23": "AMC23", "olympiadbench": "Olym",
    "minerva_math": "Minerva", "gsm8k": "GSM8K", "math_train": "MATHtr",
    "arith-easy": "easy", "arith-medium": "medium", "arith-hard": "hard", "arith-train": "ar-train",
}
_ABBREV_RE = re.compile(r"(?<![\w-])(" + "|".join(sorted(map(re.escape, BENCH_ABBREV), key=len, reverse=True))
                        + r")(?![\w-])")


def abbreviate(text: str) -> tuple[str, list[str]]:
    """`text` with every benchmark name in BENCH_ABBREV replaced by its short form, and the names replaced."""
    used: list[str] = []

    def short(m: re.Match[str]) -> str:
        used.append(m.group(1))
        return BENCH_ABBREV[m.group(1)]

    return _ABBREV_RE.sub(short, text), used


def _min_width(texts: list[str]) -> int:
    """The narrowest column that shows every text without breaking a word (rich wraps at spaces)."""
    from rich.cells import cell_len

    return max([cell_len(w) for t in texts for w in t.split()] or [1])


def _max_width(texts: list[str]) -> int:
    from rich.cells import cell_len

    return max([cell_len(line) for t in texts for line in t.splitlines()] or [1])


def fit_widths(mins: list[int], maxs: list[int], width: int) -> list[int]:
    """Column widths for a table of `width` characters: every column its narrowest, then the room left handed out
    one character at a time to the columns that still wrap (rich's own collapse can cut below a word)."""
    out = list(mins)
    room = width - (1 + sum(w + 3 for w in out))
    while room > 0 and any(w < m for w, m in zip(out, maxs)):
        for i, m in enumerate(maxs):
            if room > 0 and out[i] < m:
                out[i] += 1
                room -= 1
    return out


def column_chunks(widths: list[int], width: int) -> list[list[int]] | None:
    """Column indexes (after the first, the key column every chunk repeats) packed into tables of at most `width`
    characters (a column costs its width + 3: padding and border; a table 1 more); None if one does not fit."""
    def cost(cols: list[int]) -> int:
        return 1 + sum(widths[i] + 3 for i in cols)

    chunks: list[list[int]] = []
    for i in range(1, len(widths)):
        if cost([0, i]) > width:
            return None
        if chunks and cost([0, *chunks[-1], i]) <= width:
            chunks[-1].append(i)
        else:
            chunks.append([i])
    return chunks or [[]]


def _rich_table(title: str, headers: list[str], rows: list[list[str]], cols: list[int], mins: list[int],
                maxs: list[int], width: int) -> Any:
    from rich.table import Table
    from rich.text import Text  # plain Text: "[16.2–32.5]" and notes are never parsed as markup

    t = Table(title=Text(title), show_lines=True)
    for i, w in zip(cols, fit_widths([mins[i] for i in cols], [maxs[i] for i in cols], width)):
        t.add_column(Text(headers[i]), overflow="fold", width=w)
    for r in rows:
        t.add_row(*(Text(r[i]) for i in cols))
    return t


def _stacked(title: str, headers: list[str], rows: list[list[str]]) -> Any:
    """One block per row (field, value): the layout of last resort, when one column beside the key is too wide."""
    from rich.table import Table
    from rich.text import Text

    t = Table(title=Text(title), show_header=False)
    t.add_column(overflow="fold")
    t.add_column(overflow="fold")
    for r in rows:
        fields = [(h, v) for h, v in zip(headers, r) if v]
        for j, (h, v) in enumerate(fields):
            t.add_row(Text(h, style="bold" if j == 0 else ""), Text(v), end_section=j == len(fields) - 1)
    return t


def render_rich(table: TableData, width: int = RICH_WIDTH) -> str:
    """Rich output captured as text, not printed: columns wrapped into as many tables (each repeating the first
    column) as keep every word whole within `width`; benchmark names abbreviated (BENCH_ABBREV, said in a note)."""
    from rich.console import Console
    from rich.text import Text

    used: list[str] = []
    headers = []
    for c in table.columns:
        short, names = abbreviate(c)
        headers.append(short)
        used += names
    rows = [[format_value(r.get(c)) for c in table.columns] for r in table.rows]
    mins = [_min_width([h] + [r[i] for r in rows]) for i, h in enumerate(headers)]
    maxs = [_max_width([h] + [r[i] for r in rows]) for i, h in enumerate(headers)]
    chunks = column_chunks(mins, width)
    console = Console(record=True, width=width, file=io.StringIO())
    if chunks is None:
        console.print(_stacked(table.title, headers, rows))
    for n, cols in enumerate(chunks or []):
        part = f" ({n + 1}/{len(chunks)})" if len(chunks) > 1 else ""
        console.print(_rich_table(table.title + part, headers, rows, [0, *cols], mins, maxs, width))
    abbrevs = list(dict.fromkeys(used))
    notes = ([", ".join(f"{BENCH_ABBREV[b]} = {b}" for b in abbrevs)] if abbrevs else []) + table.notes
    for n in notes:
        console.print(Text(f"- {n}", style="dim"))
    return console.export_text()


RENDERERS: dict[str, Callable[[TableData], str]] = {"rich": render_rich, "csv": render_csv, "json": render_json,
                                                    "markdown": render_markdown}
FORMATS = tuple(RENDERERS)


def render(table: TableData, fmt: str = "rich", width: int = RICH_WIDTH) -> str:
    """The table as a string in one of FORMATS (`width`: the terminal's, for rich)."""
    if fmt not in RENDERERS:
        raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    return render_rich(table, width) if fmt == "rich" else RENDERERS[fmt](table)
