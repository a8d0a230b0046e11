"""LoRA target resolution per architecture (tiny random models built in code), loading errors, BOS detection."""

import pytest
import torch
from transformers import (AutoModelForCausalLM, Gemma3TextConfig, GPT2Config, GPTNeoXConfig, LlamaConfig,
                          MistralConfig, PhiConfig, Qwen2Config)

from elmerase.config import LoraSettings, ModelConfig
from elmerase.models import ModelError, attach_lora, load_model, resolve_target_modules, uses_bos

SMALL = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=8, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64)

ARCHITECTURES = {
    "llama": (LlamaConfig(**SMALL), 7),
    "mistral": (MistralConfig(**SMALL), 7),
    "qwen2": (Qwen2Config(**SMALL), 7),
    "gemma3": (Gemma3TextConfig(**SMALL, head_dim=8), 7),
    "phi": (PhiConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=8,
                      num_attention_heads=4, max_position_embeddings=64), 6),
    "gpt2": (GPT2Config(vocab_size=64, n_embd=32, n_layer=8, n_head=4, n_positions=64), 4),
    "gpt_neox": (GPTNeoXConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=8,
                               num_attention_heads=4, max_position_embeddings=64), 4),
}


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_attn_and_mlp_groups_resolve_and_train_layers_4_to_7(arch):
    config, modules_per_layer = ARCHITECTURES[arch]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    peft_model = attach_lora(model, LoraSettings(rank=2, layers=[4, 5, 6, 7]))
    lora_modules = {n.rsplit(".lora_A", 1)[0] for n, _ in peft_model.named_parameters() if "lora_A" in n}
    assert len(lora_modules) == 4 * modules_per_layer
    layers = {int(part) for name in lora_modules for part in name.split(".") if part.isdigit()}
    assert layers == {4, 5, 6, 7}
    out = peft_model(torch.tensor([[1, 2, 3]])).logits
    assert out.shape == (1, 3, 64)


def test_missing_module_lists_what_exists():
    model = AutoModelForCausalLM.from_config(ARCHITECTURES["llama"][0])
    with pytest.raises(ModelError, match="module 'c_attn' does not exist in llama; its linear modules are: .*q_proj"):
        resolve_target_modules(model, ["c_attn"])


def test_missing_layer_names_the_range():
    model = AutoModelForCausalLM.from_config(ARCHITECTURES["llama"][0])
    with pytest.raises(ModelError, match="the model has layers 0-7"):
        attach_lora(model, LoraSettings(layers=[6, 7, 8]))


def test_explicit_module_names_work():
    model = AutoModelForCausalLM.from_config(ARCHITECTURES["llama"][0])
    peft_model = attach_lora(model, LoraSettings(rank=2, layers=[4], target_modules=["q_proj", "down_proj"]))
    names = {n for n, _ in peft_model.named_parameters() if "lora_A" in n}
    assert len(names) == 2


def test_load_tiny_and_local_folder(tmp_path):
    model, tok = load_model(ModelConfig(name="tiny"))
    assert not any(p.requires_grad for p in model.parameters())
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    again, tok2 = load_model(ModelConfig(name=str(tmp_path / "m")))
    ids = torch.tensor([[1, 5, 6]])
    assert torch.allclose(model(ids).logits, again(ids).logits)
    assert uses_bos(tok2)


def test_missing_local_model_is_a_clear_error(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        load_model(ModelConfig(name=str(tmp_path / "nothing")))
    with pytest.raises(ModelError, match="GGUF file .* does not exist"):
        load_model(ModelConfig(name=str(tmp_path / "x.gguf")))


def test_gpt2_style_tokenizer_has_no_bos(tokenizer):
    from transformers import PreTrainedTokenizerFast

    plain = PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend_tokenizer, eos_token="</s>")
    plain.backend_tokenizer.post_processor = None
    assert uses_bos(tokenizer) and not uses_bos(plain)
