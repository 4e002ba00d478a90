"""Result tables written twice over: CSV for programs, markdown for people (both atomically)."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from deepfill.utils.files import atomic_path

__all__ = ["markdown_table", "write_csv", "write_table"]


def _replace_atomically(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_csv(rows: Sequence[dict[str, Any]], columns: Sequence[str], path: Path) -> Path:
    """``rows`` as CSV with ``columns`` (missing cells empty, other keys left out), atomically."""
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), restval="", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_table(
    rows: Sequence[dict[str, Any]],
    columns: Sequence[str],
    csv_path: Path,
    md_path: Path,
    title: str = "",
    float_format: str = ".4f",
) -> tuple[Path, Path]:
    """Write ``rows`` (missing cells empty) as ``csv_path`` and as a markdown table ``md_path``.

    ``title`` (markdown, optional) goes above the markdown table; floats there use ``float_format``.
    """
    write_csv(rows, columns, csv_path)

    def cell(value: Any) -> str:
        return format(value, float_format) if isinstance(value, float) else str(value)

    lines = [title, ""] if title else []
    lines += markdown_table(columns, [[cell(row.get(c, "")) for c in columns] for row in rows])
    _replace_atomically(md_path, "\n".join(lines) + "\n")
    return csv_path, md_path


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """The lines of a markdown table: a header of ``columns``, then one line per row of cells
    (strings as they are; a ``|`` inside a cell is written ``/`` so that it cannot split it)."""

    def line(cells: Sequence[Any]) -> str:
        return "| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |"

    return [line(columns), "|" + "---|" * len(columns), *(line(row) for row in rows)]
