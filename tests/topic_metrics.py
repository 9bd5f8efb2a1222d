"""Scores of a topic segmentation against the truth: boundary F1 within a tolerance, and Pk.

Boundaries are times in seconds, the start of every segment but the first. F1 matches each true
boundary to at most one found boundary within ``tolerance`` (greedily, nearest first). Pk
(Beeferman et al.) is the chance that two points ``k`` apart (half the mean true segment length)
are wrongly said to be in the same segment or in different ones, sampled every ``step`` seconds
over the duration: 0 is perfect, about 0.5 is a guess.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Score:
    precision: float
    recall: float
    f1: float
    pk: float


def boundary_f1(
    truth: Sequence[float], found: Sequence[float], tolerance: float
) -> tuple[float, float, float]:
    pairs = sorted(
        (abs(t - f), i, j)
        for i, t in enumerate(truth)
        for j, f in enumerate(found)
        if abs(t - f) <= tolerance
    )
    used_truth: set[int] = set()
    used_found: set[int] = set()
    for _, i, j in pairs:
        if i not in used_truth and j not in used_found:
            used_truth.add(i)
            used_found.add(j)
    hits = len(used_truth)
    precision = hits / len(found) if found else float(not truth)
    recall = hits / len(truth) if truth else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def pk(truth: Sequence[float], found: Sequence[float], duration: float, step: float = 0.5) -> float:
    truth, found = sorted(truth), sorted(found)
    k = duration / (len(truth) + 1) / 2
    errors = total = 0
    time = 0.0
    while time + k <= duration:
        same_truth = bisect.bisect_right(truth, time) == bisect.bisect_right(truth, time + k)
        same_found = bisect.bisect_right(found, time) == bisect.bisect_right(found, time + k)
        errors += same_truth != same_found
        total += 1
        time += step
    return errors / total if total else 0.0


def score(
    truth: Sequence[float], found: Sequence[float], duration: float, tolerance: float = 10.0
) -> Score:
    precision, recall, f1 = boundary_f1(truth, found, tolerance)
    return Score(precision, recall, f1, pk(truth, found, duration))
