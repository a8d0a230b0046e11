"""Log-probability scoring core: batched, padded, BOS per model, and only the logits that are needed.

A request is (context ids, continuation ids); its score is log P(continuation token i | context, earlier
continuation tokens) for every continuation token, with each token's rank in the model's distribution.
Two ways to run the same numbers:

* ``prefix`` (several continuations share a context, as the choices of one question do): the contexts
  are run once, left-padded, keeping only the last position's logits and the KV cache; the continuations
  (minus their last token, whose logits predict nothing we need) then run on a copy of that cache.
* ``concat``: context + continuation in one left-padded row, keeping only the last ``c`` logits
  (``logits_to_keep``), so a 262k-token vocabulary costs ``[B, c, V]``, never ``[B, T, V]``.

Log-probs are ``logit[target] - logsumexp(logits)``: no full log-softmax tensor is kept.
"""

from __future__ import annotations

import copy
import inspect
import logging
import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch
from tqdm.auto import tqdm

from ..models import uses_bos

log = logging.getLogger(__name__)

Ids = tuple[int, ...]
PADDING_SLACK = 1.25  # a batch may hold at most 25% padding tokens


@dataclass(frozen=True)
class Scored:
    """Per-token log-probs and ranks (1 = the model's top token; empty unless asked for) of one continuation."""

    logprobs: tuple[float, ...]
    ranks: tuple[int, ...] = ()

    @property
    def total(self) -> float:
        return float(sum(self.logprobs))

    @property
    def n_tokens(self) -> int:
        return len(self.logprobs)


