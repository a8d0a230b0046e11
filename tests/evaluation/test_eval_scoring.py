"""The scoring core against hand-computed log-probs: one unpadded forward, float64 log-softmax, per token."""

from __future__ import annotations

import math

import pytest

from elmerase.evaluation.scoring import Scorer, mean_stderr

from eval_helpers import reference_logprobs, reference_rank

PROMPTS = ["Question: Who is the headmaster?\nAnswer:", "The capital of France is", "Hi"]
ANSWERS = [" Albus Dumbledore", " Paris", " the moon and the sun over the sea", " A"]


def _requests(scorer):
    return [(scorer.encode_context(p), scorer.encode_continuation(a)) for p in PROMPTS for a in ANSWERS]


@pytest.mark.parametrize("share_prefix", [True, False])
def test_logprobs_equal_unpadded_forward(tiny_model, tokenizer, share_prefix):
    """Padded, batched, prefix-cached or concatenated: every token's log-prob equals the unpadded one."""
    scorer = Scorer(tiny_model, tokenizer, batch_size=3, share_prefix=share_prefix, progress=False)
    requests = _requests(scorer)
    for (context, continuation), scored in zip(requests, scorer.score(requests, ranks=True)):
        expected = reference_logprobs(tiny_model, context, continuation)
        assert scored.logprobs == pytest.approx(expected, abs=1e-4)
        assert scored.total == pytest.approx(sum(expected), abs=1e-4)
        assert scored.ranks[0] == reference_rank(tiny_model, context, continuation[0])


def test_small_logit_budget_gives_same_numbers(tiny_model, tokenizer):
    """A logits budget of two positions forces one-row chunks; the numbers do not change."""
    wide = Scorer(tiny_model, tokenizer, progress=False)
    narrow = Scorer(tiny_model, tokenizer, progress=False, max_logits=2 * wide.vocab)
    requests = _requests(wide)
    for a, b in zip(wide.score(requests), narrow.score(requests)):
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-5)


def test_context_starts_with_bos_and_continuation_is_bare(tiny_model, tokenizer):
    scorer = Scorer(tiny_model, tokenizer, progress=False)
    bare = tokenizer("Answer:", add_special_tokens=False)["input_ids"]
    assert scorer.encode_context("Answer:") == tuple([tokenizer.bos_token_id] + bare)
    assert scorer.encode_continuation(" Paris") == tuple(tokenizer(" Paris", add_special_tokens=False)["input_ids"])


def test_cache_serves_repeats(tiny_model, tokenizer):
    scorer = Scorer(tiny_model, tokenizer, progress=False)
    request = (scorer.encode_context("Hi"), scorer.encode_continuation(" there"))
    first = scorer.score([request, request])
    assert len(scorer.cache) == 1 and first[0] == first[1] and first[0].ranks == ()
    assert scorer.score([request], ranks=True)[0].ranks  # asked for ranks: computed again, with ranks


def test_empty_context_is_an_error(tiny_model, tokenizer):
    scorer = Scorer(tiny_model, tokenizer, progress=False)
    with pytest.raises(ValueError, match="non-empty context"):
        scorer.score([((), (5, 6))])


def test_mean_stderr_matches_formula():
    """[1, 0, 1, 1]: mean 0.75, sample variance 0.25, stderr sqrt(0.25 / 4) = 0.25."""
    mean, err = mean_stderr([1, 0, 1, 1])
    assert mean == 0.75 and err == pytest.approx(0.25)
    assert mean_stderr([3.0]) == (3.0, None)
    assert math.isnan(mean_stderr([])[0])
