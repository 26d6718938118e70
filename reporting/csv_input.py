"""What the two CSV inputs (clinical covariates, `risk fit` cohorts) share: the delimiter and
how the lines of a problem are listed."""

from __future__ import annotations

import csv

MAX_ROWS_LISTED = 10


def sniff_delimiter(sample: str) -> str:
    """`,`, `;` or tab, as the first lines use; `,` when they do not say."""
    try:
        return csv.Sniffer().sniff(sample[:8192], delimiters=",;\t").delimiter
    except csv.Error:
        return ","


def line_list(rows: list[int]) -> str:
    """Line numbers for an error message, the first MAX_ROWS_LISTED of them and how many more."""
    shown = ", ".join(str(r) for r in rows[:MAX_ROWS_LISTED])
    more = len(rows) - MAX_ROWS_LISTED
    return shown + (f" and {more} more" if more > 0 else "")