class Scorer:
    """Scores (context, continuation) requests on one model state, caching every result by its ids.

    Use one Scorer (or one ``cache`` dict) per model state: a PeftModel with its adapter on and the same
    model with the adapter off are two states.
    """

    def __init__(self, model, tokenizer, *, batch_size: int = 32, max_logits: int = 2 ** 27,
                 share_prefix: bool | None = None, progress: bool = True, cache: dict | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = max(1, int(batch_size))
        self.max_logits = max_logits  # float32 elements of one logits chunk (2**27 = 512 MiB)
        self.share_prefix = share_prefix
        self.progress = progress
        self.cache: dict[tuple[Ids, Ids], Scored] = {} if cache is None else cache
        self.ranks = False  # whether the pass under way computes ranks
        self.bos = [tokenizer.bos_token_id] if uses_bos(tokenizer) else []
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.vocab = _vocab_size(model)
        self.device = next(model.parameters()).device
        self.keeps_logits = _accepts(model, "logits_to_keep")
        self.cache_arg = "cache" if _accepts(model, "cache") else "past_key_values"  # transformers >= 5.2x: cache

    # ------------------------------------------------------------------ tokenization
    def encode_context(self, text: str) -> Ids:
        """The text's ids with the model's BOS first when its tokenizer adds one (Gemma needs it)."""
        return tuple(self.bos + self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def encode_continuation(self, text: str) -> Ids:
        """The text's ids with no special tokens: exactly the tokens that get scored."""
        return tuple(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    # ------------------------------------------------------------------ scoring
    def score(self, requests: Sequence[tuple[Sequence[int], Sequence[int]]], desc: str = "scoring",
              ranks: bool = False) -> list[Scored]:
        """Scores of ``requests`` in their order; repeated and cached requests are computed once.
        ``ranks``: also each token's rank (one more pass over the vocabulary per scored position)."""
        keys = [(tuple(c), tuple(x)) for c, x in requests]
        for context, continuation in keys:
            if not context or not continuation:
                raise ValueError("a scoring request needs a non-empty context and continuation; with a tokenizer "
                                 "that adds no BOS, give the first token as context")
        todo = list(dict.fromkeys(k for k in keys if k not in self.cache or (ranks and not self.cache[k].ranks)))
        self.ranks = ranks
        if todo:
            groups: dict[Ids, list[Ids]] = {}
            for context, continuation in todo:
                groups.setdefault(context, []).append(continuation)
            share = self.share_prefix
            if share is None:
                share = len(todo) >= 1.5 * len(groups)
            with torch.inference_mode():
                (self._run_prefix if share else self._run_concat)(groups, desc)
        return [self.cache[k] for k in keys]

    def _run_concat(self, groups: dict[Ids, list[Ids]], desc: str) -> None:
        todo = sorted(((c, x) for c, xs in groups.items() for x in xs), key=lambda r: -(len(r[0]) + len(r[1])))
        with tqdm(total=len(todo), desc=desc, disable=not self.progress, leave=False) as bar:
            for chunk in self._chunks(todo, lambda r: len(r[0]) + len(r[1]) - 1, lambda r: len(r[1])):
                keep = max(len(x) for _, x in chunk)
                rows = [list(c) + list(x[:-1]) for c, x in chunk]
                ids, mask = _pad(rows, self.pad_id, left=True)
                positions = (mask.cumsum(-1) - 1).clamp(min=0)
                logits = self._forward(ids, mask, positions, keep=keep)
                targets = [list(x) for _, x in chunk]
                for key, scored in zip(chunk, _gather(logits, targets, True, self.ranks)):
                    self.cache[key] = scored
                bar.update(len(chunk))

    def _run_prefix(self, groups: dict[Ids, list[Ids]], desc: str) -> None:
        contexts = sorted(groups, key=len, reverse=True)
        total = sum(len(v) for v in groups.values())
        with tqdm(total=total, desc=desc, disable=not self.progress, leave=False) as bar:
            for batch in self._chunks(contexts, len):
                self._prefix_batch(batch, groups)
                bar.update(sum(len(groups[c]) for c in batch))

    def _prefix_batch(self, contexts: list[Ids], groups: dict[Ids, list[Ids]]) -> None:
        ids, mask = _pad([list(c) for c in contexts], self.pad_id, left=True)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                         position_ids=positions.to(self.device), use_cache=True, **self._keep(1, ids.shape[1]))
        cache, lengths = getattr(out, "cache", None) or getattr(out, "past_key_values", None), mask.sum(-1)
        if cache is None:  # a model that returns no KV cache: score these rows whole
            log.debug("no KV cache from %s; scoring without prefix sharing", type(self.model).__name__)
            self._run_concat({c: groups[c] for c in contexts}, "scoring")
            return
        last = out.logits[:, -1:].float()  # predicts each continuation's first token
        rows = [(i, x) for i, c in enumerate(contexts) for x in groups[c]]
        firsts = _gather(last, [[x[0]] for _, x in rows], False, self.ranks, rows=[i for i, _ in rows])
        longer = sorted([(i, x, f) for (i, x), f in zip(rows, firsts) if len(x) > 1], key=lambda r: len(r[1]))
        for (i, x), first in zip(rows, firsts):
            if len(x) == 1:
                self.cache[(contexts[i], x)] = first
        for chunk in self._chunks(longer, lambda r: len(r[1]) - 1, lambda r: len(r[1]) - 1, 4 * self.batch_size):
            self._continue(chunk, contexts, cache, mask, lengths)

    def _continue(self, chunk, contexts, cache, ctx_mask, ctx_lengths) -> None:
        index = torch.tensor([i for i, _, _ in chunk], device=self.device)
        part = _select_rows(cache, index)
        ids, mask = _pad([list(x[:-1]) for _, x, _ in chunk], self.pad_id, left=False)
        full_mask = torch.cat([ctx_mask[index.cpu()], mask], dim=1)
        positions = ctx_lengths[index.cpu()].unsqueeze(1) + torch.arange(ids.shape[1]).unsqueeze(0)
        out = self.model(input_ids=ids.to(self.device), attention_mask=full_mask.to(self.device),
                         position_ids=positions.to(self.device), use_cache=True, **{self.cache_arg: part})
        rest = _gather(out.logits.float(), [list(x[1:]) for _, x, _ in chunk], False, self.ranks)
        for (i, x, first), tail in zip(chunk, rest):
            self.cache[(contexts[i], x)] = Scored(first.logprobs + tail.logprobs, first.ranks + tail.ranks)

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, keep: int) -> torch.Tensor:
        out = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                         position_ids=positions.to(self.device), use_cache=False, **self._keep(keep, ids.shape[1]))
        return out.logits[:, -keep:].float()

    def _keep(self, k: int, width: int) -> dict:
        """Logits of the last k positions only. Given as positions, not as the int k: an int slices the hidden
        states into a strided view that the LM head then multiplies row by row (about 10x slower on CPU)."""
        return {"logits_to_keep": torch.arange(width - k, width, device=self.device)} if self.keeps_logits else {}

    def _chunks(self, items: list, length, keep=None, rows_cap: int | None = None) -> Iterable[list]:
        """Consecutive runs of (sorted) ``items``: at most rows_cap rows, at most max_logits float32 logits
        (rows * keep * vocab), and at most 25% padding (rows * longest <= 1.25 * total length)."""
        cap = rows_cap or self.batch_size
        keep = keep or (lambda item: 1)
        chunk: list = []
        longest = widest = cells = 0
        for item in items:
            n, w = max(1, length(item)), max(1, keep(item))
            rows = len(chunk) + 1
            if chunk and (rows > cap or rows * max(widest, w) * self.vocab > self.max_logits
                          or rows * max(longest, n) > PADDING_SLACK * (cells + n)):
                yield chunk
                chunk, longest, widest, cells = [], 0, 0, 0
            chunk.append(item)
            longest, widest, cells = max(longest, n), max(widest, w), cells + n
        if chunk:
            yield chunk


