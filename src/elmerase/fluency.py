"""The fluency set: for each erase text, a deflection and a guided continuation, generated once and cached."""

from __future__ import annotations

import hashlib
import logging
import random
from pathlib import Path

from tqdm.auto import tqdm

from .config import FluencySettings
from .generation import ContinuationCache, GenerationRequest, default_cache_dir, guided_sample, model_fingerprint
from .prompts import PromptBank, guidance_prefix
from .targets import FluencyExample, encode

log = logging.getLogger(__name__)


def text_seed(run_seed: int, text: str) -> int:
    """A per-text seed, so a text's draws do not depend on its position in the data or the batch."""
    digest = hashlib.sha256(f"{run_seed}\x00{text}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFFFFFFFFFFFFFF


def build_fluency_set(model, tokenizer, texts: list[str], text_ids: list[list[int]], concept: str,
                      bank: PromptBank, settings: FluencySettings, bos: list[int], run_seed: int,
                      progress: bool = True, fused: bool = True) -> list[FluencyExample]:
    """One FluencyExample per erase text; continuations come from the cache or are sampled in batches.

    Call with the adapter disabled (the frozen model generates). The prompt is BOS + text + '. ' + deflection;
    the guidance contexts are a drawn expert / novice template without its trailing ':\\n'.
    """
    cache = ContinuationCache(Path(settings.cache_dir) if settings.cache_dir else default_cache_dir())
    fingerprint = model_fingerprint(model)
    plans = []
    for text, ids in zip(texts, text_ids):
        seed = text_seed(run_seed, text)
        rng = random.Random(seed)
        contexts = bank.draw_contexts(rng, concept)
        deflection = bank.draw_deflection(rng)
        length = rng.randint(settings.min_new_tokens, settings.max_new_tokens)
        deflection_ids = encode(tokenizer, ". " + deflection)
        request = GenerationRequest(
            prompt=bos + ids + deflection_ids,
            expert=bos + encode(tokenizer, guidance_prefix(contexts.expert)),
            novice=bos + encode(tokenizer, guidance_prefix(contexts.novice)),
            max_new_tokens=length, seed=seed)
        key = cache.key(model=fingerprint, concept=concept, prompt=request.prompt, expert=request.expert,
                        novice=request.novice, gamma=settings.gamma, length=length, seed=seed,
                        **({"top_p": settings.top_p} if settings.top_p < 1.0 else {}))
        plans.append((key, ids, deflection_ids, request))
    missing = [p for p in plans if cache.get(p[0]) is None]
    if missing:
        log.info("generating %d fluency continuations (%d cached)", len(missing), len(plans) - len(missing))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    bar = tqdm(total=len(missing), desc="fluency generation", unit="text", disable=not progress)
    # similar continuation and prompt lengths together: rows finish together, little padding
    order = sorted(missing, key=lambda p: (p[3].max_new_tokens, len(p[3].prompt)))
    for start in range(0, len(order), settings.batch_size):
        chunk = order[start: start + settings.batch_size]
        outs = guided_sample(model, [p[3] for p in chunk], settings.gamma, pad, tokenizer.eos_token_id,
                             fused=fused, top_p=settings.top_p)
        for (key, *_), out in zip(chunk, outs):
            cache.put(key, out, tokenizer.decode(out))
        bar.update(len(chunk))
    bar.close()
    return [FluencyExample(text=ids, deflection=defl, continuation=cache.get(key))
            for key, ids, defl, _ in plans]
