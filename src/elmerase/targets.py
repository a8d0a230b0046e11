"""Token sequences for the three losses and the frozen-model passes that give their targets.

Prefix and text are tokenized separately and their ids concatenated, so the text's tokens are identical in
the bare run (BOS + text) and the prefixed runs (BOS + prefix + text): bare position j is prefixed position
j + len(prefix) exactly (BOS, when the tokenizer uses one, appears once, at the start).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import ElmSettings
from .losses import elm_target_logits, eta_per_position, top_k_distribution

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def encode(tokenizer, text: str, max_tokens: int | None = None) -> list[int]:
    """Token ids of ``text`` without special tokens, cut to ``max_tokens``."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids[:max_tokens] if max_tokens else ids


@dataclass
class Batch:
    """Right-padded token rows; ``lengths`` are the real lengths."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    lengths: list[int]

    @classmethod
    def from_rows(cls, rows: list[list[int]], pad_id: int, device: torch.device | str = "cpu") -> "Batch":
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, : len(row)] = 1
        return cls(ids.to(device), mask.to(device), [len(r) for r in rows])

    def flat_positions(self) -> torch.Tensor:
        """Boolean [B, L] of real positions; ``logits[mask]`` flattens them row by row."""
        return self.attention_mask.bool()

    @property
    def n_tokens(self) -> int:
        return sum(self.lengths)


@dataclass
class EraseExample:
    """One erase text with its drawn expert and novice contexts, as token ids."""

    text: list[int]
    expert: list[int]
    novice: list[int]


def erase_rows(examples: list[EraseExample], bos: list[int]) -> tuple[list, list, list]:
    """Bare, expert-prefixed and novice-prefixed rows."""
    bare = [bos + ex.text for ex in examples]
    expert = [bos + ex.expert + ex.text for ex in examples]
    novice = [bos + ex.novice + ex.text for ex in examples]
    return bare, expert, novice


def aligned_rows(examples: list[EraseExample], bos: list[int],
                 offset: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, column) for every flattened bare position, in bare order.

    ``offset`` None gives the bare rows' own positions; 'expert' or 'novice' the prefixed rows', where bare
    position j of example i is column j + len(prefix_i).
    """
    rows, cols = [], []
    for i, ex in enumerate(examples):
        n = len(bos) + len(ex.text)
        shift = len(getattr(ex, offset)) if offset else 0
        rows += [i] * n
        cols += list(range(shift, shift + n))
    return torch.tensor(rows), torch.tensor(cols)


@torch.no_grad()
def frozen_logits(model, rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, Batch]:
    """Logits of the frozen model (call inside ``disable_adapter()``) on right-padded rows, one forward."""
    device = next(model.parameters()).device
    batch = Batch.from_rows(rows, pad_id, device)
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    return out.logits, batch


@torch.no_grad()
def erase_targets(model, examples: list[EraseExample], bos: list[int], pad_id: int,
                  elm: ElmSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """P' for every real position of the bare rows, as (indices [N, k], probs [N, k]).

    One forward over the bare, expert and novice rows together; then per position
    log_softmax(base / T) + eta_t * (log_softmax(novice / T) - log_softmax(expert / T)), top-k, softmax.
    """
    bare, expert, novice = erase_rows(examples, bos)
    logits, _ = frozen_logits(model, bare + expert + novice, pad_id)
    n = len(examples)
    dtype = DTYPES[elm.target_dtype]
    lengths = [len(r) for r in bare]
    base_flat = _gather(logits[:n], *aligned_rows(examples, bos))
    expert_flat = _gather(logits[n: 2 * n], *aligned_rows(examples, bos, "expert"))
    novice_flat = _gather(logits[2 * n:], *aligned_rows(examples, bos, "novice"))
    eta = eta_per_position(lengths, elm.eta, elm.eta_schedule, elm.eta_start, logits.device, dtype)
    indices, probs = [], []
    for chunk in _chunks(sum(lengths), rows_per_chunk(logits.shape[-1])):
        target = elm_target_logits(base_flat[chunk].to(dtype), expert_flat[chunk].to(dtype),
                                   novice_flat[chunk].to(dtype), eta[chunk], elm.temperature)
        idx, p = top_k_distribution(target, elm.top_k)
        indices.append(idx)
        probs.append(p.to(torch.float32))
    return torch.cat(indices), torch.cat(probs)


@torch.no_grad()
def retain_targets(model, rows: list[list[int]], pad_id: int, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen-model targets on retain rows: argmax labels (hard_ce) or the full distribution (soft_ce / kl).

    Returns (indices [N, k], probs [N, k]); for hard_ce k = 1 with probability 1.
    """
    logits, batch = frozen_logits(model, rows, pad_id)
    flat = logits[batch.flat_positions()]
    if kind == "hard_ce":
        labels = flat.argmax(-1, keepdim=True)
        return labels, torch.ones_like(labels, dtype=torch.float32)
    return top_k_distribution(flat.float(), 0)


def _gather(logits: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    return logits[rows.to(logits.device), cols.to(logits.device)]


def rows_per_chunk(vocab: int, budget: int = 2**26) -> int:
    """Positions per chunk so that a float64 [chunk, V] tensor stays near ``budget`` elements."""
    return max(1, budget // max(vocab, 1) // 4)


def _chunks(total: int, size: int):
    for start in range(0, total, size):
        yield slice(start, min(start + size, total))


@dataclass
class FluencyExample:
    """A fluency training sequence: prompt ids (BOS + text, then '. ' + deflection) and the continuation."""

    text: list[int]
    deflection: list[int]
    continuation: list[int]


def fluency_rows(examples: list[FluencyExample], bos: list[int]) -> tuple[list[list[int]], list[list[int]]]:
    """Rows and labels: hard-label CE on every token after the text (deflection and continuation).

    labels[i][j] is the token that position j predicts (row[j + 1]) or -100 where no loss is taken.
    """
    rows, labels = [], []
    for ex in examples:
        row = bos + ex.text + ex.deflection + ex.continuation
        start = len(bos) + len(ex.text)  # first token after the text
        lab = [-100] * len(row)
        for j in range(max(start - 1, 0), len(row) - 1):
            lab[j] = row[j + 1]
        rows.append(row)
        labels.append(lab)
    return rows, labels
