"""Load a causal LM (hub id, local folder, GGUF file, embedded default, tiny), attach LoRA, resolve modules."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from .config import ConfigError, LoraSettings, ModelConfig

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# module names per architecture (config.model_type): attention group, MLP group
MODULE_GROUPS: dict[str, dict[str, list[str]]] = {
    "llama": {"attn": ["q_proj", "k_proj", "v_proj", "o_proj"], "mlp": ["up_proj", "gate_proj", "down_proj"]},
    "gpt2": {"attn": ["attn.c_attn", "attn.c_proj"], "mlp": ["mlp.c_fc", "mlp.c_proj"]},
    "gpt_neox": {"attn": ["query_key_value", "attention.dense"], "mlp": ["dense_h_to_4h", "dense_4h_to_h"]},
    "phi": {"attn": ["q_proj", "k_proj", "v_proj", "self_attn.dense"], "mlp": ["fc1", "fc2"]},
    "phi3": {"attn": ["qkv_proj", "o_proj"], "mlp": ["gate_up_proj", "down_proj"]},
}
for _name in ("mistral", "gemma", "gemma2", "gemma3", "gemma3_text", "qwen2", "qwen3", "mixtral", "olmo", "olmo2",
              "smollm3", "granite", "cohere", "stablelm", "starcoder2"):
    MODULE_GROUPS.setdefault(_name, MODULE_GROUPS["llama"])


class ModelError(ValueError):
    """A model that cannot be loaded or adapted as asked; the message names the fix."""


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_model(cfg: ModelConfig) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load model and tokenizer as ``cfg`` says; the model is frozen, in eval mode, on its device."""
    device = resolve_device(cfg.device)
    dtype = DTYPES[cfg.dtype]
    name = cfg.name
    if name == "tiny" or name.startswith("tiny:"):
        from .tiny import build_tiny_model, build_tiny_tokenizer

        seed = int(name.split(":", 1)[1]) if ":" in name else 0
        tokenizer = build_tiny_tokenizer()
        model = build_tiny_model(tokenizer, seed=seed).to(dtype)
    else:
        from .default_models import is_default_model, resolve_default_model

        if is_default_model(name):
            name = str(resolve_default_model(name))
        kwargs = {"dtype": dtype, "trust_remote_code": cfg.trust_remote_code}
        if cfg.revision:
            kwargs["revision"] = cfg.revision
        if cfg.attn_implementation:
            kwargs["attn_implementation"] = cfg.attn_implementation
        source, extra = _source(name)
        kwargs.update(extra)
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=cfg.trust_remote_code,
                                                      **{k: v for k, v in extra.items()})
            model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
        except OSError as err:
            raise ModelError(f"cannot load model '{cfg.name}': {err}. Offline? Pass a local folder or .gguf file, "
                             f"or an embedded default (gemma-3-270m, smollm2-135m).") from err
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.requires_grad_(False)
    model.eval()
    model.to(device)
    return model, tokenizer


def _source(name: str) -> tuple[str, dict]:
    """A .gguf file loads through its folder with gguf_file=...; anything else as it is."""
    path = Path(name)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelError(f"GGUF file '{name}' does not exist")
        return str(path.parent), {"gguf_file": path.name}
    if path.is_absolute() or name.startswith((".", "~")):
        if not path.expanduser().exists():
            raise ModelError(f"model folder '{name}' does not exist")
    return name, {}


def layer_count(model: PreTrainedModel) -> int:
    cfg = model.config
    for attr in ("num_hidden_layers", "n_layer", "num_layers"):
        if getattr(cfg, attr, None):
            return int(getattr(cfg, attr))
    if hasattr(cfg, "get_text_config"):
        return int(cfg.get_text_config().num_hidden_layers)
    raise ModelError("cannot tell the model's number of layers")


def resolve_target_modules(model: PreTrainedModel, wanted: list[str]) -> list[str]:
    """Expand 'attn' / 'mlp' groups for the architecture and check every name exists in the model."""
    model_type = model.config.model_type
    groups = MODULE_GROUPS.get(model_type)
    names: list[str] = []
    for item in wanted:
        if item in ("attn", "mlp"):
            if groups is None:
                raise ModelError(f"no module groups known for architecture '{model_type}'; "
                                 f"name the modules, e.g. lora.target_modules=[q_proj,v_proj]. "
                                 f"Linear modules here: {', '.join(linear_module_names(model))}")
            names += groups[item]
        else:
            names.append(item)
    present = linear_module_names(model)
    full_names = [n for n, m in model.named_modules()]
    for name in names:
        if not any(full == name or full.endswith("." + name) for full in full_names):
            raise ModelError(f"module '{name}' does not exist in {model_type}; "
                             f"its linear modules are: {', '.join(present)}")
    return list(dict.fromkeys(names))


def linear_module_names(model: PreTrainedModel) -> list[str]:
    """Short names (layer index stripped) of the linear-like modules of the decoder layers."""
    found = []
    for full, module in model.named_modules():
        if type(module).__name__ in ("Linear", "Conv1D") and re.search(r"\.\d+\.", full):
            found.append(re.split(r"\.\d+\.", full)[-1])
    return sorted(set(found))


def attach_lora(model: PreTrainedModel, cfg: LoraSettings) -> PeftModel:
    """Wrap ``model`` with a fresh LoRA adapter on the configured layers and modules."""
    n_layers = layer_count(model)
    bad = [i for i in cfg.layers if not 0 <= i < n_layers]
    if bad or not cfg.layers:
        raise ModelError(f"lora.layers {cfg.layers} not valid: the model has layers 0-{n_layers - 1}")
    targets = resolve_target_modules(model, cfg.target_modules)
    lora = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets,
                      layers_to_transform=list(cfg.layers), bias="none", task_type="CAUSAL_LM",
                      fan_in_fan_out=model.config.model_type == "gpt2")
    peft_model = get_peft_model(model, lora)
    if not any("lora_" in n for n, _ in peft_model.named_parameters()):
        raise ModelError("LoRA matched no module; check lora.layers and lora.target_modules")
    return peft_model


def lora_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for n, p in model.named_parameters() if "lora_" in n and p.requires_grad]


def first_lora_layer(cfg: LoraSettings) -> int:
    return min(cfg.layers)


def uses_bos(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the tokenizer puts BOS at the start of a text by default (Gemma, Llama do; GPT-2 does not)."""
    if tokenizer.bos_token_id is None:
        return False
    ids = tokenizer("a")["input_ids"]
    return bool(ids) and ids[0] == tokenizer.bos_token_id
