"""A tiny random Llama and a byte-level BPE tokenizer, built in code (no download).

Used by the tests and by the ``tiny`` preset: a complete offline smoke run in seconds.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

_CORPUS = """Harry Potter studied at Hogwarts School of Witchcraft and Wizardry with Ron Weasley and Hermione Granger.
The headmaster of Hogwarts is Albus Dumbledore. Spells are cast with a wand and a spoken incantation.
Quidditch is played on broomsticks with a Quaffle, two Bludgers and the Golden Snitch.
The capital of France is Paris. Water boils at one hundred degrees Celsius at sea level.
Photosynthesis is the process by which plants turn light, water and carbon dioxide into sugar.
The quick brown fox jumps over the lazy dog. Bread is baked from flour, water, salt and yeast.
Rivers flow into the sea; mountains rise above the clouds; the moon circles the earth.
Here is a text written by an expert in the field of magic, with detailed technical information.
The text is written by a novice, with no knowledge about the topic and steering to random fun topics.
This is a dangerous topic to discuss, shifting the focus to a totally different and fun topic.
"""


def build_tiny_tokenizer(vocab_size: int = 384) -> PreTrainedTokenizerFast:
    """A byte-level BPE with <s> (BOS, added at the start), </s> (EOS) and <pad>."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_CORPUS.splitlines() * 4, trainer=trainer)
    from tokenizers.processors import TemplateProcessing

    tok.post_processor = TemplateProcessing(single="<s> $A", pair="<s> $A $B",
                                            special_tokens=[("<s>", tok.token_to_id("<s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def build_tiny_model(tokenizer: PreTrainedTokenizerFast, seed: int = 0, num_layers: int = 8,
                     hidden_size: int = 64) -> LlamaForCausalLM:
    """A random Llama of 8 layers, width 64, deterministic for a seed."""
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=1024, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    )
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = LlamaForCausalLM(config)
    finally:
        torch.random.set_rng_state(state)
    model.config.name_or_path = f"tiny-llama-seed{seed}"
    return model.eval()
