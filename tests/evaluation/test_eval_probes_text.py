"""Probes, perplexity, fluency measures and side-by-side generation against hand-computed values."""

from __future__ import annotations

import contextlib
import json
import math

import pytest
from eval_helpers import reference_logprobs, reference_rank

from elmerase.evaluation import (DataError, distinct_n, generate, generate_side_by_side, load_probes, load_texts,
                                 longest_repeated_ngram, perplexity, probe, reverse_perplexity)
from elmerase.evaluation.fluency import SamplingSettings
from elmerase.evaluation.generations import GenerationSettings
from elmerase.evaluation.probes import Probe


def _ids(tokenizer, text, bos):
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return [tokenizer.bos_token_id] + ids if bos else ids


def test_probe_probability_rank_and_summary(tiny_model, tokenizer):
    probes = [Probe("The headmaster of Hogwarts is Albus", " Dumbledore"), Probe("The capital of France is", " Paris")]
    result = probe(tiny_model, tokenizer, probes, progress=False)
    for p, item in zip(probes, result.items):
        context, target = _ids(tokenizer, p.prompt, True), _ids(tokenizer, p.target, False)
        logprobs = reference_logprobs(tiny_model, context, target)
        assert item["prob"] == pytest.approx(math.exp(sum(logprobs)), rel=1e-4)
        assert item["first_prob"] == pytest.approx(math.exp(logprobs[0]), rel=1e-4)
        assert item["rank"] == reference_rank(tiny_model, context, target[0])
    assert result.mean_prob == pytest.approx(sum(i["prob"] for i in result.items) / 2)
    assert result.top1_rate == 0.0  # a random model does not write " Dumbledore" greedily
    assert result.median_rank == (result.items[0]["rank"] + result.items[1]["rank"]) / 2


def test_load_probes_formats_and_errors(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "A", "target": " b"}\n\n{"prompt": "C", "target": " d"}\n')
    assert [p.target for p in load_probes(path)] == [" b", " d"]
    assert load_probes([{"prompt": "x", "target": " y"}])[0].prompt == "x"
    path.write_text('{"prompt": "A"}\n')
    with pytest.raises(DataError, match="p.jsonl:1: a probe needs"):
        load_probes(path)
    with pytest.raises(DataError, match="does not exist"):
        load_probes(tmp_path / "missing.jsonl")


def test_perplexity_equals_hand_computed_with_bos(tiny_model, tokenizer):
    """Two windows of 8 tokens, each scored after BOS: ppl = exp(-(sum of the 16 log-probs) / 16)."""
    text = "The quick brown fox jumps over the lazy dog. Rivers flow into the sea."
    ids = _ids(tokenizer, text, bos=False)[:16]
    text16 = tokenizer.decode(ids)
    assert _ids(tokenizer, text16, bos=False) == ids
    result = perplexity(tiny_model, tokenizer, [text16], window=8, max_tokens=None, progress=False)
    bos = [tokenizer.bos_token_id]
    total = sum(reference_logprobs(tiny_model, bos, ids[:8])) + sum(reference_logprobs(tiny_model, bos, ids[8:]))
    assert (result.n_tokens, result.n_windows) == (16, 2)
    assert result.ppl == pytest.approx(math.exp(-total / 16), rel=1e-4)
    capped = perplexity(tiny_model, tokenizer, [text16], window=8, max_tokens=5, progress=False)
    assert capped.n_tokens == 5 and capped.ppl == pytest.approx(
        math.exp(-sum(reference_logprobs(tiny_model, bos, ids[:5])) / 5), rel=1e-4)


def test_load_texts_formats(tmp_path):
    (tmp_path / "a.txt").write_text("one text\n\nstill the same text")
    (tmp_path / "b.jsonl").write_text('{"text": "first"}\n{"text": "second"}\n')
    (tmp_path / "c.json").write_text(json.dumps(["x", {"body": "y"}]))
    assert load_texts(tmp_path / "a.txt") == ["one text\n\nstill the same text"]
    assert load_texts(tmp_path / "b.jsonl") == ["first", "second"]
    with pytest.raises(DataError, match="c.json\\[1\\]"):
        load_texts(tmp_path / "c.json")
    with pytest.raises(DataError, match="no text"):
        load_texts(["", "  "])


def test_distinct_n_and_longest_repeat_by_hand():
    """'a b a b c': unigrams a,b,a,b,c -> 3 unique / 5; bigrams ab,ba,ab,bc -> 3 / 4; 'a b' repeats -> 2."""
    assert distinct_n(["a b a b c"], 1) == pytest.approx(3 / 5)
    assert distinct_n(["a b a b c"], 2) == pytest.approx(3 / 4)
    assert distinct_n(["A b", "a B"], 2) == pytest.approx(1 / 2)  # lower-cased, pooled over texts
    assert longest_repeated_ngram("a b a b c") == 2
    assert longest_repeated_ngram("the cat sat on the cat sat on the mat") == 5  # "the cat sat on the" at 0 and 4
    assert longest_repeated_ngram("all words differ here") == 0
    assert distinct_n([""], 1) == 0.0


def test_generate_is_seeded_and_reverse_ppl_matches_hand(tiny_model, tokenizer):
    settings = SamplingSettings(max_new_tokens=6, seed=3)
    first = generate(tiny_model, tokenizer, ["Harry Potter", "The moon"], settings, progress=False)
    again = generate(tiny_model, tokenizer, ["Harry Potter", "The moon"], settings, progress=False)
    assert first == again and len(first) == 2
    texts = [" is a wizard", ""]
    ppls = reverse_perplexity(tiny_model, tokenizer, ["Harry Potter", "The moon"], texts, progress=False)
    logprobs = reference_logprobs(tiny_model, _ids(tokenizer, "Harry Potter", True), _ids(tokenizer, texts[0], False))
    assert ppls[0] == pytest.approx(math.exp(-sum(logprobs) / len(logprobs)), rel=1e-4)
    assert math.isnan(ppls[1])  # an empty continuation has no perplexity


def test_side_by_side_with_adapter_on_and_off(tokenizer, adapter_dir):
    from peft import PeftModel

    from elmerase.tiny import build_tiny_model

    model = PeftModel.from_pretrained(build_tiny_model(tokenizer, seed=0), str(adapter_dir))
    settings = GenerationSettings(max_new_tokens=8, sampled=False)
    rows = generate_side_by_side(model, tokenizer, ["Harry Potter studied at"], settings=settings, progress=False)
    assert set(rows[0]) == {"prompt", "original", "erased"}
    assert rows[0]["original"]["greedy"] != rows[0]["erased"]["greedy"]
    plain = generate_side_by_side(model.get_base_model(), tokenizer, ["Harry"], {"x": contextlib.nullcontext},
                                  settings, progress=False)
    assert list(plain[0]) == ["prompt", "x"]
