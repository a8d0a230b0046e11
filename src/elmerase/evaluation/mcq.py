"""Multiple-choice accuracy in five scoring modes, zero- or k-shot, with per-subject and letter breakdowns.

Modes (the prediction is the argmax over the choices; ties go to the first):

* ``letter``: the MMLU prompt ("The following are multiple choice questions (with answers) about X.") with
  lettered choices; compares log P(" A"), log P(" B") ... after "Answer:" (lm-eval MMLU, ELM HP-MCQ code).
  Needs one token per letter.
* ``cloze``: sum of log P(" choice" | "Question: q\\nAnswer:").
* ``cloze_norm``: that sum divided by the number of choice tokens.
* ``cloze_char``: that sum divided by the number of characters of " choice".
* ``pmi``: log P(" choice" | "Question: q\\nAnswer:") - log P(" choice" | "Answer:"); removes the prior of
  each answer text, so a fluent joke distractor no longer wins.

All modes of one question set share one Scorer, so ``cloze``, ``cloze_norm``, ``cloze_char`` and ``pmi`` cost
one conditional pass (plus one unconditional pass per unique answer text for ``pmi``).
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Sequence

from .mcq_data import LETTERS, Question
from .scoring import Scorer, mean_stderr

log = logging.getLogger(__name__)

MODES = ("letter", "cloze", "cloze_norm", "cloze_char", "pmi")
UNCONDITIONAL = "Answer:"


class ScoringError(ValueError):
    """A scoring mode that cannot run with this tokenizer or set; the message names what still works."""


@dataclass
class McqResult:
    """Accuracy of one scoring mode on one question set."""

    mode: str
    n: int
    accuracy: float
    stderr: float | None
    predictions: list[int]
    answers: list[int]
    per_subject: dict[str, dict] = field(default_factory=dict)  # subject -> {n, accuracy, stderr}
    predicted_letters: dict[str, int] = field(default_factory=dict)  # letter bias: how often each was picked
    answer_letters: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self, with_items: bool = False) -> dict:
        data = asdict(self)
        if not with_items:
            data.pop("predictions")
            data.pop("answers")
        return data


def cloze_prompt(question: Question, shots: Sequence[Question] = ()) -> str:
    """'Question: q\\nAnswer:' after k solved examples."""
    solved = "".join(f"Question: {s.question}\nAnswer: {s.choices[s.answer]}\n\n" for s in shots)
    return f"{solved}Question: {question.question}\nAnswer:"


def letter_prompt(question: Question, shots: Sequence[Question] = (), subject: str = "") -> str:
    """The standard MMLU prompt (lm-eval ``mmlu``), with k solved examples."""
    topic = (subject or question.subject).replace("_", " ").strip()
    header = f"The following are multiple choice questions (with answers) about {topic}.\n\n" if topic else \
        "The following are multiple choice questions (with answers).\n\n"
    body = "".join(_lettered(s) + f" {LETTERS[s.answer]}\n\n" for s in shots)
    return header + body + _lettered(question)


def _lettered(q: Question) -> str:
    lines = [q.question] + [f"{LETTERS[i]}. {c}" for i, c in enumerate(q.choices)] + ["Answer:"]
    return "\n".join(lines)


def letter_ids(scorer: Scorer, n: int) -> list[int]:
    """The token of ' A', ' B', ...; ScoringError when a letter is not a single token."""
    ids = []
    for letter in LETTERS[:n]:
        tokens = scorer.encode_continuation(" " + letter)
        if len(tokens) != 1:
            pieces = scorer.tokenizer.convert_ids_to_tokens(list(tokens))
            raise ScoringError(f"the tokenizer has no single token for ' {letter}' (it splits into {pieces}), so "
                               f"'letter' scoring cannot compare answer-letter tokens; use one of "
                               f"{', '.join(m for m in MODES if m != 'letter')}")
        ids.append(tokens[0])
    if len(set(ids)) != len(ids):
        raise ScoringError("two answer letters share a token; use cloze, cloze_norm, cloze_char or pmi")
    return ids


def pick_shots(question: Question, pool: Sequence[Question], k: int) -> list[Question]:
    """The first k pool questions of the question's subject (others fill up), never the question itself."""
    if k <= 0:
        return []
    same = [p for p in pool if p.subject == question.subject and p != question]
    other = [p for p in pool if p.subject != question.subject and p != question]
    return (same + other)[:k]


