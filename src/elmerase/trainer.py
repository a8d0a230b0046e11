"""The ELM training loop: batches -> frozen targets -> three losses -> AdamW step -> log.

    L = l_erase * CE(model(x), P'(x)) + l_retain * CE(model(r), frozen(r)) + l_fluency * CE(model(f), f)

P' is built from the frozen model (the same weights with the adapter switched off) by ``targets.erase_targets``.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field

import torch

from .config import EraseConfig
from .data import ConceptData, Stream, concept_schedule, load_concept
from .fluency import build_fluency_set
from .losses import distribution_loss, hard_cross_entropy
from .models import attach_lora, load_model, lora_parameters, uses_bos
from .prompts import PromptBank, concept_phrase
from .targets import Batch, EraseExample, FluencyExample, encode, erase_targets, fluency_rows, retain_targets

log = logging.getLogger(__name__)


@dataclass
class ConceptState:
    """One concept's tokenized data and its seeded streams."""

    data: ConceptData
    erase: Stream  # of (text_ids, FluencyExample | None)
    retain: Stream  # of text_ids


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


def set_seed(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def prepare(cfg: EraseConfig, model=None, tokenizer=None, progress: bool = True) -> Run:
    """Load the model (unless given), attach LoRA, read and tokenize data, build the fluency set."""
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
            with peft_model.disable_adapter():
                fluency = build_fluency_set(peft_model, tokenizer, data.erase, erase_ids, concept, bank,
                                            cfg.fluency, bos, cfg.train.seed, progress)
        states.append(ConceptState(data, Stream(list(zip(erase_ids, fluency)), rng), Stream(retain_ids, rng)))
    return Run(cfg, peft_model, tokenizer, bos, pad_id, bank, states, rng)


def micro_batch_losses(run: Run, state: ConceptState) -> dict[str, float]:
    """Draw one micro-batch of the concept, compute the three losses, backpropagate each; return their values.

    Each loss is a mean over the real token positions of its batch; the backward of each is scaled by its
    weight and by 1 / grad_accum (gradients add up over the micro-batches of a step).
    """
    cfg, model = run.cfg, run.model
    device = next(model.parameters()).device
    size = cfg.train.batch_size
    picked = state.erase.take(size)
    scale = 1.0 / cfg.train.grad_accum
    values: dict[str, float] = {"tokens": 0.0}
    if cfg.elm.l_erase:
        examples = []
        for text_ids, _ in picked:
            ctx = run.bank.draw_contexts(run.rng, state.data.concept)
            examples.append(EraseExample(text_ids, encode(run.tokenizer, ctx.expert),
                                         encode(run.tokenizer, ctx.novice)))
        model.eval()
        with model.disable_adapter():
            indices, probs = erase_targets(model, examples, run.bos, run.pad_id, cfg.elm)
        model.train()
        batch = Batch.from_rows([run.bos + ex.text for ex in examples], run.pad_id, device)
        logits = _student_logits(model, batch)
        values["tokens"] += batch.n_tokens
        loss = distribution_loss(cfg.elm.erase_loss, logits, indices, probs)
        values["erase"] = _backward(loss, cfg.elm.l_erase * scale)
    if cfg.elm.l_retain:
        rows = [run.bos + ids for ids in state.retain.take(size)]
        model.eval()
        with model.disable_adapter():
            indices, probs = retain_targets(model, rows, run.pad_id, cfg.elm.retain_loss)
        model.train()
        batch = Batch.from_rows(rows, run.pad_id, device)
        logits = _student_logits(model, batch)
        values["tokens"] += batch.n_tokens
        kind = "ce" if cfg.elm.retain_loss == "hard_ce" else cfg.elm.retain_loss
        values["retain"] = _backward(distribution_loss(kind, logits, indices, probs), cfg.elm.l_retain * scale)
    if cfg.elm.l_fluency:
        examples_f: list[FluencyExample] = [f for _, f in picked]
        rows, labels = fluency_rows(examples_f, run.bos)
        batch = Batch.from_rows(rows, run.pad_id, device)
        label_t = Batch.from_rows(labels, -100, device).input_ids
        model.train()
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        values["tokens"] += batch.n_tokens
        keep = label_t != -100
        loss = hard_cross_entropy(logits[keep], label_t[keep]).mean()
        values["fluency"] = _backward(loss, cfg.elm.l_fluency * scale)
    return values


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
            for key, value in micro_batch_losses(run, run.concepts[next(schedule)]).items():
                sums[key] = sums.get(key, 0.0) + value
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
    row["tokens_per_s"] = round(sums.get("tokens", 0.0) / max(seconds, 1e-9), 1)
    return row
