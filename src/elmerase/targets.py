"""Token sequences for the three losses and the frozen-model passes that give their targets.

Prefix and text are tokenized separately and their ids concatenated, so the text's tokens are identical in
the bare run (BOS + text) and the prefixed runs (BOS + prefix + text): bare position j is prefixed position
j + len(prefix) exactly (BOS, when the tokenizer uses one, appears once, at the start).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .config import ElmSettings
from .losses import elm_target_logits, eta_per_position, head_chunk_rows, top_k_distribution
from .passes import SplitModel, TemplateCache, decode, layer_input

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


# ------------------------------------------------------------------ the same targets from hidden states

@dataclass
class FrozenHidden:
    """Final hidden states of the frozen model at the positions that need logits, flattened in bare order.

    ``lower`` holds the hidden states entering the first LoRA layer for the bare (or retain) rows, right-padded as
    ``Batch.from_rows`` pads them, when a layer to capture was asked for.
    """

    rows: list[torch.Tensor]  # [base] or [base, expert, novice], each [N, H]
    lower: torch.Tensor | None


@torch.no_grad()
def frozen_erase_hidden(split: SplitModel, templates: TemplateCache | None, examples: list[EraseExample],
                        bos: list[int], pad_id: int, capture: int | None = None) -> FrozenHidden:
    """One frozen pass over the bare, expert and novice rows (call inside ``disable_adapter()``).

    With ``templates`` each prefixed row runs only from its aligned part on, after its prefix's cached keys and
    values; the three query rows of an example then have the bare row's length and align position by position.
    """
    n = len(examples)
    bare = [bos + ex.text for ex in examples]
    if templates is not None and templates.fits(max(max(len(ex.expert), len(ex.novice)) for ex in examples)):
        rows, prefixes = list(bare), [()] * n
        for name in ("expert", "novice"):
            for ex in examples:
                shift = len(getattr(ex, name))
                full = bos + getattr(ex, name) + ex.text
                rows.append(full[shift:])
                prefixes.append(tuple(full[:shift]))
        cache, prefix_mask = templates.batched(prefixes)
        batch = Batch.from_rows(rows, pad_id, prefix_mask.device)
        shifts = prefix_mask.sum(-1, keepdim=True)
        positions = shifts + torch.arange(batch.input_ids.shape[1], device=shifts.device)
        mask = torch.cat([prefix_mask, batch.attention_mask], dim=1)
        hidden, lower = _decode_capturing(split, capture, batch.input_ids, mask, positions, cache)
        flat = hidden[batch.flat_positions()]
        return FrozenHidden(list(flat.split(sum(len(r) for r in bare))), _rows_of(lower, bare))
    expert = [bos + ex.expert + ex.text for ex in examples]
    novice = [bos + ex.novice + ex.text for ex in examples]
    batch = Batch.from_rows(bare + expert + novice, pad_id, split.head.weight.device)
    hidden, lower = _decode_capturing(split, capture, batch.input_ids, batch.attention_mask)
    flat = [_gather(hidden[:n], *aligned_rows(examples, bos)),
            _gather(hidden[n: 2 * n], *aligned_rows(examples, bos, "expert")),
            _gather(hidden[2 * n:], *aligned_rows(examples, bos, "novice"))]
    return FrozenHidden(flat, _rows_of(lower, bare))


@torch.no_grad()
def frozen_hidden(split: SplitModel, rows: list[list[int]], pad_id: int, capture: int | None = None) -> FrozenHidden:
    """The frozen model's final hidden states at every real position of ``rows`` (one pass)."""
    batch = Batch.from_rows(rows, pad_id, split.head.weight.device)
    hidden, lower = _decode_capturing(split, capture, batch.input_ids, batch.attention_mask)
    return FrozenHidden([hidden[batch.flat_positions()]], _rows_of(lower, rows))


def _decode_capturing(split, capture, input_ids, mask, positions=None, cache=None):
    if capture is None:
        return decode(split, input_ids, mask, positions, cache), None
    with layer_input(split, capture) as box:
        hidden = decode(split, input_ids, mask, positions, cache)
    return hidden, box[0]


def _rows_of(lower: torch.Tensor | None, rows: list[list[int]]) -> torch.Tensor | None:
    """The first len(rows) rows of a captured tensor, cut to those rows' padded width."""
    if lower is None:
        return None
    return lower[: len(rows), : max(len(r) for r in rows)]


@torch.no_grad()
def erase_targets_from_hidden(split: SplitModel, frozen: FrozenHidden, lengths: list[int], elm: ElmSettings,
                              chunk: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """P' as in ``erase_targets``, with one LM-head product per position instead of three.

    The logits are linear in the final hidden states (z = W h + b), so z_base + eta * (z_novice - z_expert) =
    W (h_base + eta * (h_novice - h_expert)) + b; the log-softmax normalizers of the three terms are one constant
    per position, which the top-k softmax removes. The mix is formed in ``elm.target_dtype`` and the product in
    float32 (also under bf16 autocast: eta up to 1000 would amplify bf16 rounding).
    """
    h_base, h_expert, h_novice = frozen.rows
    weight, bias = split.head.weight, split.head.bias
    dtype = DTYPES[elm.target_dtype]
    eta = eta_per_position(lengths, elm.eta, elm.eta_schedule, elm.eta_start, weight.device, dtype)
    size = min(head_chunk_rows(weight.shape[0], chunk), rows_per_chunk(weight.shape[0]))
    indices, probs = [], []
    weight32, bias32 = weight.float(), None if bias is None else bias.float()  # no copy for a float32 model
    with torch.autocast(weight.device.type, enabled=False):
        for part in _chunks(h_base.shape[0], size):
            base, expert, novice = (h[part].to(dtype) for h in (h_base, h_expert, h_novice))
            mixed = base.add_(eta[part, None] * (novice - expert))
            scores = F.linear(mixed.float(), weight32, bias32).to(dtype)
            idx, p = top_k_distribution(scores.div_(elm.temperature), elm.top_k)
            indices.append(idx)
            probs.append(p.to(torch.float32))
    return torch.cat(indices), torch.cat(probs)


@torch.no_grad()
def retain_targets_from_hidden(split: SplitModel, hidden: torch.Tensor, kind: str,
                               chunk: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """As ``retain_targets``, from the frozen hidden states [N, H], a chunk of positions at a time."""
    weight, bias = split.head.weight, split.head.bias
    indices, probs = [], []
    for part in _chunks(hidden.shape[0], head_chunk_rows(weight.shape[0], chunk)):
        logits = F.linear(hidden[part], weight, bias)
        if kind == "hard_ce":
            labels = logits.argmax(-1, keepdim=True)
            indices.append(labels)
            probs.append(torch.ones_like(labels, dtype=torch.float32))
        else:
            idx, p = top_k_distribution(logits.float(), 0)
            indices.append(idx)
            probs.append(p)
    return torch.cat(indices), torch.cat(probs)


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
