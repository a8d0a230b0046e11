"""Guided sampling of the fluency continuations from the frozen model: batched, KV-cached, cached on disk.

At each step, with the base stream (prompt + generated tokens) and two guidance streams (the expert and the
novice context, without the trailing ':\\n', followed by the generated tokens only):

    scores = log_softmax(base) - gamma * (log_softmax(expert) - log_softmax(novice))

and the next token is drawn from softmax(scores). gamma = 0 is plain sampling from the frozen model.
Each row draws from its own seeded generator, so a continuation does not depend on what else is in the batch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from .passes import decode, split_model

log = logging.getLogger(__name__)


def guided_scores(base: torch.Tensor, expert: torch.Tensor | None, novice: torch.Tensor | None,
                  gamma: float) -> torch.Tensor:
    """log_softmax(base) - gamma * (log_softmax(expert) - log_softmax(novice)), in float32."""
    scores = F.log_softmax(base.float(), dim=-1)
    if gamma == 0 or expert is None:
        return scores
    return scores - gamma * (F.log_softmax(expert.float(), dim=-1) - F.log_softmax(novice.float(), dim=-1))


def nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep each row's most likely tokens up to ``top_p`` of the mass (a token stays while the mass of the tokens
    above it is below top_p, as transformers' top-p warper), renormalized; top_p >= 1 changes nothing."""
    if top_p >= 1.0:
        return probs
    ordered, order = probs.sort(dim=-1, descending=True)
    ordered = ordered.masked_fill(ordered.cumsum(-1) - ordered >= top_p, 0.0)
    kept = torch.zeros_like(probs).scatter_(-1, order, ordered)
    return kept / kept.sum(-1, keepdim=True)


@dataclass
class GenerationRequest:
    """One continuation to sample: the prompt, the two guidance contexts, the length and the seed."""

    prompt: list[int]
    expert: list[int]
    novice: list[int]
    max_new_tokens: int
    seed: int


def _left_pad(rows: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
        mask[i, width - len(row):] = 1
    return ids.to(device), mask.to(device)


def _forward(model, ids, mask, cache=None, split=None, keep_cache=True):
    """The last position's logits (or, with ``split``, its final hidden states) and the updated cache."""
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    if cache is not None:
        positions = positions[:, -ids.shape[1]:]
    if split is not None:
        if cache is None and keep_cache:
            cache = DynamicCache(config=split.decoder.config)
        return decode(split, ids, mask, positions, cache)[:, -1], cache
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=keep_cache,
                logits_to_keep=1)
    return out.logits[:, -1], out.cache


def mixed_guided_scores(split, base: torch.Tensor, expert: torch.Tensor, novice: torch.Tensor,
                        gamma: float) -> torch.Tensor:
    """``guided_scores`` from the streams' final hidden states with one LM-head product instead of three.

    The logits are linear in the hidden states, so z_base - gamma * (z_expert - z_novice) = W (h_base - gamma *
    (h_expert - h_novice)) + b, and the log-softmax normalizers are one constant per row: the result is
    ``guided_scores`` normalized, the same sampling distribution (tests/test_equivalence.py).
    """
    head = split.head
    mixed = base.float() - gamma * (expert.float() - novice.float())
    return F.log_softmax(F.linear(mixed.to(head.weight.dtype), head.weight, head.bias).float(), dim=-1)


