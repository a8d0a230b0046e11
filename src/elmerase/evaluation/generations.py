"""Generations side by side: the original model against each erased model on the same prompts.

Each prompt gets a greedy continuation and a sampled one (same seed for every model, so differences come from
the weights, not the dice).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, ContextManager, Sequence

from .fluency import SamplingSettings, generate


@dataclass
class GenerationSettings:
    """What the side-by-side table holds."""

    max_new_tokens: int = field(default=40, metadata={"help": "Tokens generated per prompt."})
    greedy: bool = field(default=True, metadata={"help": "Include a greedy continuation."})
    sampled: bool = field(default=True, metadata={"help": "Include a sampled continuation."})
    temperature: float = field(default=1.0, metadata={"help": "Temperature of the sampled continuation."})
    top_p: float = field(default=0.95, metadata={"help": "Nucleus mass of the sampled continuation."})
    seed: int = field(default=0, metadata={"help": "Seed of the sampled continuation (the same for every model)."})


def styles(settings: GenerationSettings) -> dict[str, SamplingSettings]:
    """'greedy' and/or 'sampled' -> the sampling settings that produce them."""
    base = SamplingSettings(max_new_tokens=settings.max_new_tokens, seed=settings.seed)
    out = {}
    if settings.greedy:
        out["greedy"] = replace(base, do_sample=False)
    if settings.sampled:
        out["sampled"] = replace(base, do_sample=True, temperature=settings.temperature, top_p=settings.top_p)
    return out


def generate_styles(model, tokenizer, prompts: Sequence[str], settings: GenerationSettings | None = None, *,
                    batch_size: int = 8, progress: bool = True) -> dict[str, list[str]]:
    """{'greedy': [...], 'sampled': [...]} continuations of ``prompts`` by one model."""
    settings = settings or GenerationSettings()
    return {style: generate(model, tokenizer, prompts, sampling, batch_size=batch_size, progress=progress)
            for style, sampling in styles(settings).items()}


def generate_side_by_side(model, tokenizer, prompts: Sequence[str],
                          variants: dict[str, Callable[[], ContextManager]] | None = None,
                          settings: GenerationSettings | None = None, *, batch_size: int = 8,
                          progress: bool = True) -> list[dict]:
    """One row per prompt: ``{"prompt": p, "original": {"greedy": .., "sampled": ..}, "<label>": {...}}``.

    ``variants`` maps a label to a function returning a context manager that puts ``model`` in that state,
    e.g. ``{"original": model.disable_adapter, "erased": contextlib.nullcontext}`` for a PeftModel. Without
    it a PeftModel gives "original" (adapter off) and "erased" (adapter on); any other model its own row.
    """
    variants = variants or _default_variants(model)
    rows = [{"prompt": p} for p in prompts]
    for label, activate in variants.items():
        with activate():
            outputs = generate_styles(model, tokenizer, prompts, settings, batch_size=batch_size, progress=progress)
        for i, row in enumerate(rows):
            row[label] = {style: texts[i] for style, texts in outputs.items()}
    return rows


def _default_variants(model) -> dict[str, Callable[[], ContextManager]]:
    from contextlib import nullcontext

    if hasattr(model, "disable_adapter"):
        return {"original": model.disable_adapter, "erased": nullcontext}
    return {"model": nullcontext}
