"""``elmerase bench``: time the project's engine and the reference engine on the same model, data and settings.

Each engine gets a freshly loaded (or freshly random-initialised) model. Reported per engine: samples/s, tokens/s,
seconds per optimizer step, peak memory (CPU: resident set size sampled during the run; CUDA: peak allocated), the
time split by phase (frozen passes, student forward + backward per loss, fluency generation, optimizer) and, for
the student passes, model-FLOPs utilisation where the device's peak is known.

Our engine generates the fluency continuations of the texts it trains on once, batched, before training (cold cache);
that time is charged per sample. The reference engine generates a continuation inside every sample, as its original.
"""

from __future__ import annotations

import copy
import logging
import statistics
import tempfile
from dataclasses import dataclass, field, replace

import torch

from .config import EraseConfig
from .data import read_texts
from .models import DTYPES, first_lora_layer, load_model, resolve_device
from .reference_engine import ReferenceEngine
from .timing import PeakMemory, PhaseTimer, release_memory

log = logging.getLogger(__name__)

RECIPE_SAMPLES = 9000  # the reference recipe: 3000 iterations x 3 concepts' samples
PHASES = ("frozen", "student_erase", "student_retain", "student_fluency", "generation", "optimizer")
ABLATIONS = ("fused_loss", "prefix_cache", "shared_lower_layers", "retain_cache")


# ------------------------------------------------------------------ models

RANDOM_SHAPES = {
    # zephyr-7b-beta / Mistral-7B-v0.1
    "mistral-7b": dict(model_type="mistral", vocab_size=32000, hidden_size=4096, intermediate_size=14336,
                       num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, rope_theta=10000.0,
                       max_position_embeddings=32768, sliding_window=None),
    # Meta-Llama-3-8B
    "llama-3-8b": dict(model_type="llama", vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                       num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, rope_theta=500000.0,
                       max_position_embeddings=8192),
    # the project's tiny Llama (tiny.py): for tests
    "tiny": dict(model_type="llama", vocab_size=384, hidden_size=64, intermediate_size=128, num_hidden_layers=8,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024),
}


def build_random_model(shape: str, device: str = "auto", dtype: str = "float32", seed: int = 0):
    """A causal LM of a known shape with random weights, built directly on the device (no download).

    The tokenizer is the project's tiny byte-level BPE (its ids fit every shape's vocabulary): token counts differ
    from the real model's tokenizer, which is why the bench reports tokens/s next to samples/s.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    from .tiny import build_tiny_tokenizer

    if shape not in RANDOM_SHAPES:
        raise ValueError(f"unknown --random-init shape '{shape}'; known: {', '.join(RANDOM_SHAPES)}")
    tokenizer = build_tiny_tokenizer()
    fields = dict(RANDOM_SHAPES[shape])
    config = AutoConfig.for_model(fields.pop("model_type"), **fields, bos_token_id=tokenizer.bos_token_id,
                                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                                  tie_word_embeddings=False)
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        with torch.device(resolve_device(device)):
            model = AutoModelForCausalLM.from_config(config, dtype=DTYPES[dtype])
    finally:
        torch.random.set_rng_state(state)
    model.config.name_or_path = f"random-{shape}"
    model.requires_grad_(False)
    return model.eval(), tokenizer


@dataclass
class ModelSource:
    """Where each engine's fresh model comes from: ``cfg.model`` or a random-init shape."""

    random_init: str | None = None

    def load(self, cfg: EraseConfig):
        if self.random_init:
            return build_random_model(self.random_init, cfg.model.device, cfg.model.dtype, cfg.train.seed)
        return load_model(cfg.model)

    def describe(self, cfg: EraseConfig) -> str:
        return f"random-init {self.random_init}" if self.random_init else cfg.model.name


# ------------------------------------------------------------------ configs

def long_texts(texts: list[str], tokenizer, tokens: int) -> list[str]:
    """Join consecutive texts until each has at least ``tokens`` tokens (for benches at a fixed length)."""
    out, current = [], ""
    for text in texts * 64:
        current = f"{current} {text}".strip()
        if len(tokenizer(current, add_special_tokens=False)["input_ids"]) >= tokens:
            out.append(current)
            current = ""
        if len(out) >= len(texts):
            break
    return out


