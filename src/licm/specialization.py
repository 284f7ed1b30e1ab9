"""Who won what: win matrices and the specialization numbers of LICM §4 (claims c1, c3, c4).

A module of its own, with numpy only, because training (metrics.json), evaluation, the figures and
the summary all compute them, and training must not depend on the evaluation's classifier.
"""
from __future__ import annotations

import numpy as np


def matrix_from_winners(winners, mechanisms, n_mechanisms: int, n_experts: int) -> np.ndarray:
    """Proportion of each mechanism's digits won by each expert: [n_mechanisms, N'] (rows without digits: 0)."""
    counts = np.zeros((n_mechanisms, n_experts), dtype=np.float64)
    np.add.at(counts, (np.asarray(mechanisms, dtype=np.int64), np.asarray(winners, dtype=np.int64)), 1.0)
    return counts / np.maximum(counts.sum(axis=1, keepdims=True), 1.0)


def assignment(matrix) -> list[int]:
    """Mechanism -> expert: the expert winning the largest share of each mechanism's digits."""
    return [int(e) for e in np.asarray(matrix).argmax(axis=1)]


def specialization(matrix: np.ndarray) -> dict:
    """Summary of a win matrix [n_mechanisms, N'].

    top expert of a mechanism = the expert winning the largest share of its digits.
    distinct_winners: number of mechanisms whose top expert wins more than 50% of them AND is not
        the top expert of any other mechanism (so an expert covering two mechanisms counts for neither).
    fully_specialized: every mechanism's top expert is different from every other's.
    """
    matrix = np.asarray(matrix)
    top = assignment(matrix)
    share = matrix.max(axis=1)
    values, counts = np.unique(top, return_counts=True)
    times_top = dict(zip(values.tolist(), counts.tolist()))
    distinct = sum(1 for m in range(len(top)) if share[m] > 0.5 and times_top[int(top[m])] == 1)
    return {"distinct_winners": int(distinct), "fully_specialized": bool(len(values) == len(top))}