@torch.inference_mode()
def guided_sample(model, requests: list[GenerationRequest], gamma: float, pad_id: int,
                  eos_id: int | None = None, use_cache: bool = True, fused: bool = True,
                  top_p: float = 1.0) -> list[list[int]]:
    """Sample one continuation per request; the streams of all requests run in one batch per step.

    Each token is drawn from softmax of the guided scores, cut to its ``top_p`` nucleus when top_p < 1.

    A request that is done leaves the batch (its rows and cache entries are dropped), so a batch costs what its
    live rows need. With ``fused`` (and a supported architecture) the three streams' hidden states are mixed
    before one LM-head product (``mixed_guided_scores``). With ``use_cache=False`` every step re-encodes the full
    streams (slow; the test reference).
    """
    device = next(model.parameters()).device
    streams_per = 3 if gamma != 0 else 1
    split = split_model(model) if fused and streams_per == 3 else None
    streams = [r.prompt for r in requests]
    if streams_per == 3:
        streams += [r.expert for r in requests] + [r.novice for r in requests]
    generators = [torch.Generator().manual_seed(r.seed) for r in requests]
    ids, mask = _left_pad(streams, pad_id, device)
    logits, cache = _forward(model, ids, mask, split=split, keep_cache=use_cache)
    outputs: list[list[int]] = [[] for _ in requests]
    live = [i for i, r in enumerate(requests) if r.max_new_tokens > 0]
    if len(live) < len(requests):
        ids, mask, logits, cache = _keep_rows(live, len(requests), streams_per, ids, mask, logits, cache)
    while live:
        n = len(live)
        now = _streams(logits, n, streams_per)
        scores = guided_scores(*now, gamma) if split is None else mixed_guided_scores(split, *now, gamma)
        probs = nucleus(torch.softmax(scores, dim=-1), top_p).cpu()
        step = torch.empty(n, dtype=torch.long)
        for j, i in enumerate(live):
            step[j] = int(torch.multinomial(probs[j], 1, generator=generators[i]))
            outputs[i].append(int(step[j]))
        keep = [j for j, i in enumerate(live)
                if int(step[j]) != eos_id and len(outputs[i]) < requests[i].max_new_tokens]
        step_ids = step.repeat(streams_per).to(device)[:, None]
        ids = torch.cat([ids, step_ids], dim=1)
        mask = torch.cat([mask, torch.ones_like(step_ids)], dim=1)
        if len(keep) < n:
            ids, mask, step_ids, cache = _keep_rows(keep, n, streams_per, ids, mask, step_ids, cache)
            live = [live[j] for j in keep]
        if not live:
            break
        if use_cache:
            logits, cache = _forward(model, step_ids, mask, cache, split)
        else:
            logits, _ = _forward(model, ids, mask, split=split, keep_cache=False)
    return [out[:-1] if out and out[-1] == eos_id else out for out in outputs]


def _streams(logits: torch.Tensor, n: int, streams_per: int):
    """(base, expert, novice) logits of the n live requests; expert and novice None without guidance."""
    if streams_per == 1:
        return logits, None, None
    return logits[:n], logits[n: 2 * n], logits[2 * n:]


def _keep_rows(keep: list[int], n: int, streams_per: int, ids, mask, last, cache):
    """Keep the rows of requests ``keep`` (positions among the n live ones) in every stream and in the cache."""
    rows = torch.tensor([s * n + j for s in range(streams_per) for j in keep], dtype=torch.long, device=ids.device)
    if cache is not None:
        cache.batch_select_indices(rows)
    return ids[rows], mask[rows], last[rows], cache


# ------------------------------------------------------------------ on-disk cache

def default_cache_dir() -> Path:
    root = os.environ.get("ELMERASE_CACHE") or Path.home() / ".cache" / "elmerase"
    return Path(root) / "fluency"


def model_fingerprint(model) -> str:
    """A short hash of the model's name, config and a sample of its weights (cheap, catches other weights)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    h = hashlib.sha256()
    h.update(str(getattr(base.config, "name_or_path", "")).encode())
    h.update(base.config.to_json_string(use_diff=False).encode())
    params = list(base.parameters())
    for p in (params[0], params[len(params) // 2], params[-1]):
        h.update(p.detach().flatten()[:4096].float().cpu().numpy().tobytes())
    h.update(str(params[0].dtype).encode())
    return h.hexdigest()[:16]


class ContinuationCache:
    """One JSON file per continuation, named by the hash of everything that determines it."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    @staticmethod
    def key(**fields) -> str:
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:32]

    def get(self, key: str) -> list[int] | None:
        path = self.folder / f"{key}.json"
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text())["continuation"]
        except (ValueError, KeyError):
            log.warning("ignoring unreadable cache entry %s", path)
            return None

    def put(self, key: str, continuation: list[int], text: str) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f".{key}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps({"continuation": continuation, "text": text}))
        tmp.replace(self.folder / f"{key}.json")
