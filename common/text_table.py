"""A plain-text table for the terminal: columns padded to their widest cell, a dashed rule under the header.

    >>> print(text_table(("milestone", "check"), [("p1-numpy", "PASS"), ("p2-cnn", "-")]))
    milestone  check
    ---------  -----
    p1-numpy   PASS
    p2-cnn     -
"""

from __future__ import annotations


def text_table(header: tuple, rows: list[tuple]) -> str:
    """``header`` and ``rows`` (any values, shown with ``str``) as aligned columns; no trailing spaces."""
    cells = [tuple(map(str, header)), *(tuple(map(str, row)) for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
