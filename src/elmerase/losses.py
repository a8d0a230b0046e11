"""The ELM target and losses as pure tensor functions (Gandikota et al. 2024, arXiv 2410.02760).

Positions are flattened: every function works on ``[N, V]`` rows, one per real (non-padding) token position.
A target distribution is kept sparse as ``(indices [N, k], probs [N, k])``; the full vocabulary is k = V.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def eta_per_position(lengths: list[int], eta: float, schedule: str = "constant", eta_start: float = 1.0,
                     device: torch.device | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """eta for each flattened position: constant, or a linear ramp eta_start -> eta over each text's positions.

    The ramp restarts for every text (the reference code ramps over one text at a time, batch size 1).
    """
    parts = []
    for n in lengths:
        if schedule == "linear":
            parts.append(torch.linspace(eta_start, eta, n, dtype=torch.float64))
        else:
            parts.append(torch.full((n,), float(eta), dtype=torch.float64))
    return torch.cat(parts).to(device=device, dtype=dtype)


def elm_target_logits(logits_base: torch.Tensor, logits_expert: torch.Tensor, logits_novice: torch.Tensor,
                      eta: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log P(x_t) + eta_t * (log P(x_t | c+) - log P(x_t | c-)), each term a log-softmax of logits / T.

    c+ is the novice context, c- the expert context: mass moves from what an expert would say to what a
    novice would say. Computed in the dtype of the inputs (call with float32 or float64).
    """
    logp_base = F.log_softmax(logits_base / temperature, dim=-1)
    logp_expert = F.log_softmax(logits_expert / temperature, dim=-1)
    logp_novice = F.log_softmax(logits_novice / temperature, dim=-1)
    return logp_base + eta[:, None] * (logp_novice - logp_expert)


def top_k_distribution(target_logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the k largest logits per row (the rest -inf) and softmax: P' as (indices, probs).

    k = 0 or k >= V keeps the whole vocabulary.
    """
    vocab = target_logits.shape[-1]
    if k <= 0 or k >= vocab:
        probs = torch.softmax(target_logits, dim=-1)
        indices = torch.arange(vocab, device=target_logits.device).expand_as(probs)
        return indices, probs
    values, indices = torch.topk(target_logits, k, dim=-1)
    return indices, torch.softmax(values, dim=-1)


def soft_cross_entropy(logits: torch.Tensor, indices: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """Per-row H(P', Q) = -sum_j P'_j log Q_j with Q = softmax(logits), P' sparse on ``indices``.

    Uses log Q_j = logits_j - logsumexp(logits), so no [N, V] log-softmax copy is made:
    H = sum_j P'_j * logsumexp(logits) - sum_j P'_j * logits_j.
    """
    logits = logits.float()
    probs = probs.to(logits.dtype)
    lse = torch.logsumexp(logits, dim=-1)
    picked = logits.gather(-1, indices)
    return lse * probs.sum(-1) - (probs * picked).sum(-1)


def kl_divergence(logits: torch.Tensor, indices: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """Per-row KL(P' || Q) = H(P', Q) - H(P'); same gradient as the cross-entropy."""
    p = probs.to(torch.float32)
    entropy = -(p * torch.log(p.clamp_min(1e-30))).sum(-1)
    return soft_cross_entropy(logits, indices, probs) - entropy


def hard_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-row -log Q(label)."""
    return F.cross_entropy(logits.float(), labels, reduction="none")


def distribution_loss(kind: str, logits: torch.Tensor, indices: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """Mean over rows of 'ce' / 'soft_ce' (cross-entropy) or 'kl' against a (sparse) target distribution."""
    if kind in ("ce", "soft_ce"):
        return soft_cross_entropy(logits, indices, probs).mean()
    if kind == "kl":
        return kl_divergence(logits, indices, probs).mean()
    raise ValueError(f"unknown loss '{kind}': use ce, soft_ce or kl")


def head_chunk_rows(vocab: int, chunk: int = 0, budget: int = 2**24) -> int:
    """Positions per LM-head chunk: ``chunk`` when given, else so that a float32 [rows, V] block is ~64 MB."""
    return chunk if chunk > 0 else max(1, budget // max(vocab, 1))


def _chunked_head_loss(ctx, hidden, weight, bias, chunk, block) -> torch.Tensor:
    """mean_i L(z_i), z = W h + b, over N rows of ``hidden``, a [chunk, V] block of logits at a time.

    ``block(rows, z, want_grad)`` returns the chunk's summed loss and, when asked, dL/dz [chunk, V] of the mean (the
    per-row gradient divided by N); dL/dh = (dL/dz) W is computed here in the forward pass and saved for
    ``backward`` (W gets no gradient: the LM head is frozen).
    """
    n = hidden.shape[0]
    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    grad = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
    for start in range(0, n, chunk):
        rows = slice(start, min(start + chunk, n))
        loss, dz = block(rows, F.linear(hidden[rows], weight, bias).float(), grad is not None)
        total += loss
        if grad is not None:
            grad[rows] = (dz.to(weight.dtype) @ weight).to(hidden.dtype)
    ctx.save_for_backward(grad)
    return total / n


def _saved_grad(ctx, grad_output):
    """The backward of a ``_chunked_head_loss`` function of six inputs: dL/dh scaled, nothing for the others."""
    (grad,) = ctx.saved_tensors
    return grad * grad_output.to(grad.dtype), None, None, None, None, None


class _FusedHeadCrossEntropy(torch.autograd.Function):
    """mean_i H(P'_i, softmax(W h_i + b)) over N positions, chunked (``_chunked_head_loss``).

    Per row, with Q = softmax(z), z = W h + b and P' sparse on ``indices`` (sum s = sum_j P'_j):
    L = s * logsumexp(z) - sum_j P'_j z_j  and  dL/dz = s * Q - P' (scattered).
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, indices, probs, chunk):
        n = hidden.shape[0]

        def block(rows, logits, want_grad):
            p = probs[rows].to(torch.float32)
            lse = torch.logsumexp(logits, dim=-1)
            mass = p.sum(-1)
            loss = (lse * mass - (p * logits.gather(-1, indices[rows])).sum(-1)).sum()
            if not want_grad:
                return loss, None
            dz = torch.exp(logits - lse[:, None]).mul_(mass[:, None] / n)
            return loss, dz.scatter_add_(-1, indices[rows], -p / n)

        return _chunked_head_loss(ctx, hidden, weight, bias, chunk, block)

    backward = staticmethod(_saved_grad)


def fused_head_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                             indices: torch.Tensor, probs: torch.Tensor, chunk: int = 0) -> torch.Tensor:
    """``soft_cross_entropy(F.linear(hidden, weight, bias), indices, probs).mean()`` without the [N, V] logits.

    ``hidden`` [N, H] are the final hidden states at the loss positions; hard labels are k = 1 with probability 1.
    Same value and same gradient with respect to ``hidden`` as the plain form (tests/test_equivalence.py).
    """
    if hidden.shape[0] == 0:
        raise ValueError("fused_head_cross_entropy needs at least one position")
    rows = head_chunk_rows(weight.shape[0], chunk)
    return _FusedHeadCrossEntropy.apply(hidden, weight, bias, indices, probs, rows)


