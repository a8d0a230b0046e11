"""Scoring modes against hand-computed log-probs; PMI = difference of two cloze scores; letter = argmax letter."""

from __future__ import annotations

import math

import pytest
from eval_helpers import reference_logprobs

from elmerase.evaluation.mcq import (ScoringError, choice_scores, cloze_prompt, letter_prompt, pick_shots, score_mcq,
                                     score_mcq_modes, summarize)
from elmerase.evaluation.mcq_data import Question
from elmerase.evaluation.scoring import Scorer

QS = [Question("Who is the headmaster of Hogwarts?", ("Albus Dumbledore", "Paris", "The moon", "Bread"), 0, "hp"),
      Question("What boils at one hundred degrees?", ("Yeast", "Water", "Quidditch", "A wand"), 1, "science")]


def _ids(tokenizer, text: str, bos: bool) -> list[int]:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return [tokenizer.bos_token_id] + ids if bos else ids


def _hand_cloze(model, tokenizer, q: Question, context_text: str) -> list[tuple[float, int]]:
    """(sum of log P(' choice' tokens | BOS + context), number of tokens) per choice."""
    context = _ids(tokenizer, context_text, bos=True)
    out = []
    for choice in q.choices:
        continuation = _ids(tokenizer, " " + choice, bos=False)
        out.append((sum(reference_logprobs(model, context, continuation)), len(continuation)))
    return out


def test_cloze_modes_equal_hand_computed(tiny_model, tokenizer):
    scorer = Scorer(tiny_model, tokenizer, progress=False)
    for q, cloze, norm, char in zip(QS, *(choice_scores(scorer, QS, m) for m in ("cloze", "cloze_norm", "cloze_char"))):
        hand = _hand_cloze(tiny_model, tokenizer, q, f"Question: {q.question}\nAnswer:")
        assert cloze == pytest.approx([s for s, _ in hand], abs=1e-4)
        assert norm == pytest.approx([s / n for s, n in hand], abs=1e-4)
        assert char == pytest.approx([s / len(" " + c) for (s, _), c in zip(hand, q.choices)], abs=1e-4)


def test_pmi_is_conditional_minus_unconditional_cloze(tiny_model, tokenizer):
    """pmi = log P(a | 'Question: q\\nAnswer:') - log P(a | 'Answer:'): two cloze scores, subtracted."""
    scorer = Scorer(tiny_model, tokenizer, progress=False)
    pmi = choice_scores(scorer, QS, "pmi")
    cloze = choice_scores(scorer, QS, "cloze")
    for q, p_row, c_row in zip(QS, pmi, cloze):
        prior = [s for s, _ in _hand_cloze(tiny_model, tokenizer, q, "Answer:")]
        assert p_row == pytest.approx([c - u for c, u in zip(c_row, prior)], abs=1e-4)


def test_prediction_is_argmax_and_accuracy_counts(tiny_model, tokenizer):
    result = score_mcq(tiny_model, tokenizer, QS, "cloze", progress=False)
    scores = choice_scores(Scorer(tiny_model, tokenizer, progress=False), QS, "cloze")
    assert result.predictions == [max(range(4), key=row.__getitem__) for row in scores]
    assert result.accuracy == sum(p == q.answer for p, q in zip(result.predictions, QS)) / 2


def test_letter_mode_picks_argmax_letter(letter_model, letter_tokenizer):
    """letter: the MMLU prompt, then the largest of log P(' A') .. log P(' D') at the last position."""
    result = score_mcq(letter_model, letter_tokenizer, QS, "letter", progress=False)
    for q, predicted in zip(QS, result.predictions):
        context = _ids(letter_tokenizer, letter_prompt(q), bos=True)
        letters = [_ids(letter_tokenizer, f" {x}", bos=False) for x in "ABCD"]
        assert all(len(ids) == 1 for ids in letters)
        hand = [reference_logprobs(letter_model, context, ids)[0] for ids in letters]
        assert predicted == max(range(4), key=hand.__getitem__)


def test_letter_mode_without_letter_tokens_names_working_modes(tiny_model, tokenizer):
    """The tiny tokenizer splits ' A' into two tokens."""
    with pytest.raises(ScoringError, match="cloze, cloze_norm, cloze_char, pmi"):
        score_mcq(tiny_model, tokenizer, QS, "letter", progress=False)


def test_prompts_zero_and_k_shot():
    q, shot = QS[1], QS[0]
    assert cloze_prompt(q) == "Question: What boils at one hundred degrees?\nAnswer:"
    assert cloze_prompt(q, [shot]) == ("Question: Who is the headmaster of Hogwarts?\nAnswer: Albus Dumbledore\n\n"
                                       "Question: What boils at one hundred degrees?\nAnswer:")
    assert letter_prompt(q, [shot], "high_school_physics") == (
        "The following are multiple choice questions (with answers) about high school physics.\n\n"
        "Who is the headmaster of Hogwarts?\nA. Albus Dumbledore\nB. Paris\nC. The moon\nD. Bread\nAnswer: A\n\n"
        "What boils at one hundred degrees?\nA. Yeast\nB. Water\nC. Quidditch\nD. A wand\nAnswer:")


def test_pick_shots_prefers_the_subject_and_skips_the_question():
    pool = [QS[0], QS[1], Question("Another science one?", ("a", "b", "c", "d"), 3, "science")]
    assert pick_shots(QS[1], pool, 2) == [pool[2], QS[0]]
    assert pick_shots(QS[1], pool, 0) == []


def test_summary_stderr_histograms_and_subjects():
    """Predictions [0, 0]: one right (hp), one wrong (science): accuracy 0.5, sample variance 0.5, stderr sqrt(0.5 / 2)."""
    result = summarize("cloze", QS, [[1.0, 0.0, 0.0, 0.0], [2.0, 1.0, 0.0, 2.0]])
    assert result.predictions == [0, 0]  # tie between A and D goes to A
    assert result.accuracy == 0.5
    assert result.stderr == pytest.approx(math.sqrt(0.5 / 2))  # sample variance 0.5, n = 2
    assert result.predicted_letters == {"A": 2, "B": 0, "C": 0, "D": 0}
    assert result.answer_letters == {"A": 1, "B": 1, "C": 0, "D": 0}
    assert result.per_subject["hp"]["accuracy"] == 1.0 and result.per_subject["science"]["accuracy"] == 0.0


def test_modes_share_one_conditional_pass(tiny_model, tokenizer):
    results = score_mcq_modes(tiny_model, tokenizer, QS, ["cloze", "cloze_norm", "pmi"], progress=False)
    assert set(results) == {"cloze", "cloze_norm", "pmi"}


def test_unknown_mode_and_empty_set_are_errors(tiny_model, tokenizer):
    with pytest.raises(ScoringError, match="unknown scoring mode"):
        score_mcq(tiny_model, tokenizer, QS, "bogus", progress=False)
    with pytest.raises(ScoringError, match="empty"):
        score_mcq(tiny_model, tokenizer, [], "pmi", progress=False)
    with pytest.raises(ScoringError, match="2-shot"):
        score_mcq(tiny_model, tokenizer, QS, "pmi", shots=2, fewshot=QS[:1], progress=False)
