"""Several rounds of one benchmark folded into one set of rows: per row the round with the
median figure, plus every round's figure.

These machines are shared and noisy: a row of a 0.5 s phase moves by up to 0.5x between two
runs of the same tree. `mstore bench store --rounds N` runs ours and the Mooncake anchor
alternately N times each, so both see the same spells of noise, and reports per row the
median round of each side with the range of the per-round ratios.
"""
from __future__ import annotations

from typing import Iterable

# A row is identified by these fields (those it has); the rest are its results.
_ID_FIELDS = ("test", "op", "api", "path", "value_size", "direction", "keys_per_batch", "name")


def row_id(r: dict) -> tuple:
    return tuple(r.get(f) for f in _ID_FIELDS)


def metric(r: dict) -> str | None:
    """The figure a row is ranked by: GB/s, ops/s, or a ceiling's best GB/s."""
    for name in ("GBps", "ops_per_s", "GBps_best"):
        if isinstance(r.get(name), (int, float)):
            return name
    return None


def merge(runs: Iterable[list[dict]]) -> list[dict]:
    """One list of rows from several runs of the same plan, in the first run's order.

    A row with a figure becomes a copy of its median round (the lower middle one for an even
    count, so the claim is never the better of two) with `rounds` and `<figure>_rounds`
    (every round's figure, in run order) added; failures are summed over the rounds and a
    read counts as verified only when it was in every round. A row without a figure (the
    parameters, store statistics) is the first run's.
    """
    runs = [r for r in runs if r]
    if len(runs) <= 1:
        return list(runs[0]) if runs else []
    groups: dict[tuple, list[dict]] = {}
    order: list[tuple] = []
    for run in runs:
        for r in run:
            key = row_id(r)
            if key not in groups:
                groups[key] = []
                order.append(key)
            groups[key].append(r)
    return [_fold(groups[key]) for key in order]


def _fold(rows: list[dict]) -> dict:
    m = metric(rows[0])
    if m is None or len(rows) == 1:
        return dict(rows[0])
    ranked = sorted(rows, key=lambda r: r.get(m) or 0.0)
    out = dict(ranked[(len(ranked) - 1) // 2])
    out["rounds"] = len(rows)
    out[f"{m}_rounds"] = [r.get(m) for r in rows]
    for field in ("fails", "populate_fails", "remove_fails"):
        if any(field in r for r in rows):
            out[field] = sum(r.get(field) or 0 for r in rows)
    seen = [r.get("verified") for r in rows if r.get("verified") is not None]
    if seen:
        out["verified"] = all(seen)
    return out


def ratio_range(ours: dict, theirs: dict | None) -> tuple[float, float] | None:
    """(lowest, highest) of ours / theirs over the rounds run side by side, or None when
    either row has a single round."""
    if theirs is None:
        return None
    m = metric(ours)
    a, b = ours.get(f"{m}_rounds"), theirs.get(f"{m}_rounds")
    if not a or not b:
        return None
    ratios = [x / y for x, y in zip(a, b) if x and y]
    return (min(ratios), max(ratios)) if ratios else None