def choice_scores(scorer: Scorer, questions: Sequence[Question], mode: str, *, shots: int = 0,
                  fewshot: Sequence[Question] = (), subject: str = "") -> list[list[float]]:
    """One score per choice for every question (higher is better) under ``mode``."""
    if mode not in MODES:
        raise ScoringError(f"unknown scoring mode '{mode}'; use one of {', '.join(MODES)}")
    if shots > len(fewshot):
        raise ScoringError(f"{shots}-shot needs at least {shots} example questions, got {len(fewshot)}")
    if mode == "letter":
        return _letter_scores(scorer, questions, shots, fewshot, subject)
    contexts = [scorer.encode_context(cloze_prompt(q, pick_shots(q, fewshot, shots))) for q in questions]
    answers = [[scorer.encode_continuation(" " + c) for c in q.choices] for q in questions]
    flat = [(ctx, a) for ctx, row in zip(contexts, answers) for a in row]
    cond = _unflatten(scorer.score(flat, desc=f"cloze x{len(flat)}"), answers)
    if mode == "cloze":
        return [[s.total for s in row] for row in cond]
    if mode == "cloze_norm":
        return [[s.total / s.n_tokens for s in row] for row in cond]
    if mode == "cloze_char":
        return [[s.total / len(" " + c) for s, c in zip(row, q.choices)] for row, q in zip(cond, questions)]
    base = scorer.encode_context(UNCONDITIONAL)
    uncond = _unflatten(scorer.score([(base, a) for _, a in flat], desc="pmi prior"), answers)
    return [[c.total - u.total for c, u in zip(crow, urow)] for crow, urow in zip(cond, uncond)]


def _letter_scores(scorer: Scorer, questions, shots, fewshot, subject) -> list[list[float]]:
    width = max(len(q.choices) for q in questions)
    ids = letter_ids(scorer, width)
    contexts = [scorer.encode_context(letter_prompt(q, pick_shots(q, fewshot, shots), subject)) for q in questions]
    rows = [[(i,) for i in ids[: len(q.choices)]] for q in questions]
    flat = [(ctx, a) for ctx, row in zip(contexts, rows) for a in row]
    scored = _unflatten(scorer.score(flat, desc=f"letter x{len(questions)}"), rows)
    return [[s.total for s in row] for row in scored]


def _unflatten(flat: list, shape: list[list]) -> list[list]:
    out, pos = [], 0
    for row in shape:
        out.append(flat[pos: pos + len(row)])
        pos += len(row)
    return out


def summarize(mode: str, questions: Sequence[Question], scores: list[list[float]], seconds: float = 0.0) -> McqResult:
    """Accuracy, standard error, per-subject accuracy and letter histograms from per-choice scores."""
    predictions = [max(range(len(row)), key=lambda i: (row[i], -i)) for row in scores]
    answers = [q.answer for q in questions]
    correct = [float(p == a) for p, a in zip(predictions, answers)]
    accuracy, stderr = mean_stderr(correct)
    per_subject = {}
    subjects = sorted({q.subject for q in questions})
    if len(subjects) > 1:
        for subject in subjects:
            hits = [c for c, q in zip(correct, questions) if q.subject == subject]
            acc, err = mean_stderr(hits)
            per_subject[subject or "(none)"] = {"n": len(hits), "accuracy": acc, "stderr": err}
    width = max(len(q.choices) for q in questions)
    predicted = Counter(LETTERS[p] for p in predictions)
    gold = Counter(LETTERS[a] for a in answers)
    letters = LETTERS[:width]
    return McqResult(mode=mode, n=len(questions), accuracy=accuracy, stderr=stderr, predictions=predictions,
                     answers=answers, per_subject=per_subject, predicted_letters={x: predicted[x] for x in letters},
                     answer_letters={x: gold[x] for x in letters}, seconds=round(seconds, 3))


def score_mcq(model, tokenizer, questions: Sequence[Question], mode: str = "pmi", *, shots: int = 0,
              fewshot: Sequence[Question] = (), subject: str = "", batch_size: int = 32,
              scorer: Scorer | None = None, progress: bool = True) -> McqResult:
    """Accuracy of ``model`` on ``questions`` in ``mode`` (see the module docstring).

    Works on a PeftModel with its adapter on, or off inside ``with model.disable_adapter():`` (then give
    each state its own ``scorer``, or none). ``fewshot`` is the pool the ``shots`` examples come from.
    """
    if not questions:
        raise ScoringError("the question set is empty")
    scorer = scorer or Scorer(model, tokenizer, batch_size=batch_size, progress=progress)
    start = time.perf_counter()
    scores = choice_scores(scorer, questions, mode, shots=shots, fewshot=fewshot, subject=subject)
    result = summarize(mode, questions, scores, time.perf_counter() - start)
    log.info("mcq %s: accuracy %.3f +- %.3f on %d questions (%.1fs)", mode, result.accuracy,
             result.stderr if result.stderr is not None else math.nan, result.n, result.seconds)
    return result


def score_mcq_modes(model, tokenizer, questions: Sequence[Question], modes: Sequence[str] = ("pmi",), *,
                    batch_size: int = 32, scorer: Scorer | None = None, progress: bool = True, **kwargs
                    ) -> dict[str, McqResult]:
    """Several modes on one set, sharing one Scorer (the conditional pass runs once)."""
    scorer = scorer or Scorer(model, tokenizer, batch_size=batch_size, progress=progress)
    return {mode: score_mcq(model, tokenizer, questions, mode, scorer=scorer, progress=progress, **kwargs)
            for mode in modes}
