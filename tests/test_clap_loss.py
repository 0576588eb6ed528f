"""The CLAP loss pinned against a hand computation (numpy, from the definitions in CLAP.md / SimCLR):

    loss = NTXent_{tau_text}(f(t), f(t')) + lambda * NTXent_{tau_content}(f(t'), f(c)),   f = the head at s = 1

with distinct temperatures and lambda, so swapping the temperatures or the pairs, or dropping lambda, fails.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clap_edge.head import CLAPHead, HeadConfig
from clap_edge.train import TrainConfig, clap_loss


def simclr_nt_xent(a: np.ndarray, b: np.ndarray, tau: float) -> float:
    """SimCLR (Chen et al. 2020): l(i, j) = -log(exp(sim_ij / tau) / sum_{k != i} exp(sim_ik / tau)) over the 2N
    views, sim = cosine; the loss is the mean of l over both orders of every positive pair."""
    views = np.concatenate([a, b]).astype(np.float64)
    n = len(a)
    total = 0.0
    for i in range(2 * n):
        j = (i + n) % (2 * n)  # i's positive: the same item in the other view
        sims = [float(views[i] @ views[k] / (np.linalg.norm(views[i]) * np.linalg.norm(views[k])))
                for k in range(2 * n)]
        denominator = sum(np.exp(sims[k] / tau) for k in range(2 * n) if k != i)
        total += -np.log(np.exp(sims[j] / tau) / denominator)
    return total / (2 * n)


def head_by_hand(z: np.ndarray, w: np.ndarray, bias: np.ndarray, p: np.ndarray) -> np.ndarray:
    silu = z / (1 + np.exp(-z))
    return z + (silu @ w.T + bias) @ p.T  # s = 1 in training


def test_clap_loss_matches_the_definition_with_distinct_temperatures_and_lambda():
    rng = np.random.default_rng(0)
    d, h, n = 8, 5, 6
    head = CLAPHead(HeadConfig(in_dim=d, latent_dim=h, alpha=0.056))  # inference alpha: training must use s = 1
    w, bias, p = rng.normal(0, 0.5, (h, d)), rng.normal(0, 0.5, h), rng.normal(0, 0.5, (d, h))
    with torch.no_grad():
        head.linear.weight.copy_(torch.from_numpy(w))
        head.linear.bias.copy_(torch.from_numpy(bias))
        head.projection.weight.copy_(torch.from_numpy(p))
    t, t_aug, c = (rng.normal(0, 1, (n, d)) for _ in range(3))
    config = TrainConfig(tau_text=0.5, tau_content=1.0, lambda_content=0.7)

    got = float(clap_loss(head, *(torch.from_numpy(x).float() for x in (t, t_aug, c)), config).detach())

    ft, fv, fc = (head_by_hand(x, w, bias, p) for x in (t, t_aug, c))
    expected = simclr_nt_xent(ft, fv, 0.5) + 0.7 * simclr_nt_xent(fv, fc, 1.0)
    assert got == pytest.approx(expected, rel=1e-5)
    # the pins have teeth: each plausible mistake moves the value well beyond the tolerance
    mistakes = {"temperatures swapped": simclr_nt_xent(ft, fv, 1.0) + 0.7 * simclr_nt_xent(fv, fc, 0.5),
                "lambda dropped": simclr_nt_xent(ft, fv, 0.5) + simclr_nt_xent(fv, fc, 1.0),
                "content pair on t": simclr_nt_xent(ft, fv, 0.5) + 0.7 * simclr_nt_xent(ft, fc, 1.0),
                "head at alpha": simclr_nt_xent(*(x + 0.056 * (head_by_hand(x, w, bias, p) - x) for x in (t, t_aug)),
                                                0.5) + 0.7 * simclr_nt_xent(
                    *(x + 0.056 * (head_by_hand(x, w, bias, p) - x) for x in (t_aug, c)), 1.0)}
    for name, wrong in mistakes.items():
        assert abs(wrong - expected) > 1e-3 * abs(expected), name
