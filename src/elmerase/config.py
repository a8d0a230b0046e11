"""Run configuration: dataclasses with a help text per field, loaded from YAML with CLI overrides.

Precedence: CLI overrides (``section.field=value``) > YAML file > built-in defaults.
A preset name (``paper``, ``reference-code``, ``tiny`` ...) may stand in for a YAML path.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import yaml


class ConfigError(ValueError):
    """A configuration value or file that cannot be used; the message names the fix."""


def _f(default: Any, help: str, **kwargs: Any) -> Any:
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help}, **kwargs)
    return field(default=default, metadata={"help": help}, **kwargs)


@dataclass
class ModelConfig:
    """Which causal LM to erase from and how to load it."""

    name: str = _f("tiny", "Hub id, local folder, local .gguf file, an embedded default "
                   "(gemma-3-270m, smollm2-135m) or 'tiny' (a small random Llama built in code).")
    dtype: str = _f("float32", "Weights and compute dtype: float32, bfloat16 or float16.")
    device: str = _f("auto", "'auto' (cuda when present, else cpu), 'cpu', 'cuda', 'cuda:1' ...")
    revision: str | None = _f(None, "Hub revision (branch, tag or commit) when name is a hub id.")
    trust_remote_code: bool = _f(False, "Allow the hub repository's own Python code. Off unless you trust it.")
    attn_implementation: str | None = _f(None, "Attention kernel: 'sdpa', 'eager', 'flash_attention_2'; None lets transformers choose.")


@dataclass
class LoraSettings:
    """The LoRA adapter that ELM trains (the base model stays frozen)."""

    rank: int = _f(4, "LoRA rank r (paper 4, reference code 256).")
    alpha: float = _f(16.0, "LoRA alpha; the update is scaled by alpha / rank.")
    dropout: float = _f(0.05, "Dropout on the LoRA input.")
    layers: list[int] = _f([4, 5, 6, 7], "Decoder layer indices that get LoRA (paper and reference: 4-7). "
                           "A string like '4-7' also works.")
    target_modules: list[str] = _f(["attn", "mlp"], "Module groups 'attn' (q/k/v/o) and 'mlp' (up/gate/down), "
                                   "resolved per architecture, or explicit module names such as 'q_proj'.")


@dataclass
class ConceptSpec:
    """One concept to erase, with its erase text and retain text."""

    concept: Union[str, list[str]] = _f("Harry Potter, Wizardry, Hogwarts, Spells, books, series, games, or any "
                                        "other lore by J.K Rowling",
                                        "The concept: a phrase, or a keyword list (joined with ', ').")
    erase: Any = _f(None, "Erase texts: a .txt (paragraphs split on blank lines), .jsonl/.json, .csv/.parquet file, "
                    "'hf:NAME[:CONFIG]:SPLIT:COLUMN', 'builtin:NAME' or a list of strings.")
    retain: Any = _f(None, "Retain texts, same source forms as erase.")
    weight: float = _f(1.0, "Share of the batches drawn from this concept (WMDP reference: bio 2, cyber 1).")
    column: str = _f("text", "Field or column holding the text in .jsonl/.json/.csv/.parquet sources.")
    prompts: list[str] = _f([], "Prompts for the side-by-side samples.md; empty uses the built-in ones for Harry Potter "
                            "or none.")


@dataclass
class DataSettings:
    """Filtering and tokenization of erase / retain text."""

    min_chars: int = _f(50, "Drop texts shorter than this many characters.")
    max_chars: int = _f(700, "Cut texts longer than this to this many characters (the reference code cuts, not drops).")
    max_tokens: int = _f(256, "Cut tokenized texts to this many tokens.")
    max_texts: int | None = _f(None, "Use at most this many erase and retain texts per concept (None: all).")


@dataclass
class ElmSettings:
    """The ELM objective (Gandikota et al. 2024, arXiv 2410.02760)."""

    eta: float = _f(500.0, "Erasure strength eta in logp_base + eta * (logp_novice - logp_expert).")
    eta_schedule: str = _f("constant", "'constant' (paper) or 'linear' (reference code: eta ramps from eta_start "
                           "to eta over the text's positions).")
    eta_start: float = _f(1.0, "First value of the linear eta ramp.")
    temperature: float = _f(1.2, "Divide the frozen logits by this before log-softmax (1 = none).")
    top_k: int = _f(50, "Keep the k largest target logits, softmax over them (0 = whole vocabulary).")
    erase_loss: str = _f("ce", "'ce' (cross-entropy against P', reference) or 'kl' (KL(P' || model)).")
    retain_loss: str = _f("hard_ce", "'hard_ce' (CE against the frozen argmax, reference), 'soft_ce' or 'kl' (paper).")
    l_erase: float = _f(1.0, "Weight of L_erase in the total.")
    l_retain: float = _f(1.0, "Weight of L_retain in the total.")
    l_fluency: float = _f(1.0, "Weight of L_fluency in the total (0 skips the fluency data altogether).")
    target_dtype: str = _f("float32", "Precision of the target computation: float32 or float64 (reference).")


@dataclass
class PromptSettings:
    """Expert / novice context templates and deflection phrases (None = the built-in sets)."""

    expert_templates: list[str] | None = _f(None, "Expert prefixes c- with '{concept}'; None: the 10 built-in ones.")
    novice_templates: list[str] | None = _f(None, "Novice prefixes c+ with '{concept}'; None: the 10 built-in ones.")
    deflections: list[str] | None = _f(None, "Deflection phrases for the fluency prompts; None: the 20 built-in ones.")


@dataclass
class FluencySettings:
    """Guided generation of the fluency (consistency) continuations, done once and cached on disk."""

    gamma: float = _f(3.0, "Guidance scale: log p_base - gamma * (log p_expert - log p_novice).")
    top_p: float = _f(1.0, "Nucleus sampling of the continuations: draw from the guided distribution's most likely "
                      "tokens up to this mass (1 = the whole distribution, as the reference code).")
    min_new_tokens: int = _f(100, "Each continuation's length is drawn from [min_new_tokens, max_new_tokens].")
    max_new_tokens: int = _f(300, "Upper bound of the continuation length (reference: 100-300).")
    batch_size: int = _f(8, "Texts generated together.")
    cache_dir: str | None = _f(None, "Where continuations are cached; None: $ELMERASE_CACHE/fluency or "
                               "~/.cache/elmerase/fluency.")


@dataclass
class TrainSettings:
    """The optimisation loop."""

    steps: int = _f(100, "Optimizer steps.")
    batch_size: int = _f(4, "Texts per micro-batch for each loss (1 reproduces the reference).")
    grad_accum: int = _f(1, "Micro-batches per optimizer step (reference: 4).")
    lr: float = _f(5e-5, "AdamW learning rate.")
    weight_decay: float = _f(0.0, "AdamW weight decay.")
    max_grad_norm: float | None = _f(None, "Clip the gradient norm to this (None: no clipping).")
    seed: int = _f(0, "Seed for template draws, batch order, LoRA init, dropout and sampling.")
    log_every: int = _f(1, "Log every N optimizer steps.")


@dataclass
class SpeedSettings:
    """Switches of the fast engine. The ones on by default give the plain path's losses and gradients (tested)."""

    fused_loss: bool = _f(True, "Apply the LM head only at the positions that carry a loss or a target, in chunks, "
                          "fused with the cross-entropy and its gradient: no [B, T, V] logits. Same losses.")
    loss_chunk: int = _f(0, "Positions per LM-head chunk of the fused loss and targets (0: about 64 MB of logits).")
    prefix_cache: bool = _f(True, "Encode each expert / novice template once (frozen model) and reuse its keys and "
                            "values; bare, expert and novice rows then run only the text, in one batch. Same targets.")
    shared_lower_layers: bool = _f(True, "Run the layers below the first LoRA layer once per batch (frozen pass) and "
                                   "start the student pass from those hidden states. Same losses.")
    fused_guidance: bool = _f(True, "Fluency sampling: mix the base, expert and novice streams' hidden states, "
                              "then one LM-head product instead of three. Same scores within float rounding.")
    retain_cache: bool = _f(True, "Keep the frozen model's hard retain labels per retain text (hard_ce only) so a "
                            "reused retain text needs no frozen pass. Same losses.")
    autocast: bool = _f(False, "bfloat16 autocast of all passes on CUDA (use with model.dtype=bfloat16). Changes the "
                        "numbers within bf16 precision; off on CPU.")
    gradient_checkpointing: bool = _f(False, "Recompute decoder layers in the backward pass: less memory, ~30% "
                                      "more time. Same losses.")
    bucket_by_length: bool = _f(False, "Draw batch_size x grad_accum texts per step and group them by length into "
                                "the micro-batches (less padding). Same samples per step, different grouping.")


