"""Decoder passes that return hidden states instead of logits: the building blocks of the fast engine.

- ``split_model``: the decoder (embeddings, layers, final norm) and the LM head of a supported architecture.
- ``skipped_layers``: run the decoder from the hidden states that enter layer k (layers below k are skipped).
- ``layer_input``: capture the hidden states that enter layer k during a pass.
- ``TemplateCache``: the keys and values of each context prefix, computed once by the frozen model, and a batched
  cache for rows with different prefixes (left-padded, so relative distances and sliding windows stay exact).

Supported: decoder-only models whose decoder loop calls ``layer(hidden_states, ...)`` and whose embedding scale
lives in the embedding module (Llama, Mistral, Qwen2/3, Gemma 3 text). Anything else uses the plain path.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from transformers import DynamicCache

log = logging.getLogger(__name__)

SUPPORTED = ("llama", "mistral", "qwen2", "qwen3", "gemma3_text")


@dataclass
class SplitModel:
    """The parts of a causal LM the fast passes call: ``decoder(...)`` gives final hidden states, ``head`` logits."""

    decoder: nn.Module
    head: nn.Linear

    @property
    def layers(self) -> nn.ModuleList:
        return self.decoder.layers


def split_model(model: nn.Module) -> SplitModel | None:
    """Decoder and LM head of ``model`` (PeftModel or plain causal LM); None where the fast path does not apply."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = base.config
    reasons = []
    if config.model_type not in SUPPORTED:
        reasons.append(f"architecture '{config.model_type}' is not one of {', '.join(SUPPORTED)}")
    if getattr(config, "final_logit_softcapping", None):
        reasons.append("final logit soft-capping")
    if getattr(config, "attention_dropout", 0.0):
        reasons.append("attention dropout (frozen and student lower layers would differ in train mode)")
    decoder, head = base.get_decoder(), base.get_output_embeddings()
    if not isinstance(head, nn.Linear) or not isinstance(getattr(decoder, "layers", None), nn.ModuleList):
        reasons.append("no decoder.layers / linear LM head")
    if reasons:
        log.info("fast engine off, plain path used: %s", "; ".join(reasons))
        return None
    return SplitModel(decoder, head)


class _Passthrough(nn.Module):
    """Stands in for a skipped decoder layer: returns its input hidden states."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        if hasattr(layer, "attention_type"):
            self.attention_type = layer.attention_type

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


@contextmanager
def skipped_layers(split: SplitModel, start: int):
    """Within the block, decoder layers below ``start`` return their input unchanged."""
    layers = split.layers
    saved = [layers[i] for i in range(start)]
    try:
        for i, layer in enumerate(saved):
            layers[i] = _Passthrough(layer)
        yield
    finally:
        for i, layer in enumerate(saved):
            layers[i] = layer


@contextmanager
def layer_input(split: SplitModel, index: int):
    """Within the block, ``box[0]`` becomes the hidden states entering layer ``index`` (detached)."""
    box: list[torch.Tensor] = []

    def hook(module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        box[:] = [hidden.detach()]

    handle = split.layers[index].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield box
    finally:
        handle.remove()


def decode(split: SplitModel, input_ids=None, attention_mask=None, position_ids=None, cache=None,
           inputs_embeds=None, start_layer: int = 0) -> torch.Tensor:
    """Final hidden states [B, L, H] (after the last norm); from ``inputs_embeds`` entering ``start_layer`` if given."""
    with skipped_layers(split, start_layer):
        out = split.decoder(input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                            position_ids=position_ids, cache=cache, use_cache=cache is not None)
    return out.last_hidden_state


class TemplateCache:
    """Keys and values of each context prefix (a token tuple), computed once with the frozen model.

    Call ``get`` / ``batched`` with the adapter disabled. A prefix's keys and values do not depend on what follows
    it (causal attention), so a row ``prefix + text`` gives the same text hidden states as running ``text`` after the
    cached prefix with positions shifted by the prefix length.
    """

    def __init__(self, split: SplitModel):
        self.split = split
        self.store: dict[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]] = {}

    @torch.no_grad()
    def get(self, prefix: tuple[int, ...]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if prefix not in self.store:
            device = self.split.head.weight.device
            ids = torch.tensor([prefix], dtype=torch.long, device=device)
            cache = DynamicCache(config=self.split.decoder.config)
            self.split.decoder(input_ids=ids, cache=cache, use_cache=True)
            self.store[prefix] = [(layer.keys, layer.values) for layer in cache.layers]
        return self.store[prefix]

    def batched(self, prefixes: list[tuple[int, ...]]) -> tuple[DynamicCache | None, torch.Tensor]:
        """A cache for rows with these prefixes (empty allowed), left-padded to the longest, and its mask [R, P]."""
        width = max(len(p) for p in prefixes)
        device = self.split.head.weight.device
        mask = torch.zeros((len(prefixes), width), dtype=torch.long, device=device)
        if width == 0:
            return None, mask
        entries = {p: self.get(p) for p in set(prefixes) if p}
        sample = next(iter(entries.values()))
        cache = DynamicCache(config=self.split.decoder.config)
        for i, (keys0, values0) in enumerate(sample):
            keys = keys0.new_zeros((len(prefixes), keys0.shape[1], width, keys0.shape[3]))
            values = values0.new_zeros((len(prefixes), values0.shape[1], width, values0.shape[3]))
            for row, prefix in enumerate(prefixes):
                if prefix:
                    k, v = entries[prefix][i]
                    keys[row, :, width - len(prefix):] = k[0]
                    values[row, :, width - len(prefix):] = v[0]
            cache.layers[i].update(keys, values)
        for row, prefix in enumerate(prefixes):
            mask[row, width - len(prefix):] = 1
        return cache, mask

    def fits(self, prefix_length: int) -> bool:
        """Whether a prefix of this length keeps all its keys in every cache layer (sliding windows)."""
        window = getattr(self.split.decoder.config, "sliding_window", None)
        return window is None or prefix_length < window - 1
