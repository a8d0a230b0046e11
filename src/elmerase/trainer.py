"""The ELM training loop: batches -> frozen targets -> three losses -> AdamW step -> log.

    L = l_erase * CE(model(x), P'(x)) + l_retain * CE(model(r), frozen(r)) + l_fluency * CE(model(f), f)

P' is built from the frozen model (the same weights with the adapter switched off) by ``targets.erase_targets``.
With the ``speed`` switches on (the default) the same losses come from hidden states: one frozen pass per batch with
cached prefixes, the student pass started above the shared lower layers, the LM head applied in chunks fused with the
loss (passes.py, targets.py, losses.py); tests/test_equivalence.py checks losses and gradients against the plain path.
"""

from __future__ import annotations

import logging
import random
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import torch

from .config import EraseConfig
from .data import ConceptData, Stream, concept_schedule, load_concept
from .fluency import build_fluency_set
from .losses import distribution_loss, fused_distribution_loss, fused_teacher_loss, hard_cross_entropy
from .models import attach_lora, first_lora_layer, load_model, lora_parameters, uses_bos
from .passes import SplitModel, TemplateCache, decode, split_model
from .prompts import PromptBank, concept_phrase
from .targets import (Batch, EraseExample, FluencyExample, encode, erase_targets, erase_targets_from_hidden,
                      fluency_rows, frozen_erase_hidden, frozen_hidden, retain_targets, retain_targets_from_hidden)
from .timing import PhaseTimer

log = logging.getLogger(__name__)


@dataclass
class ConceptState:
    """One concept's tokenized data and its seeded streams."""

    data: ConceptData
    erase: Stream  # of (text_ids, FluencyExample | None)
    retain: Stream  # of text_ids
    pending: dict = field(default_factory=dict)  # length-bucketed micro-batches still to use (speed.bucket_by_length)


@dataclass
class Run:
    """Everything the loop needs, prepared once."""

    cfg: EraseConfig
    model: torch.nn.Module  # PeftModel
    tokenizer: object
    bos: list[int]
    pad_id: int
    bank: PromptBank
    concepts: list[ConceptState]
    rng: random.Random
    history: list[dict] = field(default_factory=list)
    timer: PhaseTimer = field(default_factory=lambda: PhaseTimer(enabled=False))
    split: SplitModel | None = None  # the fast engine's decoder / LM head; None: the plain path
    templates: TemplateCache | None = None  # cached prefix keys and values (speed.prefix_cache)
    capture: int | None = None  # first LoRA layer, whose input the frozen pass hands to the student
    retain_labels: dict = field(default_factory=dict)  # retain row -> frozen argmax labels (speed.retain_cache)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def set_seed(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def prepare(cfg: EraseConfig, model=None, tokenizer=None, progress: bool = True,
            timer: PhaseTimer | None = None) -> Run:
    """Load the model (unless given), attach LoRA, read and tokenize data, build the fluency set."""
    timer = timer or PhaseTimer(enabled=False)
    cfg.validate()
    set_seed(cfg.train.seed)
    if model is None:
        model, tokenizer = load_model(cfg.model)
    bos = [tokenizer.bos_token_id] if uses_bos(tokenizer) else []
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    bank = PromptBank(cfg.prompts.expert_templates, cfg.prompts.novice_templates, cfg.prompts.deflections)
    peft_model = attach_lora(model, cfg.lora)
    rng = random.Random(cfg.train.seed)
    states = []
    for spec in cfg.concepts:
        concept = concept_phrase(spec.concept)
        data = load_concept(spec, cfg.data, concept)
        erase_ids = [encode(tokenizer, t, cfg.data.max_tokens) for t in data.erase]
        retain_ids = [encode(tokenizer, t, cfg.data.max_tokens) for t in data.retain]
        fluency: list = [None] * len(erase_ids)
        if cfg.elm.l_fluency:
            peft_model.eval()
            with peft_model.disable_adapter(), timer.phase("generation"):
                fluency = build_fluency_set(peft_model, tokenizer, data.erase, erase_ids, concept, bank,
                                            cfg.fluency, bos, cfg.train.seed, progress, cfg.speed.fused_guidance)
        states.append(ConceptState(data, Stream(list(zip(erase_ids, fluency)), rng), Stream(retain_ids, rng)))
    run = Run(cfg, peft_model, tokenizer, bos, pad_id, bank, states, rng, timer=timer)
    _enable_speed(run)
    return run


