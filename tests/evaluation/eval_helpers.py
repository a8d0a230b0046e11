"""Hand-computed references for the evaluation tests (imported by the test modules)."""

from __future__ import annotations

import torch

QUESTIONS = [
    {"question": "Who is the headmaster of Hogwarts?", "choices": ["Albus Dumbledore", "Paris", "The moon", "Bread"],
     "answer": 0},
    {"question": "What boils at one hundred degrees?", "choices": ["Yeast", "Water", "Quidditch", "A wand"],
     "answer": 1},
    {"question": "Which game uses a Golden Snitch?", "choices": ["Chess", "Golf", "Quidditch", "Tennis"], "answer": 2},
]


def reference_logprobs(model, context: list[int], continuation: list[int]) -> list[float]:
    """log P(continuation[i] | context + continuation[:i]) from one unpadded forward and a float64 log-softmax."""
    ids = torch.tensor([list(context) + list(continuation)])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
    return [logp[len(context) - 1 + i, t].item() for i, t in enumerate(continuation)]


def reference_rank(model, context: list[int], token: int) -> int:
    """1 + the number of tokens with a larger logit than ``token`` after ``context``."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([list(context)])).logits[0, -1]
    return int((logits > logits[token]).sum()) + 1
