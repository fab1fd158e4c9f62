"""Slow, obviously-correct versions of the robust rules (Python loops, sorted lists, explicit pairwise
distances in float64) and the hypothesis strategies the robust tests share.

Ties are broken the way the fast code documents: equal Krum scores by the updates' contents
(lexicographically), equal distances to Bulyan's median by the lower value.
"""

from __future__ import annotations

import math

import numpy as np
from hypothesis import strategies as st

# Small integers as float32: every sum of products in a Gram matrix of these is exact in float32,
# so distances, scores and ties are exact and the fast code must agree bit for bit.
small_ints = st.integers(-20, 20).map(float)
# Finite float32 values of moderate size for the order-statistic rules (exact in any arithmetic).
moderate = st.floats(min_value=-1e3, max_value=1e3, width=32, allow_subnormal=False)


@st.composite
def update_sets(draw, min_n=1, max_n=9, max_d=5, elements=moderate):
    """(list of n float32 vectors of one length d, list of n positive weights)."""
    n = draw(st.integers(min_n, max_n))
    d = draw(st.integers(1, max_d))
    vectors = [np.array(draw(st.lists(elements, min_size=d, max_size=d)), dtype=np.float32) for _ in range(n)]
    weights = draw(st.lists(st.floats(min_value=0.1, max_value=10.0), min_size=n, max_size=n))
    return vectors, weights


def as_f64(vectors):
    return [[float(x) for x in v] for v in vectors]


def ref_median(vectors):
    rows = as_f64(vectors)
    n, d = len(rows), len(rows[0])
    out = []
    for j in range(d):
        column = sorted(row[j] for row in rows)
        out.append(column[n // 2] if n % 2 else (column[n // 2 - 1] + column[n // 2]) / 2)
    return np.array(out, dtype=np.float32)


def ref_trimmed_mean(vectors, beta):
    rows = as_f64(vectors)
    n, d = len(rows), len(rows[0])
    cut = math.floor(beta * n)
    out = []
    for j in range(d):
        column = sorted(row[j] for row in rows)
        kept = column[cut:n - cut]
        out.append(math.fsum(kept) / len(kept))
    return np.array(out, dtype=np.float64)


def ref_sq_distances(vectors):
    rows = as_f64(vectors)
    n = len(rows)
    dist = [[0.0] * n for _ in range(n)]
    for i in range(n):
        for j in range(n):
            dist[i][j] = math.fsum((a - b) ** 2 for a, b in zip(rows[i], rows[j]))
    return dist


def ref_krum_scores(vectors, f, members=None, neighbours=None):
    """Scores among `members` (all by default) with `neighbours` nearest (n − f − 2 by default)."""
    dist = ref_sq_distances(vectors)
    members = list(range(len(vectors))) if members is None else members
    k = len(members) - f - 2 if neighbours is None else neighbours
    scores = {}
    for i in members:
        others = sorted(dist[i][j] for j in members if j != i)
        scores[i] = math.fsum(others[:k]) if others[:k] else math.inf
    return scores


def ref_krum_order(vectors, f):
    """Indices by (score, contents)."""
    scores = ref_krum_scores(vectors, f)
    return sorted(scores, key=lambda i: (scores[i], tuple(float(x) for x in vectors[i])))


def ref_krum(vectors, f):
    return np.asarray(vectors[ref_krum_order(vectors, f)[0]], dtype=np.float32)


def ref_multi_krum(vectors, f, m):
    chosen = ref_krum_order(vectors, f)[:m]
    rows = as_f64(vectors)
    return np.array([math.fsum(rows[i][j] for i in chosen) / m for j in range(len(rows[0]))])


def ref_bulyan(vectors, f):
    n = len(vectors)
    theta = n - 2 * f
    beta = theta - 2 * f
    remaining = list(range(n))
    picked = []
    for _ in range(theta):
        k = max(len(remaining) - f - 2, 1)
        scores = ref_krum_scores(vectors, f, members=remaining, neighbours=k)
        best = min(remaining, key=lambda i: (scores[i], tuple(float(x) for x in vectors[i])))
        picked.append(best)
        remaining.remove(best)
    rows = as_f64([vectors[i] for i in picked])
    out = []
    for j in range(len(rows[0])):
        column = sorted(row[j] for row in rows)
        med = column[theta // 2] if theta % 2 else (column[theta // 2 - 1] + column[theta // 2]) / 2
        closest = sorted(column, key=lambda x: (abs(x - med), x))[:beta]
        out.append(math.fsum(closest) / beta)
    return np.array(out)


def ref_objective(vectors, weights, point):
    total = math.fsum(weights)
    return math.fsum(w / total * math.sqrt(math.fsum((float(a) - float(p)) ** 2 for a, p in zip(v, point)))
                     for v, w in zip(vectors, weights))


def ref_geometric_median(vectors, weights, iterations=5000, smoothing=1e-12):
    """Plain Weiszfeld in float64, many iterations, from the weighted mean."""
    x = np.array(as_f64(vectors))
    w = np.array(weights, dtype=np.float64) / math.fsum(weights)
    v = (w[:, None] * x).sum(axis=0)
    for _ in range(iterations):
        dist = np.sqrt(((x - v) ** 2).sum(axis=1))
        b = w / np.maximum(dist, smoothing)
        new = (b[:, None] * x).sum(axis=0) / b.sum()
        if np.array_equal(new, v):
            break
        v = new
    return v


def ref_centered_clipping(vectors, weights, tau, iterations, start):
    rows = as_f64(vectors)
    total = math.fsum(weights)
    v = [float(s) for s in start]
    for _ in range(iterations):
        step = [0.0] * len(v)
        for row, w in zip(rows, weights):
            diff = [a - b for a, b in zip(row, v)]
            norm = math.sqrt(math.fsum(x * x for x in diff))
            scale = 1.0 if norm <= tau else tau / norm
            for j, x in enumerate(diff):
                step[j] += w / total * scale * x
        v = [a + b for a, b in zip(v, step)]
    return np.array(v)


def ref_norm_bounded_mean(vectors, weights, bound):
    rows = as_f64(vectors)
    total = math.fsum(weights)
    out = [0.0] * len(rows[0])
    for row, w in zip(rows, weights):
        norm = math.sqrt(math.fsum(x * x for x in row))
        scale = 1.0 if norm <= bound else bound / norm
        for j, x in enumerate(row):
            out[j] += w / total * scale * x
    return np.array(out)
