"""Evaluation fixtures. The tiny model and tokenizer come from tests/conftest.py (built once per session);
here: a tokenizer with single-token answer letters, and a saved random adapter."""

from __future__ import annotations

import json

import pytest
import torch
from peft import LoraConfig, get_peft_model

from eval_helpers import QUESTIONS

from elmerase.tiny import build_tiny_model, build_tiny_tokenizer


@pytest.fixture(scope="session")
def letter_tokenizer():
    """A byte BPE like the tiny one but trained with ' A', ' B', ' C', ' D' frequent enough to be single tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(["Answer: A B C D"] * 50 + [q["question"] for q in QUESTIONS], trainer=trainer)
    tok.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


@pytest.fixture(scope="session")
def letter_model(letter_tokenizer):
    return build_tiny_model(letter_tokenizer, seed=1)


@pytest.fixture(scope="session")
def adapter_dir(tmp_path_factory):
    """A saved LoRA adapter for the tiny model (seed 0) with random, non-zero B: it changes the outputs."""
    tokenizer = build_tiny_tokenizer()
    base = build_tiny_model(tokenizer, seed=0)
    config = LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj", "up_proj"], init_lora_weights=False)
    torch.manual_seed(0)
    peft_model = get_peft_model(base, config)
    folder = tmp_path_factory.mktemp("adapter")
    peft_model.save_pretrained(str(folder))
    return folder


@pytest.fixture
def questions_json(tmp_path):
    path = tmp_path / "questions.json"
    path.write_text(json.dumps(QUESTIONS, indent=1))
    return path
