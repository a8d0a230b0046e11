"""Guided sampling: the formula, gamma = 0 as plain sampling, KV cache, batching, and the disk cache."""

import math

import pytest
import torch

from elmerase.config import FluencySettings
from elmerase.fluency import build_fluency_set
from elmerase.generation import ContinuationCache, GenerationRequest, guided_sample, guided_scores, nucleus
from elmerase.prompts import PromptBank
from elmerase.targets import encode


def test_guided_scores_by_hand():
    """V = 2: base logits [0, 0] -> log 1/2 each; expert [ln 3, 0] -> [ln 3/4, ln 1/4]; novice [0, ln 3] ->
    [ln 1/4, ln 3/4]. gamma = 1: token 0 gets ln 1/2 - (ln 3/4 - ln 1/4) = ln 1/2 - ln 3."""
    base = torch.tensor([[0.0, 0.0]])
    expert = torch.tensor([[math.log(3), 0.0]])
    novice = torch.tensor([[0.0, math.log(3)]])
    got = guided_scores(base, expert, novice, gamma=1.0)[0]
    assert got.tolist() == pytest.approx([math.log(0.5) - math.log(3), math.log(0.5) + math.log(3)], abs=1e-6)
    assert guided_scores(base, expert, novice, gamma=0.0)[0].tolist() == pytest.approx([math.log(0.5)] * 2)


def _requests(tokenizer, seeds=(7, 8), lengths=(6, 4)):
    prompts = ["Harry Potter went to", "The capital of France is a city"]
    return [GenerationRequest(prompt=[1] + encode(tokenizer, p), expert=[1] + encode(tokenizer, "An expert wrote"),
                              novice=[1] + encode(tokenizer, "A novice who knows nothing"),
                              max_new_tokens=n, seed=s)
            for p, s, n in zip(prompts, seeds, lengths)]


def test_gamma_zero_equals_plain_sampling_with_same_seed(tiny_model, tokenizer):
    """With gamma = 0 the sampler draws exactly what transformers' generate(do_sample=True) draws with the same seed."""
    req = _requests(tokenizer)[0]
    ours = guided_sample(tiny_model, [req], gamma=0.0, pad_id=tokenizer.pad_token_id, eos_id=None)[0]
    torch.manual_seed(req.seed)
    hf = tiny_model.generate(torch.tensor([req.prompt]), attention_mask=torch.ones(1, len(req.prompt), dtype=torch.long),
                             do_sample=True, top_k=0, top_p=1.0, temperature=1.0, max_new_tokens=req.max_new_tokens,
                             min_new_tokens=req.max_new_tokens, pad_token_id=tokenizer.pad_token_id)
    assert ours == hf[0, len(req.prompt):].tolist()


def test_nucleus_by_hand():
    """Rows in any order; a token stays while the mass above it is below top_p. [.15, .5, .05, .3] at 0.8 keeps .5 and
    .3 (mass above .15 is exactly 0.8) -> [0, .625, 0, .375]; at 0.81 it keeps .15 too -> /0.95; 1.0 changes nothing."""
    probs = torch.tensor([[0.15, 0.5, 0.05, 0.3]])
    assert nucleus(probs, 0.8)[0].tolist() == pytest.approx([0.0, 0.625, 0.0, 0.375])
    assert nucleus(probs, 0.81)[0].tolist() == pytest.approx([0.15 / 0.95, 0.5 / 0.95, 0.0, 0.3 / 0.95])
    assert nucleus(probs, 0.2)[0].tolist() == pytest.approx([0.0, 1.0, 0.0, 0.0])
    assert torch.equal(nucleus(probs, 1.0), probs)


def test_top_p_equals_transformers_top_p_sampling(tiny_model, tokenizer):
    """gamma = 0 with top_p = 0.9 draws what generate(do_sample=True, top_p=0.9) draws with the same seed."""
    req = _requests(tokenizer, lengths=(12, 4))[0]
    ours = guided_sample(tiny_model, [req], gamma=0.0, pad_id=tokenizer.pad_token_id, eos_id=None, top_p=0.9)[0]
    torch.manual_seed(req.seed)
    hf = tiny_model.generate(torch.tensor([req.prompt]), attention_mask=torch.ones(1, len(req.prompt), dtype=torch.long),
                             do_sample=True, top_k=0, top_p=0.9, temperature=1.0, max_new_tokens=req.max_new_tokens,
                             min_new_tokens=req.max_new_tokens, pad_token_id=tokenizer.pad_token_id)
    assert ours == hf[0, len(req.prompt):].tolist()
    assert ours != guided_sample(tiny_model, [req], gamma=0.0, pad_id=tokenizer.pad_token_id, eos_id=None)[0]


def test_kv_cached_streams_equal_uncached(tiny_model, tokenizer):
    reqs = _requests(tokenizer)
    cached = guided_sample(tiny_model, reqs, 3.0, tokenizer.pad_token_id, use_cache=True)
    uncached = guided_sample(tiny_model, reqs, 3.0, tokenizer.pad_token_id, use_cache=False)
    assert cached == uncached
    assert [len(c) for c in cached] == [6, 4]


def test_batch_does_not_change_a_continuation(tiny_model, tokenizer):
    reqs = _requests(tokenizer)
    together = guided_sample(tiny_model, reqs, 3.0, tokenizer.pad_token_id)
    alone = [guided_sample(tiny_model, [r], 3.0, tokenizer.pad_token_id)[0] for r in reqs]
    assert together == alone


def test_guidance_changes_the_samples(tiny_model, tokenizer):
    req = _requests(tokenizer, lengths=(12, 12))
    plain = guided_sample(tiny_model, req, 0.0, tokenizer.pad_token_id)
    guided = guided_sample(tiny_model, req, 50.0, tokenizer.pad_token_id)
    assert plain != guided


def test_fluency_set_is_cached_on_disk(tiny_model, tokenizer, tmp_path, monkeypatch):
    texts = ["Harry Potter went to Hogwarts.", "Dumbledore is the headmaster."]
    ids = [encode(tokenizer, t) for t in texts]
    settings = FluencySettings(min_new_tokens=3, max_new_tokens=5, cache_dir=str(tmp_path))
    args = (tiny_model, tokenizer, texts, ids, "Harry Potter", PromptBank(), settings, [1], 0)
    first = build_fluency_set(*args, progress=False)
    assert len(list(tmp_path.glob("*.json"))) == 2
    assert all(3 <= len(ex.continuation) <= 5 for ex in first)
    calls = []
    monkeypatch.setattr("elmerase.fluency.guided_sample", lambda *a, **k: calls.append(1) or [])
    second = build_fluency_set(*args, progress=False)
    assert calls == [] and [ex.continuation for ex in second] == [ex.continuation for ex in first]


def test_cache_ignores_a_corrupt_entry(tmp_path):
    cache = ContinuationCache(tmp_path)
    cache.put("k", [1, 2], "ab")
    assert cache.get("k") == [1, 2]
    (tmp_path / "k.json").write_text("{not json")
    assert cache.get("k") is None