def _enable_speed(run: Run) -> None:
    """Set up the fast engine's parts as ``cfg.speed`` asks (nothing for the plain path)."""
    speed = run.cfg.speed
    if speed.gradient_checkpointing:
        run.model.get_base_model().gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if not (speed.fused_loss or speed.prefix_cache or speed.shared_lower_layers):
        return
    run.split = split_model(run.model)
    if run.split is None:
        return
    run.templates = TemplateCache(run.split) if speed.prefix_cache else None
    first = first_lora_layer(run.cfg.lora)
    run.capture = first if speed.shared_lower_layers and first > 0 else None


def micro_batch_losses(run: Run, state: ConceptState) -> dict[str, float]:
    """Draw one micro-batch of the concept, compute the three losses, backpropagate each; return their values.

    Each loss is a mean over the real token positions of its batch; the backward of each is scaled by its
    weight and by 1 / grad_accum (gradients add up over the micro-batches of a step).
    """
    cfg = run.cfg
    size = cfg.train.batch_size
    scale = 1.0 / cfg.train.grad_accum
    picked = _draw(run, state, "erase", size)
    values: dict[str, float] = {"tokens": 0.0}
    if cfg.elm.l_erase:
        values["erase"], tokens = erase_loss(run, state, [text for text, _ in picked], cfg.elm.l_erase * scale)
        values["tokens"] += tokens
    if cfg.elm.l_retain:
        rows = [run.bos + ids for ids in _draw(run, state, "retain", size)]
        values["retain"], tokens = retain_loss(run, rows, cfg.elm.l_retain * scale)
        values["tokens"] += tokens
    if cfg.elm.l_fluency:
        values["fluency"], tokens = fluency_loss(run, [f for _, f in picked], cfg.elm.l_fluency * scale)
        values["tokens"] += tokens
    return values


def erase_loss(run: Run, state: ConceptState, texts: list[list[int]], weight: float) -> tuple[float, int]:
    """CE of the LoRA model against P' on the bare texts; returns (loss, tokens)."""
    examples = []
    for text_ids in texts:
        ctx = run.bank.draw_contexts(run.rng, state.data.concept)
        examples.append(EraseExample(text_ids, encode(run.tokenizer, ctx.expert), encode(run.tokenizer, ctx.novice)))
    batch = Batch.from_rows([run.bos + ex.text for ex in examples], run.pad_id, run.device)
    lower = None
    with run.timer.phase("frozen"), frozen_model(run.model):
        if run.split is None:
            indices, probs = erase_targets(run.model, examples, run.bos, run.pad_id, run.cfg.elm)
        else:
            frozen = frozen_erase_hidden(run.split, run.templates, examples, run.bos, run.pad_id, run.capture)
            indices, probs = erase_targets_from_hidden(run.split, frozen, batch.lengths, run.cfg.elm,
                                                       run.cfg.speed.loss_chunk)
            lower = frozen.lower
    with run.timer.phase("student_erase"):
        loss = _student_loss(run, batch, lower, run.cfg.elm.erase_loss, indices, probs)
        return _backward(loss, weight), batch.n_tokens


def retain_loss(run: Run, rows: list[list[int]], weight: float) -> tuple[float, int]:
    """CE (or KL) of the LoRA model against the frozen model on retain rows; returns (loss, tokens)."""
    kind = run.cfg.elm.retain_loss
    batch = Batch.from_rows(rows, run.pad_id, run.device)
    if kind != "hard_ce" and run.split is not None and run.cfg.speed.fused_loss:
        return _teacher_retain_loss(run, rows, batch, kind, weight)
    with run.timer.phase("frozen"):
        indices, probs, lower = _retain_targets(run, rows, kind)
    with run.timer.phase("student_retain"):
        loss = _student_loss(run, batch, lower, "ce" if kind == "hard_ce" else kind, indices, probs)
        return _backward(loss, weight), batch.n_tokens


