"""Fluency of an erased model: reverse perplexity and repetition of its own continuations.

Reverse perplexity: the erased model continues concept prompts (sampling settings configurable); a reference
model (default: the original model) scores each continuation given its prompt; per-sample perplexity is
exp(-mean log-prob). An erased model that babbles gets a high reverse perplexity; one that loops on a phrase can
score low, so repetition is reported too: distinct-1/2 (unique word n-grams / all word n-grams, over all
samples) and the longest word n-gram that occurs twice in one sample (mean over samples).
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Sequence

import torch
from tqdm.auto import tqdm

from .scoring import Scorer, mean_stderr


@dataclass
class SamplingSettings:
    """How continuations are generated."""

    max_new_tokens: int = field(default=48, metadata={"help": "Tokens generated per continuation."})
    do_sample: bool = field(default=True, metadata={"help": "Sample (true) or greedy decoding (false)."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature."})
    top_p: float = field(default=0.95, metadata={"help": "Nucleus sampling mass (1 = off)."})
    top_k: int = field(default=0, metadata={"help": "Sample from the k most likely tokens (0 = off)."})
    samples_per_prompt: int = field(default=1, metadata={"help": "Continuations drawn per prompt."})
    seed: int = field(default=0, metadata={"help": "Seed of the sampling generator."})


@dataclass
class FluencyResult:
    reverse_ppl_mean: float
    reverse_ppl_stderr: float | None
    reverse_ppl_median: float
    distinct_1: float
    distinct_2: float
    longest_repeat: float  # mean over samples of the longest repeated word n-gram
    samples: list[dict] = field(default_factory=list)  # prompt, continuation, ppl, longest_repeat
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def generate(model, tokenizer, prompts: Sequence[str], settings: SamplingSettings | None = None, *,
             batch_size: int = 8, progress: bool = True) -> list[str]:
    """Continuations (text after the prompt) for each prompt, ``samples_per_prompt`` each, prompt-major."""
    settings = settings or SamplingSettings()
    expanded = [p for p in prompts for _ in range(settings.samples_per_prompt)]
    device = next(model.parameters()).device
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(settings.seed)
    out: list[str] = []
    try:
        for start in tqdm(range(0, len(expanded), batch_size), desc="generating", disable=not progress, leave=False):
            batch = tokenizer(expanded[start: start + batch_size], return_tensors="pt", padding=True).to(device)
            with torch.inference_mode():
                ids = model.generate(**batch, **_generate_kwargs(settings, tokenizer))
            new = ids[:, batch["input_ids"].shape[1]:]
            out += tokenizer.batch_decode(new, skip_special_tokens=True)
    finally:
        tokenizer.padding_side = side
        torch.random.set_rng_state(generator_state)
    return out


def _generate_kwargs(settings: SamplingSettings, tokenizer) -> dict:
    kwargs = {"max_new_tokens": settings.max_new_tokens, "do_sample": settings.do_sample,
              "pad_token_id": tokenizer.pad_token_id}
    if settings.do_sample:
        kwargs.update(temperature=settings.temperature, top_p=settings.top_p, top_k=settings.top_k or None)
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    return kwargs


def words(text: str) -> list[str]:
    return text.lower().split()


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Unique word n-grams / all word n-grams over ``texts`` (1.0 = no n-gram repeats; 0 when none)."""
    grams = [tuple(w[i: i + n]) for w in map(words, texts) for i in range(len(w) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def longest_repeated_ngram(text: str) -> int:
    """Length of the longest word n-gram that occurs at least twice in ``text`` (0 when no word repeats)."""
    tokens = words(text)
    best, n = 0, 1
    while n <= len(tokens) // 2 + 1:
        grams = [tuple(tokens[i: i + n]) for i in range(len(tokens) - n + 1)]
        if len(set(grams)) == len(grams):
            break  # no n-gram repeats, so no longer one can
        best, n = n, n + 1
    return best


def reverse_perplexity(ref_model, ref_tokenizer, prompts: Sequence[str], continuations: Sequence[str], *,
                       batch_size: int = 8, scorer: Scorer | None = None, progress: bool = True) -> list[float]:
    """Per-sample perplexity of each continuation given its prompt under the reference model."""
    scorer = scorer or Scorer(ref_model, ref_tokenizer, batch_size=batch_size, progress=progress)
    requests, keep = [], []
    for prompt, text in zip(prompts, continuations):
        ids = scorer.encode_continuation(text)
        keep.append(bool(ids))
        if ids:
            requests.append((scorer.encode_context(prompt), ids))
    scored = iter(scorer.score(requests, desc="reverse ppl") if requests else [])
    return [_ppl(next(scored)) if k else math.nan for k in keep]  # an empty continuation has no perplexity


def _ppl(scored) -> float:
    return math.exp(-scored.total / scored.n_tokens)


def summarize(prompts: Sequence[str], continuations: Sequence[str], ppls: Sequence[float],
              seconds: float = 0.0) -> FluencyResult:
    finite = [p for p in ppls if not math.isnan(p)]
    mean, err = mean_stderr(finite)
    repeats = [longest_repeated_ngram(t) for t in continuations]
    samples = [{"prompt": p, "continuation": c, "ppl": x, "longest_repeat": r}
               for p, c, x, r in zip(prompts, continuations, ppls, repeats)]
    return FluencyResult(reverse_ppl_mean=mean, reverse_ppl_stderr=err,
                         reverse_ppl_median=statistics.median(finite) if finite else math.nan,
                         distinct_1=distinct_n(continuations, 1), distinct_2=distinct_n(continuations, 2),
                         longest_repeat=sum(repeats) / len(repeats) if repeats else 0.0, samples=samples,
                         seconds=round(seconds, 3))


def fluency(model, tokenizer, prompts: Sequence[str], settings: SamplingSettings | None = None, *,
            ref_model=None, ref_tokenizer=None, batch_size: int = 8, progress: bool = True) -> FluencyResult:
    """Generate from ``model``, score with ``ref_model`` (default: ``model`` itself), measure repetition.

    For an adapter, generate with it on and score with it off: ``runner`` does this switching for you.
    """
    start = time.perf_counter()
    settings = settings or SamplingSettings()
    texts = generate(model, tokenizer, prompts, settings, batch_size=batch_size, progress=progress)
    expanded = [p for p in prompts for _ in range(settings.samples_per_prompt)]
    ppls = reverse_perplexity(ref_model or model, ref_tokenizer or tokenizer, expanded, texts,
                              batch_size=batch_size, progress=progress)
    return summarize(expanded, texts, ppls, time.perf_counter() - start)
