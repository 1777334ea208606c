"""An independent reference for deepzip.quantize.kmeans: weighted 1-D Lloyd with the documented
empty-cluster rule (split the live cluster whose split at its mean lowers the SSE most, then the
values farthest from their centroids), in exact fractions, with the float64-then-float32 rounding
of the codebook. Written from the docstrings of kmeans_1d and _reseat, not from the code."""

from __future__ import annotations

from fractions import Fraction

import numpy as np


def f32(q: Fraction) -> Fraction:
    """Round to float64, then to float32 (as the code rounds a float64 mean to the codebook)."""
    return Fraction(float(np.float32(float(q))))


def f64(q: Fraction) -> Fraction:
    return Fraction(float(q))


def _ends(xs, c):
    mids = [(c[j] + c[j + 1]) / 2 for j in range(len(c) - 1)]
    return [sum(1 for x in xs if x < m) for m in mids]


def _farthest(xs, ws, c, n_new):
    ends = _ends(xs, c)
    bounds = [0, *ends, len(xs)]
    err = [None] * len(xs)
    for j in range(len(c)):
        for i in range(bounds[j], bounds[j + 1]):
            err[i] = (xs[i] - c[j]) ** 2 * ws[i]
    pos = [i for i in range(len(xs)) if err[i] > 0]
    pos.sort(key=lambda i: (-err[i], xs[i]))
    return sorted(c + [xs[i] for i in pos[:n_new]])


def _reseat(xs, ws, means, live, starts, stops, n_empty):
    gains = []
    parts = []
    for j in range(len(means)):
        a, b = starts[j], stops[j]
        sw = sum(ws[a:b])
        if sw == 0:
            gains.append(Fraction(0))
            parts.append(None)
            continue
        mean = f64(sum(w * x for w, x in zip(ws[a:b], xs[a:b], strict=True)) / sw)
        q = a + sum(1 for x in xs[a:b] if x < mean)
        wl, wr = sum(ws[a:q]), sum(ws[q:b])
        if wl == 0 or wr == 0:
            gains.append(Fraction(0))
            parts.append(None)
            continue
        sl = sum(w * x for w, x in zip(ws[a:q], xs[a:q], strict=True))
        sr = sum(w * x for w, x in zip(ws[q:b], xs[q:b], strict=True))
        gains.append(wl * wr / (wl + wr) * (sl / wl - sr / wr) ** 2)
        left = min(max(f64(sl / wl), xs[a]), xs[q - 1])
        right = min(max(f64(sr / wr), xs[q]), xs[b - 1])
        parts.append((left, right))
    order = sorted(range(len(means)), key=lambda j: (-gains[j], j))[:n_empty]
    order = [j for j in order if gains[j] > 0]
    new = list(means)
    rights = []
    for j in order:
        new[j], right = parts[j]
        rights.append(right)
    keep = sorted([new[j] for j in range(len(means)) if live[j]] + rights)
    remaining = n_empty - len(order)
    return _farthest(xs, ws, keep, remaining) if remaining else keep


def lloyd(values, weights, init, max_iter, tol=Fraction(0)):
    """values/weights: lists of ints (weights None: counts); init: list of ints/Fractions.
    Returns (centroids float32 as Fractions, iterations, converged, labels)."""
    merged: dict[Fraction, Fraction] = {}
    for i, v in enumerate(values):
        w = Fraction(1) if weights is None else Fraction(weights[i])
        merged[Fraction(v)] = merged.get(Fraction(v), Fraction(0)) + w
    xs = sorted(merged)
    ws = [merged[x] for x in xs]
    c = sorted(f32(Fraction(v)) for v in init)
    previous = None
    it = 0
    while True:
        ends = _ends(xs, c)
        if previous is not None and ends == previous:
            converged = True
            break
        if it >= max_iter:
            converged = False
            break
        starts, stops = [0, *ends], [*ends, len(xs)]
        live, new = [], []
        for j in range(len(c)):
            a, b = starts[j], stops[j]
            sw = sum(ws[a:b])
            live.append(sw > 0)
            if sw > 0:
                m = f64(sum(w * x for w, x in zip(ws[a:b], xs[a:b], strict=True)) / sw)
                new.append(min(max(m, xs[a]), xs[b - 1]))
            else:
                new.append(c[j])
        n_empty = live.count(False)
        if n_empty:
            new = _reseat(xs, ws, new, live, starts, stops, n_empty)
            previous = None
        else:
            previous = ends
        new = [f32(v) for v in new]
        shift = max(abs(p - q) for p, q in zip(new, c, strict=True)) if len(new) == len(c) else None
        c = new
        it += 1
        if tol > 0 and not n_empty and shift is not None and shift <= tol:
            converged = True
            break
    c = sorted(set(c))
    mids = [(c[j] + c[j + 1]) / 2 for j in range(len(c) - 1)]
    labels = [sum(1 for m in mids if m <= Fraction(v)) for v in values]
    return c, it, converged, labels
