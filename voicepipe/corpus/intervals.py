"""Time intervals [(start, end)] in seconds: the set algebra the segmenter and the purity scorer share."""

from __future__ import annotations

from collections.abc import Sequence

Interval = tuple[float, float]


def union(a: Sequence[Interval]) -> list[Interval]:
    """Sorted, merged, non-empty intervals covering the same time as `a`."""
    out: list[list[float]] = []
    for s, e in sorted(a):
        if out and s <= out[-1][1]:
            out[-1][1] = max(out[-1][1], e)
        elif e > s:
            out.append([s, e])
    return [(s, e) for s, e in out]


def intersect(a: Sequence[Interval], b: Sequence[Interval]) -> list[Interval]:
    """The time in both `a` and `b` (each a list of disjoint intervals)."""
    out, i, j = [], 0, 0
    a, b = sorted(a), sorted(b)
    while i < len(a) and j < len(b):
        s, e = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if e > s:
            out.append((s, e))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out


def subtract(a: Sequence[Interval], b: Sequence[Interval]) -> list[Interval]:
    """The time in `a` and not in `b`."""
    out = []
    for s, e in sorted(a):
        cur = s
        for bs, be in sorted(b):
            if be <= cur or bs >= e:
                continue
            if bs > cur:
                out.append((cur, bs))
            cur = max(cur, be)
        if cur < e:
            out.append((cur, e))
    return out


def seconds(a: Sequence[Interval]) -> float:
    """Total length of `a` (disjoint intervals)."""
    return float(sum(e - s for s, e in a))