def fused_kl_divergence(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                        indices: torch.Tensor, probs: torch.Tensor, chunk: int = 0) -> torch.Tensor:
    """Mean KL(P' || Q) = cross-entropy - H(P'); the entropy term has no gradient."""
    p = probs.to(torch.float32)
    entropy = -(p * torch.log(p.clamp_min(1e-30))).sum(-1).mean()
    return fused_head_cross_entropy(hidden, weight, bias, indices, probs, chunk) - entropy


class _FusedTeacherCrossEntropy(torch.autograd.Function):
    """mean_i H(P_i, Q_i) (or KL) with both distributions over the whole vocabulary given by final hidden states:
    P = softmax(W t + b) of the frozen teacher, Q = softmax(W h + b) of the student; chunked like the sparse form.

    Per row: H = -sum_j P_j log Q_j, KL = sum_j P_j (log P_j - log Q_j), dL/dz = Q - P.
    Only [chunk, V] blocks of the two logits live at a time: no [N, V] target is stored between passes.
    """

    @staticmethod
    def forward(ctx, hidden, teacher, weight, bias, kl, chunk):
        n = hidden.shape[0]

        def block(rows, logits, want_grad):
            log_q = F.log_softmax(logits, dim=-1)
            log_p = F.log_softmax(F.linear(teacher[rows], weight, bias).float(), dim=-1)
            p = log_p.exp()
            # KL term by term (log p - log q), not H(P, Q) - H(P): exact zero for equal models, no cancellation
            loss = (p * (log_p - log_q if kl else -log_q)).sum()
            return loss, log_q.exp_().sub_(p).div_(n) if want_grad else None

        return _chunked_head_loss(ctx, hidden, weight, bias, chunk, block)

    backward = staticmethod(_saved_grad)


def fused_teacher_loss(kind: str, hidden: torch.Tensor, teacher: torch.Tensor, weight: torch.Tensor,
                       bias: torch.Tensor | None, chunk: int = 0) -> torch.Tensor:
    """Mean soft CE ('soft_ce' / 'ce') or KL ('kl') of the student's head on ``hidden`` [N, H] against the frozen
    model's full distribution on ``teacher`` [N, H] (the same positions): the paper's retain loss, without [N, V]
    targets. Equals ``distribution_loss(kind, W h + b, all ids, softmax(W t + b))`` in value and gradient."""
    if kind not in ("ce", "soft_ce", "kl"):
        raise ValueError(f"unknown loss '{kind}': use ce, soft_ce or kl")
    if hidden.shape[0] == 0:
        raise ValueError("fused_teacher_loss needs at least one position")
    rows = head_chunk_rows(weight.shape[0], chunk)
    return _FusedTeacherCrossEntropy.apply(hidden, teacher, weight, bias, kind == "kl", rows)


def fused_distribution_loss(kind: str, hidden, weight, bias, indices, probs, chunk: int = 0) -> torch.Tensor:
    """The fused counterpart of ``distribution_loss``."""
    if kind in ("ce", "soft_ce"):
        return fused_head_cross_entropy(hidden, weight, bias, indices, probs, chunk)
    if kind == "kl":
        return fused_kl_divergence(hidden, weight, bias, indices, probs, chunk)
    raise ValueError(f"unknown loss '{kind}': use ce, soft_ce or kl")