def bench_config(cfg: EraseConfig, samples: int, tokenizer=None, text_tokens: int | None = None,
                 fluency_dir: str | None = None) -> EraseConfig:
    """A copy of ``cfg`` for a bench: the first concept only, ``samples`` texts, a fluency cache in ``fluency_dir``."""
    cfg = copy.deepcopy(cfg)
    spec = cfg.concepts[0]
    cfg.concepts = [spec]
    if text_tokens:
        spec.erase = long_texts(read_texts(spec.erase, spec.column), tokenizer, text_tokens)
        spec.retain = long_texts(read_texts(spec.retain, spec.column), tokenizer, text_tokens)
        cfg.data = replace(cfg.data, max_tokens=text_tokens, max_chars=10**9)
    cfg.data = replace(cfg.data, max_texts=samples)
    if fluency_dir:
        cfg.fluency = replace(cfg.fluency, cache_dir=fluency_dir)
    cfg.validate()
    return cfg


def reference_config(cfg: EraseConfig) -> EraseConfig:
    """The reference engine's settings: batch 1 (the same samples per optimizer step), the model in float32."""
    per_step = cfg.train.batch_size * cfg.train.grad_accum
    return replace(cfg, train=replace(cfg.train, batch_size=1, grad_accum=per_step),
                   model=replace(cfg.model, dtype="float32"))


# ------------------------------------------------------------------ measuring

@dataclass
class BenchResult:
    """What one engine did in the measured part of a bench."""

    engine: str
    samples: int
    tokens: int
    train_seconds: float  # the measured steps
    generation_seconds: float  # fluency generation charged to these samples (ours: its share of the cold pass)
    phases: dict[str, float]
    step_seconds: list[float]
    peak_memory: int
    memory_kind: str
    device: str
    settings: str
    student_flops: float = 0.0
    peak_flops: float | None = None
    sample_seconds: list[float] = field(default_factory=list)  # reference: one entry per sample

    @property
    def seconds(self) -> float:
        return self.train_seconds + self.generation_seconds

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds

    @property
    def train_samples_per_s(self) -> float:
        """Without fluency generation (continuations already cached, e.g. from the second epoch on)."""
        return self.samples / max(self.seconds - self.phases.get("generation", 0.0), 1e-9)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds

    @property
    def mfu(self) -> float | None:
        student = sum(v for k, v in self.phases.items() if k.startswith("student_"))
        if not self.peak_flops or not student:
            return None
        return self.student_flops / student / self.peak_flops

    @property
    def recipe_hours(self) -> float:
        return RECIPE_SAMPLES / self.samples_per_s / 3600


def student_flops(model, counts: dict[str, float], first_lora: int) -> float:
    """Matmul FLOPs of the student passes: forward through the layers it ran and the LM head at the positions it
    was applied to; backward (input gradients) from the LM head down to the first LoRA layer; LoRA weight gradients.
    Attention score FLOPs are left out (a few percent at 512 tokens)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    layers = base.get_decoder().layers
    lower = sum(p.numel() for layer in layers[:first_lora] for p in layer.parameters())
    upper = sum(p.numel() for layer in layers[first_lora:] for p in layer.parameters())
    head = base.get_output_embeddings().weight.numel()
    tokens, skipped, positions = (counts.get(k, 0.0) for k in ("student_tokens", "skipped_tokens", "head_positions"))
    forward = 2 * (tokens * (lower + upper) - skipped * lower) + 2 * positions * head
    backward = 2 * tokens * upper + 2 * positions * head
    return float(forward + backward)


def peak_flops(device: torch.device, bf16: bool) -> float | None:
    """Dense peak FLOP/s of the device for the compute dtype (None where unknown, e.g. CPUs)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    table = {"H100": (989e12, 67e12), "H200": (989e12, 67e12), "A100": (312e12, 19.5e12), "L40S": (362e12, 91.6e12)}
    for key, (half, single) in table.items():
        if key in name:
            return half if bf16 else single
    return None


# ------------------------------------------------------------------ engines

def run_ours(cfg: EraseConfig, source: ModelSource, steps: int, warmup: int = 1, text_tokens: int | None = None,
             fluency_dir: str | None = None, label: str = "elm") -> BenchResult:
    """``warmup + steps`` optimizer steps of the project's engine; the last ``steps`` are measured."""
    from .trainer import prepare, train

    device = resolve_device(cfg.model.device)
    per_step = cfg.train.batch_size * cfg.train.grad_accum
    model, tokenizer = source.load(cfg)
    cfg = bench_config(cfg, (steps + warmup) * per_step, tokenizer, text_tokens, fluency_dir)
    timer = PhaseTimer(device=device)
    with PeakMemory(device) as memory:
        run = prepare(cfg, model, tokenizer, progress=False, timer=timer)
        generation = timer.seconds.get("generation", 0.0)
        texts = len(run.concepts[0].data.erase)
        if warmup:
            run.cfg.train.steps = warmup
            train(run, progress=False)
        timer.reset()
        run.cfg.train.steps = steps
        history = train(run, progress=False)[-steps:]
    step_seconds = [row["seconds"] for row in history]
    phases = dict(timer.seconds)
    phases["other"] = max(sum(step_seconds) - sum(phases.values()), 0.0)
    phases["generation"] = generation * min(1.0, steps * per_step / texts) if cfg.elm.l_fluency else 0.0
    bf16 = cfg.model.dtype == "bfloat16" or (cfg.speed.autocast and device.type == "cuda")
    result = BenchResult(label, steps * per_step, int(sum(row["tokens"] for row in history)), sum(step_seconds),
                         phases["generation"], phases, step_seconds, memory.peak, memory.kind, _device_name(device),
                         _settings(cfg, source), student_flops(run.model, timer.counts, first_lora_layer(cfg.lora)),
                         peak_flops(device, bf16))
    del run, model
    release_memory()
    return result


