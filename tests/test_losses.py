"""The ELM target and losses against hand-computed tensors."""

import math

import pytest
import torch

from elmerase.losses import (distribution_loss, elm_target_logits, eta_per_position, hard_cross_entropy,
                             kl_divergence, soft_cross_entropy, top_k_distribution)


def log_softmax_list(xs):
    m = max(xs)
    z = math.log(sum(math.exp(x - m) for x in xs)) + m
    return [x - z for x in xs]


def test_eta_constant_and_linear_ramp():
    """Constant: eta everywhere. Linear: 1 -> eta within each text, restarting per text."""
    assert eta_per_position([3], 500.0).tolist() == [500.0, 500.0, 500.0]
    ramp = eta_per_position([3, 2], 1000.0, "linear", 1.0, dtype=torch.float64)
    assert ramp.tolist() == pytest.approx([1.0, 500.5, 1000.0, 1.0, 1000.0])
    assert eta_per_position([1], 1000.0, "linear").tolist() == [1.0]  # as torch.linspace(1, 1000, 1)


def test_target_logits_sign_and_temperature():
    """target = logsm(b/T) + eta * (logsm(n/T) - logsm(e/T)), computed by hand for V = 3, T = 2, eta = 2.

    Mass moves toward what the novice context prefers (token 2) and away from the expert's (token 0).
    """
    b, e, n = [1.0, 2.0, 3.0], [4.0, 0.0, 0.0], [0.0, 0.0, 4.0]
    T, eta = 2.0, 2.0
    lb = log_softmax_list([x / T for x in b])
    le = log_softmax_list([x / T for x in e])
    ln = log_softmax_list([x / T for x in n])
    expected = [lb[i] + eta * (ln[i] - le[i]) for i in range(3)]
    got = elm_target_logits(torch.tensor([b], dtype=torch.float64), torch.tensor([e], dtype=torch.float64),
                            torch.tensor([n], dtype=torch.float64), torch.tensor([eta], dtype=torch.float64), T)
    assert got[0].tolist() == pytest.approx(expected, abs=1e-12)
    assert got[0].argmax().item() == 2 and got[0].argmin().item() == 0


def test_target_eta_zero_is_base_distribution():
    base = torch.tensor([[0.5, -1.0, 2.0]])
    got = elm_target_logits(base, torch.randn(1, 3), torch.randn(1, 3), torch.zeros(1), 1.0)
    assert torch.allclose(got.softmax(-1), base.softmax(-1))


def test_top_k_keeps_largest_and_renormalises():
    """k = 2 of logits [1, 3, 2, 0]: keep tokens 1 and 2, P = softmax([3, 2]) = [e/(e+1), 1/(e+1)]."""
    idx, p = top_k_distribution(torch.tensor([[1.0, 3.0, 2.0, 0.0]]), 2)
    assert idx.tolist() == [[1, 2]]
    assert p[0].tolist() == pytest.approx([math.e / (math.e + 1), 1 / (math.e + 1)])
    idx_all, p_all = top_k_distribution(torch.tensor([[1.0, 3.0, 2.0, 0.0]]), 0)
    assert idx_all.tolist() == [[0, 1, 2, 3]] and p_all.sum().item() == pytest.approx(1.0)


def test_soft_cross_entropy_by_hand():
    """H(P', Q) with Q = softmax([0, ln 2, ln 3]) = [1/6, 2/6, 3/6] and P' = 0.25 on token 0, 0.75 on token 2."""
    logits = torch.tensor([[0.0, math.log(2), math.log(3)]])
    idx, p = torch.tensor([[0, 2]]), torch.tensor([[0.25, 0.75]])
    expected = -(0.25 * math.log(1 / 6) + 0.75 * math.log(3 / 6))
    assert soft_cross_entropy(logits, idx, p).item() == pytest.approx(expected, rel=1e-6)
    entropy = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert kl_divergence(logits, idx, p).item() == pytest.approx(expected - entropy, rel=1e-5)


def test_soft_cross_entropy_matches_dense_torch():
    torch.manual_seed(0)
    logits = torch.randn(5, 11)
    target = torch.randn(5, 11).softmax(-1)
    idx, p = top_k_distribution(target.log(), 0)
    dense = torch.nn.functional.cross_entropy(logits, target, reduction="none")
    assert torch.allclose(soft_cross_entropy(logits, idx, p), dense, atol=1e-6)
    assert distribution_loss("ce", logits, idx, p).item() == pytest.approx(dense.mean().item(), rel=1e-6)


def test_hard_cross_entropy_by_hand():
    logits = torch.tensor([[0.0, math.log(3)]])  # Q = [1/4, 3/4]
    assert hard_cross_entropy(logits, torch.tensor([1])).item() == pytest.approx(-math.log(0.75), rel=1e-6)


def test_unknown_loss_is_an_error():
    with pytest.raises(ValueError, match="unknown loss"):
        distribution_loss("mse", torch.zeros(1, 2), torch.zeros(1, 1, dtype=torch.long), torch.ones(1, 1))