def _select_rows(cache, index: torch.Tensor):
    """A cache holding only rows ``index`` of ``cache``, which stays untouched (layers copied shallowly)."""
    if hasattr(cache, "layers"):
        part = copy.copy(cache)
        part.layers = [copy.copy(layer) for layer in cache.layers]
    else:
        part = copy.deepcopy(cache)
    part.batch_select_indices(index)
    return part


def _pad(rows: list[list[int]], pad_id: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if not row:
            continue
        span = slice(width - len(row), width) if left else slice(0, len(row))
        ids[i, span] = torch.tensor(row, dtype=torch.long)
        mask[i, span] = 1
    return ids, mask


def _gather(logits: torch.Tensor, targets: list[list[int]], right_aligned: bool, with_ranks: bool,
            rows: list[int] | None = None) -> list[Scored]:
    """Log-probs (and ranks) of ``targets`` under ``logits`` [n, k, V]: target i reads logits row ``rows[i]``
    (default i) at k_i = len(targets[i]) positions, the last k_i (right_aligned) or the first k_i.
    The logsumexp runs once per logits row, however many targets share it."""
    _, k, _ = logits.shape
    row_index = torch.tensor(rows if rows is not None else range(len(targets)), device=logits.device)
    index = torch.zeros((len(targets), k), dtype=torch.long, device=logits.device)
    spans = [slice(k - len(t), k) if right_aligned else slice(0, len(t)) for t in targets]
    for i, (row, span) in enumerate(zip(targets, spans)):
        index[i, span] = torch.tensor(row, dtype=torch.long, device=logits.device)
    picked = logits[row_index[:, None], torch.arange(k, device=logits.device)[None, :], index]
    logprobs = (picked - torch.logsumexp(logits, dim=-1)[row_index]).cpu()
    ranks = ((logits[row_index] > picked.unsqueeze(-1)).sum(-1) + 1).cpu() if with_ranks else None
    return [Scored(tuple(logprobs[i, span].tolist()), tuple(ranks[i, span].tolist()) if with_ranks else ())
            for i, span in enumerate(spans)]


def _base(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _accepts(model, name: str) -> bool:
    try:
        return name in inspect.signature(_base(model).forward).parameters
    except (TypeError, ValueError):
        return False


def _vocab_size(model) -> int:
    head = _base(model).get_output_embeddings()
    if head is not None and hasattr(head, "weight"):
        return int(head.weight.shape[0])
    return int(model.config.vocab_size)


def mean_stderr(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and its standard error sqrt(s^2 / n), s^2 with n - 1 (as lm-eval); stderr None below 2 values."""
    n = len(values)
    if n == 0:
        return math.nan, None
    mean = sum(values) / n
    if n < 2:
        return mean, None
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)