def run_reference(cfg: EraseConfig, source: ModelSource, samples: int,
                  text_tokens: int | None = None) -> BenchResult:
    """``samples`` samples of the reference engine (batch 1, float32), each timed."""
    cfg = reference_config(cfg)
    device = resolve_device(cfg.model.device)
    model, tokenizer = source.load(cfg)
    cfg = bench_config(cfg, samples, tokenizer, text_tokens)
    timer = PhaseTimer(device=device)
    with PeakMemory(device) as memory:
        engine = ReferenceEngine(cfg, model, tokenizer, timer)
        seconds = engine.run(samples)
    per_step = cfg.train.grad_accum
    steps = [sum(seconds[i: i + per_step]) for i in range(0, len(seconds), per_step)]
    phases = dict(timer.seconds)
    phases["other"] = max(sum(seconds) - sum(phases.values()), 0.0)
    train_seconds = sum(seconds) - phases.get("generation", 0.0)
    result = BenchResult("reference", samples, int(timer.counts["student_tokens"]), train_seconds,
                         phases.get("generation", 0.0), phases, steps, memory.peak, memory.kind, _device_name(device),
                         _settings(cfg, source), student_flops(engine.model, timer.counts, first_lora_layer(cfg.lora)),
                         peak_flops(device, cfg.model.dtype == "bfloat16"), sample_seconds=seconds)
    del engine, model
    release_memory()
    return result


@dataclass
class BenchPlan:
    """What ``run_bench`` runs."""

    cfg: EraseConfig
    source: ModelSource = field(default_factory=ModelSource)
    engines: tuple[str, ...] = ("elm", "reference")
    steps: int = 3
    warmup: int = 1
    reference_samples: int = 4
    text_tokens: int | None = None
    ablate: bool = False


def run_bench(plan: BenchPlan, on_result=None) -> list[BenchResult]:
    """Our engine (and, with ``ablate``, each speed switch off in turn, then all off), then the reference engine."""
    results = []

    def done(result: BenchResult) -> None:
        results.append(result)
        if on_result:
            on_result(result)

    with tempfile.TemporaryDirectory(prefix="elmerase-bench-") as fluency_dir:
        if "elm" in plan.engines:
            done(run_ours(plan.cfg, plan.source, plan.steps, plan.warmup, plan.text_tokens, fluency_dir))
        if plan.ablate:
            for name, cfg in ablation_configs(plan.cfg):
                done(run_ours(cfg, plan.source, plan.steps, plan.warmup, plan.text_tokens, fluency_dir, name))
        if "reference" in plan.engines:
            done(run_reference(plan.cfg, plan.source, plan.reference_samples, plan.text_tokens))
    return results


def ablation_configs(cfg: EraseConfig) -> list[tuple[str, EraseConfig]]:
    """Our engine with each equivalence-tested switch off in turn, then with all of them off (the plain path)."""
    out = []
    for name in ABLATIONS:
        out.append((f"elm -{name}", replace(cfg, speed=replace(cfg.speed, **{name: False}))))
    out.append(("elm plain path", replace(cfg, speed=replace(cfg.speed, **{name: False for name in ABLATIONS}))))
    return out


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu x{torch.get_num_threads()} threads"


def _settings(cfg: EraseConfig, source: ModelSource) -> str:
    return (f"{source.describe(cfg)} {cfg.model.dtype}{' +autocast' if cfg.speed.autocast else ''}, "
            f"batch {cfg.train.batch_size}x{cfg.train.grad_accum}, <= {cfg.data.max_tokens} tok, "
            f"LoRA r{cfg.lora.rank} layers {min(cfg.lora.layers)}-{max(cfg.lora.layers)}")


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")