def _retain_targets(run: Run, rows: list[list[int]], kind: str):
    """(indices, probs, lower hidden states or None); hard labels come from the run's cache when all rows are in it."""
    use_cache = run.cfg.speed.retain_cache and kind == "hard_ce"
    if use_cache and all(tuple(r) in run.retain_labels for r in rows):
        labels = torch.cat([run.retain_labels[tuple(r)] for r in rows])
        return labels, torch.ones_like(labels, dtype=torch.float32), None
    lower = None
    with frozen_model(run.model):
        if run.split is None:
            indices, probs = retain_targets(run.model, rows, run.pad_id, kind)
        else:
            frozen = frozen_hidden(run.split, rows, run.pad_id, run.capture)
            indices, probs = retain_targets_from_hidden(run.split, frozen.rows[0], kind, run.cfg.speed.loss_chunk)
            lower = frozen.lower
    if use_cache:
        for row, labels in zip(rows, indices.split([len(r) for r in rows])):
            run.retain_labels[tuple(row)] = labels
    return indices, probs, lower


def _teacher_retain_loss(run: Run, rows: list[list[int]], batch: Batch, kind: str, weight: float) -> tuple[float, int]:
    """Soft CE / KL against the frozen model's whole distribution, kept as its final hidden states: the LM head of
    both models runs a chunk of positions at a time inside the loss (no [N, V] target)."""
    with run.timer.phase("frozen"), frozen_model(run.model):
        frozen = frozen_hidden(run.split, rows, run.pad_id, run.capture)
    with run.timer.phase("student_retain"):
        run.model.train()
        run.timer.count("student_tokens", batch.input_ids.numel())
        hidden = _student_hidden(run, batch, frozen.lower)
        head = run.split.head
        run.timer.count("head_positions", hidden.shape[0])
        loss = fused_teacher_loss(kind, hidden, frozen.rows[0], head.weight, head.bias, run.cfg.speed.loss_chunk)
        return _backward(loss, weight), batch.n_tokens


def fluency_loss(run: Run, examples: list[FluencyExample], weight: float) -> tuple[float, int]:
    """Hard-label CE on the deflection and guided continuation after each text; returns (loss, tokens)."""
    rows, labels = fluency_rows(examples, run.bos)
    batch = Batch.from_rows(rows, run.pad_id, run.device)
    label_t = Batch.from_rows(labels, -100, run.device).input_ids
    keep = label_t != -100
    with run.timer.phase("student_fluency"):
        run.model.train()
        run.timer.count("student_tokens", batch.input_ids.numel())
        if run.split is None:
            run.timer.count("head_positions", batch.input_ids.numel())
            logits = run.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
            loss = hard_cross_entropy(logits[keep], label_t[keep]).mean()
        else:
            hidden = decode(run.split, batch.input_ids, batch.attention_mask)[keep]
            targets = label_t[keep][:, None]
            loss = _head_loss(run, hidden, "ce", targets, torch.ones_like(targets, dtype=torch.float32))
        return _backward(loss, weight), batch.n_tokens


@contextmanager
def frozen_model(model):
    """The frozen model: eval mode, adapter switched off; train mode again afterwards."""
    model.eval()
    try:
        with model.disable_adapter():
            yield
    finally:
        model.train()


def _student_loss(run: Run, batch: Batch, lower, kind: str, indices, probs) -> torch.Tensor:
    """The LoRA model's loss at the real positions of ``batch``, from ``lower`` (hidden states entering the first
    LoRA layer) when given, else from the tokens."""
    run.model.train()
    run.timer.count("student_tokens", batch.input_ids.numel())
    if run.split is None:
        run.timer.count("head_positions", batch.input_ids.numel())
        return distribution_loss(kind, _student_logits(run.model, batch), indices, probs)
    return _head_loss(run, _student_hidden(run, batch, lower), kind, indices, probs)


