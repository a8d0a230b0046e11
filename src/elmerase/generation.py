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

log = logging.getLogger(__name__)


def guided_scores(base: torch.Tensor, expert: torch.Tensor | None, novice: torch.Tensor | None,
                  gamma: float) -> torch.Tensor:
    """log_softmax(base) - gamma * (log_softmax(expert) - log_softmax(novice)), in float32."""
    scores = F.log_softmax(base.float(), dim=-1)
    if gamma == 0 or expert is None:
        return scores
    return scores - gamma * (F.log_softmax(expert.float(), dim=-1) - F.log_softmax(novice.float(), dim=-1))


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


def _forward(model, ids, mask, cache=None):
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    if cache is not None:
        positions = positions[:, -ids.shape[1]:]
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True)
    return out.logits[:, -1], out.past_key_values


@torch.inference_mode()
def guided_sample(model, requests: list[GenerationRequest], gamma: float, pad_id: int,
                  eos_id: int | None = None, use_cache: bool = True) -> list[list[int]]:
    """Sample one continuation per request; the streams of all requests run in one batch per step.

    With ``use_cache=False`` every step re-encodes the full streams (slow; the test reference).
    """
    device = next(model.parameters()).device
    n = len(requests)
    guided = gamma != 0
    streams = [r.prompt for r in requests]
    if guided:
        streams += [r.expert for r in requests] + [r.novice for r in requests]
    generators = [torch.Generator().manual_seed(r.seed) for r in requests]
    ids, mask = _left_pad(streams, pad_id, device)
    logits, cache = _forward(model, ids, mask)
    outputs: list[list[int]] = [[] for _ in requests]
    done = [r.max_new_tokens <= 0 for r in requests]
    while not all(done):
        scores = guided_scores(logits[:n], logits[n:2 * n] if guided else None,
                               logits[2 * n:] if guided else None, gamma)
        probs = torch.softmax(scores, dim=-1).cpu()
        step = torch.full((n,), pad_id, dtype=torch.long)
        for i in range(n):
            if done[i]:
                continue
            token = int(torch.multinomial(probs[i], 1, generator=generators[i]))
            step[i] = token
            outputs[i].append(token)
            done[i] = token == eos_id or len(outputs[i]) >= requests[i].max_new_tokens
        if all(done):
            break
        step_ids = step.repeat(3 if guided else 1).to(device)[:, None]
        ids = torch.cat([ids, step_ids], dim=1)
        mask = torch.cat([mask, torch.ones_like(step_ids)], dim=1)
        if use_cache:
            logits, cache = _forward(model, step_ids, mask, cache)
        else:
            logits, _ = _forward(model, ids, mask)
    return [out[:-1] if out and out[-1] == eos_id else out for out in outputs]


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
