"""Evaluation of a trained committee (minimal: which expert wins which mechanism).

`win_matrix` and `specialization` are what `licm train` writes into metrics.json; the
evaluation stage builds on them.
"""
from __future__ import annotations

import numpy as np
import torch


@torch.no_grad()
def win_matrix(committee, discriminator, images, mechanisms, n_mechanisms: int, batch_size: int = 256) -> np.ndarray:
    """Proportion of each mechanism's digits won by each expert: array [n_mechanisms, N'].

    images: [n,H,W] or [n,1,H,W] (numpy or tensor) in [0,1]; mechanisms: [n] labels in
    0..n_mechanisms-1. The winner of a digit is the expert whose output D scores highest; the
    experts run in eval mode (BatchNorm running statistics), so a digit's winner does not depend
    on the other digits of its batch. Rows of mechanisms without digits are all zero.
    """
    device = next(committee.parameters()).device
    images = torch.as_tensor(np.asarray(images), dtype=next(committee.parameters()).dtype)
    if images.dim() == 3:
        images = images.unsqueeze(1)
    mechanisms = torch.as_tensor(np.asarray(mechanisms), dtype=torch.long)
    n_experts = committee.n_experts
    modes = (committee.training, discriminator.training)
    committee.eval()
    discriminator.eval()
    counts = torch.zeros(n_mechanisms, n_experts, dtype=torch.float64)
    try:
        for start in range(0, len(images), batch_size):
            x = images[start:start + batch_size].to(device)
            out = committee(x)                                          # [b, N', 1, H, W]
            scores = discriminator.logits(out.flatten(0, 1)).view(len(x), n_experts)
            winners = scores.argmax(dim=1).cpu()
            counts.index_put_((mechanisms[start:start + batch_size], winners),
                              torch.ones(len(x), dtype=torch.float64), accumulate=True)
    finally:
        committee.train(modes[0])
        discriminator.train(modes[1])
    totals = counts.sum(dim=1, keepdim=True)
    return (counts / totals.clamp(min=1)).numpy()


def specialization(matrix: np.ndarray) -> dict:
    """Summary of a win matrix [n_mechanisms, N'].

    top expert of a mechanism = the expert winning the largest share of its digits.
    distinct_winners: number of mechanisms whose top expert wins more than 50% of them AND is not
        the top expert of any other mechanism (so an expert covering two mechanisms counts for neither).
    fully_specialized: every mechanism's top expert is different from every other's.
    """
    matrix = np.asarray(matrix)
    top = matrix.argmax(axis=1)
    share = matrix.max(axis=1)
    values, counts = np.unique(top, return_counts=True)
    times_top = dict(zip(values.tolist(), counts.tolist()))
    distinct = sum(1 for m in range(len(top)) if share[m] > 0.5 and times_top[int(top[m])] == 1)
    return {"distinct_winners": int(distinct), "fully_specialized": bool(len(values) == len(top))}