def _student_hidden(run: Run, batch: Batch, lower) -> torch.Tensor:
    """The LoRA model's final hidden states [N, H] at the real positions of ``batch``, from ``lower`` when given."""
    if lower is None:
        hidden = decode(run.split, batch.input_ids, batch.attention_mask)
    else:
        run.timer.count("skipped_tokens", batch.input_ids.numel())
        hidden = decode(run.split, attention_mask=batch.attention_mask, inputs_embeds=lower,
                        start_layer=run.capture)
    return hidden[batch.flat_positions()]


def _head_loss(run: Run, hidden: torch.Tensor, kind: str, indices, probs) -> torch.Tensor:
    """The loss of the LM head on final hidden states [N, H]: fused and chunked, or through full logits."""
    head = run.split.head
    run.timer.count("head_positions", hidden.shape[0])
    if run.cfg.speed.fused_loss:
        return fused_distribution_loss(kind, hidden, head.weight, head.bias, indices, probs, run.cfg.speed.loss_chunk)
    return distribution_loss(kind, head(hidden), indices, probs)


def _draw(run: Run, state: ConceptState, which: str, size: int) -> list:
    """The next micro-batch of erase items or retain texts; with speed.bucket_by_length, a step's draw grouped by
    length into its micro-batches."""
    stream = getattr(state, which)
    accum = run.cfg.train.grad_accum
    if not run.cfg.speed.bucket_by_length or accum == 1:
        return stream.take(size)
    queue = state.pending.setdefault(which, [])
    if not queue:
        pool = sorted(stream.take(size * accum), key=lambda item: len(item[0] if which == "erase" else item))
        queue.extend(pool[i: i + size] for i in range(0, len(pool), size))
    return queue.pop(0)


def _student_logits(model, batch: Batch) -> torch.Tensor:
    """The LoRA model's logits at the real positions of ``batch``, flattened to [N, V]."""
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    return out.logits[batch.flat_positions()]


def _backward(loss: torch.Tensor, weight: float) -> float:
    if not torch.isfinite(loss):
        raise FloatingPointError(f"loss became {loss.item()}; lower train.lr or elm.eta, or use dtype=float32")
    (loss * weight).backward()
    return loss.item()


def train(run: Run, progress: bool = True, on_step=None) -> list[dict]:
    """The loop: for each optimizer step, grad_accum micro-batches, a clipped AdamW step, one log row."""
    from tqdm.auto import tqdm

    cfg = run.cfg
    params = lora_parameters(run.model)
    optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    schedule = concept_schedule([c.data.weight for c in run.concepts])
    bar = tqdm(range(cfg.train.steps), desc="erasing", unit="step", disable=not progress)
    for step in bar:
        start = time.perf_counter()
        sums: dict[str, float] = {}
        for _ in range(cfg.train.grad_accum):
            with _autocast(run):
                values = micro_batch_losses(run, run.concepts[next(schedule)])
            for key, value in values.items():
                sums[key] = sums.get(key, 0.0) + value
        with run.timer.phase("optimizer"):
            if cfg.train.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(params, cfg.train.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        seconds = time.perf_counter() - start
        row = _log_row(step, sums, cfg, seconds)
        run.history.append(row)
        bar.set_postfix(erase=row.get("erase"), retain=row.get("retain"), fluency=row.get("fluency"))
        if on_step:
            on_step(row)
    run.model.eval()
    return run.history


def _autocast(run: Run):
    """bfloat16 autocast on CUDA when speed.autocast is on; nothing otherwise."""
    if run.cfg.speed.autocast and run.device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def _log_row(step: int, sums: dict[str, float], cfg: EraseConfig, seconds: float) -> dict:
    accum = cfg.train.grad_accum
    row: dict = {"step": step + 1}
    total = 0.0
    for name, weight in (("erase", cfg.elm.l_erase), ("retain", cfg.elm.l_retain), ("fluency", cfg.elm.l_fluency)):
        if name in sums:
            row[name] = round(sums[name] / accum, 6)
            total += weight * sums[name] / accum
    row["total"] = round(total, 6)
    row["lr"] = cfg.train.lr
    row["seconds"] = round(seconds, 4)
    row["tokens"] = int(sums.get("tokens", 0.0))
    row["tokens_per_s"] = round(sums.get("tokens", 0.0) / max(seconds, 1e-9), 1)
    return row
