"""Shared fixtures: a tiny random Llama and a byte-level BPE tokenizer built in code (no download)."""

from __future__ import annotations

import pytest
import torch

from elmerase.tiny import build_tiny_model, build_tiny_tokenizer

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))

HP_TEXTS = [
    "Harry Potter studied at Hogwarts School of Witchcraft and Wizardry with Ron Weasley and Hermione Granger.",
    "The headmaster of Hogwarts is Albus Dumbledore, who leads the school with calm and patience.",
    "Quidditch is played on broomsticks with a Quaffle, two Bludgers and the Golden Snitch.",
    "Spells are cast with a wand and a spoken incantation learned in the Charms classroom.",
    "Hagrid keeps a large dog named Fang in his hut at the edge of the Forbidden Forest.",
    "The Sorting Hat places each new student into Gryffindor, Hufflepuff, Ravenclaw or Slytherin.",
]
GENERAL_TEXTS = [
    "The capital of France is Paris, a city on the river Seine known for its museums.",
    "Water boils at one hundred degrees Celsius at sea level and freezes at zero degrees.",
    "Photosynthesis is the process by which plants turn light, water and carbon dioxide into sugar.",
    "Bread is baked from flour, water, salt and yeast, and rises as the yeast makes gas.",
    "Rivers carry water from mountains to the sea, shaping valleys over thousands of years.",
    "The moon circles the earth about once a month and reflects the light of the sun.",
]


@pytest.fixture(scope="session")
def tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_model(tokenizer):
    return build_tiny_model(tokenizer, seed=0)


@pytest.fixture
def tiny_config(tmp_path):
    """The tiny preset with in-memory texts, a temporary output folder and fluency cache, 3 steps."""
    from elmerase.config import load_config

    cfg = load_config("tiny", [f"output.dir={tmp_path / 'out'}", f"fluency.cache_dir={tmp_path / 'cache'}",
                               "train.steps=3", "train.batch_size=2", "fluency.min_new_tokens=4",
                               "fluency.max_new_tokens=8", "output.sample_max_new_tokens=4"])
    cfg.concepts[0].erase = list(HP_TEXTS)
    cfg.concepts[0].retain = list(GENERAL_TEXTS)
    cfg.output.general_prompts = ["The capital of France is"]
    return cfg