@dataclass
class OutputSettings:
    """Where and what to write."""

    dir: str = _f("runs/erase", "Output folder; an existing non-empty folder is an error unless overwrite.")
    overwrite: bool = _f(False, "Replace an existing output folder.")
    merge: bool = _f(False, "Also write merged/ (the base model with the adapter folded in).")
    sample_max_new_tokens: int = _f(40, "Tokens generated per prompt for samples.md.")
    general_prompts: list[str] = _f(["The capital of France is", "Photosynthesis is the process by which"],
                                    "General prompts added to samples.md.")


@dataclass
class EraseConfig:
    """Everything one `elmerase erase` run needs."""

    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    concepts: list[ConceptSpec] = field(default_factory=lambda: [ConceptSpec()])
    data: DataSettings = field(default_factory=DataSettings)
    elm: ElmSettings = field(default_factory=ElmSettings)
    prompts: PromptSettings = field(default_factory=PromptSettings)
    fluency: FluencySettings = field(default_factory=FluencySettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    speed: SpeedSettings = field(default_factory=SpeedSettings)
    output: OutputSettings = field(default_factory=OutputSettings)

    def validate(self) -> None:
        """Raise ConfigError for values that cannot work."""
        choices = {
            ("elm", "eta_schedule"): ("constant", "linear"),
            ("elm", "erase_loss"): ("ce", "kl"),
            ("elm", "retain_loss"): ("hard_ce", "soft_ce", "kl"),
            ("elm", "target_dtype"): ("float32", "float64"),
            ("model", "dtype"): ("float32", "bfloat16", "float16"),
        }
        for (section, name), allowed in choices.items():
            value = getattr(getattr(self, section), name)
            if value not in allowed:
                raise ConfigError(f"{section}.{name}={value!r} is not one of {', '.join(allowed)}")
        positive = {"train.steps": self.train.steps, "train.batch_size": self.train.batch_size,
                    "train.grad_accum": self.train.grad_accum, "lora.rank": self.lora.rank,
                    "data.max_tokens": self.data.max_tokens}
        if self.speed.loss_chunk < 0:
            raise ConfigError(f"speed.loss_chunk={self.speed.loss_chunk} must be 0 (auto) or positive")
        for name, value in positive.items():
            if value < 1:
                raise ConfigError(f"{name}={value} must be at least 1")
        if not 0.0 < self.fluency.top_p <= 1.0:
            raise ConfigError(f"fluency.top_p={self.fluency.top_p} must be in (0, 1]; 1 samples the whole distribution")
        if self.fluency.min_new_tokens > self.fluency.max_new_tokens:
            raise ConfigError("fluency.min_new_tokens must not exceed fluency.max_new_tokens")
        if not self.concepts:
            raise ConfigError("concepts is empty: give at least one {concept, erase, retain}")
        for i, spec in enumerate(self.concepts):
            if spec.erase is None or spec.retain is None:
                raise ConfigError(f"concepts[{i}] needs both 'erase' and 'retain' sources")
            if spec.weight <= 0:
                raise ConfigError(f"concepts[{i}].weight must be positive")


# ---------------------------------------------------------------- building from dicts

def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(tp: Any, value: Any, where: str) -> Any:
    """Turn a YAML / CLI value into the field's type (dataclasses, lists of dataclasses, layer ranges)."""
    if _is_dataclass_type(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {value!r}")
        return from_dict(tp, value, where)
    origin = get_origin(tp)
    args = get_args(tp)
    if origin is list and args and _is_dataclass_type(args[0]):
        if not isinstance(value, list):
            raise ConfigError(f"{where} must be a list of mappings")
        return [_coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if where.endswith("lora.layers"):
        return parse_layers(value)
    if tp is float and isinstance(value, (int, str)) and not isinstance(value, bool):
        try:
            return float(value)  # YAML reads '1e-2' (no dot) as a string
        except ValueError as err:
            raise ConfigError(f"{where}={value!r} is not a number") from err
    return value


def parse_layers(value: Any) -> list[int]:
    """'4-7' -> [4, 5, 6, 7]; '4,6' -> [4, 6]; [4, 5] stays."""
    if isinstance(value, int):
        return [value]
    if isinstance(value, str):
        out: list[int] = []
        for part in value.split(","):
            part = part.strip()
            if "-" in part:
                lo, hi = part.split("-")
                out.extend(range(int(lo), int(hi) + 1))
            elif part:
                out.append(int(part))
        return out
    if isinstance(value, list):
        return [int(v) for v in value]
    raise ConfigError(f"lora.layers: cannot read {value!r}; use a list [4, 5, 6, 7] or a range '4-7'")


def from_dict(cls: type, data: dict, where: str = "") -> Any:
    """Build dataclass ``cls`` from a dict; unknown keys are errors with a suggestion."""
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; known: {', '.join(names)}"
            raise ConfigError(f"unknown config key '{path}'{hint}")
        kwargs[key] = _coerce(hints[key], value, path)
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def _parse_value(text: str) -> Any:
    """CLI values are YAML scalars: 'true', '3', '1e-4', '[4,5]', 'null' ..."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_override(data: dict, assignment: str) -> None:
    """Apply 'a.b.c=value' to a nested dict; 'concepts.0.erase=x' indexes lists."""
    if "=" not in assignment:
        raise ConfigError(f"override '{assignment}' must look like section.field=value (e.g. train.steps=10)")
    key, raw = assignment.split("=", 1)
    parts = key.strip().split(".")
    node: Any = data
    for part in parts[:-1]:
        if isinstance(node, list):
            node = node[int(part)]
        else:
            node = node.setdefault(part, {})
    last = parts[-1]
    if isinstance(node, list):
        node[int(last)] = _parse_value(raw)
    else:
        node[last] = _parse_value(raw)


def preset_path(name: str) -> Path:
    """Path of a shipped preset YAML by name (e.g. 'paper')."""
    path = resources.files("elmerase") / "presets" / f"{name}.yaml"
    return Path(str(path))


def list_presets() -> list[str]:
    folder = Path(str(resources.files("elmerase") / "presets"))
    return sorted(p.stem for p in folder.glob("*.yaml"))


def read_yaml(path_or_preset: str) -> dict:
    path = Path(path_or_preset)
    if not path.exists():
        candidate = preset_path(path_or_preset)
        if not candidate.exists():
            raise ConfigError(f"config '{path_or_preset}' is neither a file nor a preset; "
                              f"presets: {', '.join(list_presets())}")
        path = candidate
    with open(path) as fh:
        data = yaml.safe_load(fh) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return data


def load_config(path: str | None = None, overrides: list[str] | None = None,
                cls: type = EraseConfig) -> Any:
    """Defaults, then the YAML file (or preset), then ``key=value`` overrides; validated."""
    data = to_dict(cls())
    if path:
        _merge(data, read_yaml(path))
    for assignment in overrides or []:
        apply_override(data, assignment)
    cfg = from_dict(cls, data)
    if hasattr(cfg, "validate"):
        cfg.validate()
    return cfg


def _merge(base: dict, update: dict) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


def describe_fields(cls: type = EraseConfig, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted name, default, help) for every leaf field, for --help."""
    rows = []
    default = cls()
    for f in dataclasses.fields(cls):
        name = f"{prefix}{f.name}"
        value = getattr(default, f.name)
        if dataclasses.is_dataclass(value):
            rows += describe_fields(type(value), f"{name}.")
        elif f.name == "concepts":
            rows += describe_fields(ConceptSpec, f"{name}.N.")
        else:
            rows.append((name, repr(value), f.metadata.get("help", "")))
    return rows
