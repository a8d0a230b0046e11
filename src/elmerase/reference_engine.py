"""The reference engine: the cost structure of the ELM authors' released training loop, for ``elmerase bench``.

Written for this project from the paper and from measurements of the released code; it is not that code. It keeps
the method (same target, same losses) and re-creates where the time goes. Per sample, batch 1, the model in float32
unless told otherwise:

1. the LoRA model's logits on the erase text (BOS + text);
2. three separate frozen passes (text, expert context + text, novice context + text, each tokenized as one string);
   their logits go to float64, are divided by T and log-softmaxed over the whole vocabulary, the text's positions
   are picked by boolean masks; eta ramps over the positions and is repeated to [n, V]; target = base + eta *
   (novice - expert) is clamped to its top k, softmaxed;
3. soft cross-entropy against that target and its backward;
4. a frozen pass over a retain text (softmax over the vocabulary, argmax), the LoRA pass, hard CE, backward;
5. a fresh guided generation of min..max new tokens (100-300) with ``generate`` and a logits processor that runs the
   expert and novice streams with their own key/value caches, encoded anew for every sample;
6. the LoRA pass over text + deflection + continuation, CE on what follows the text, backward;
7. an AdamW step every ``batch_size x grad_accum`` samples (the same samples per step as the engine it is compared to).
"""

from __future__ import annotations

import random
import time

import torch
import torch.nn.functional as F
from transformers import LogitsProcessor, LogitsProcessorList

from .config import EraseConfig
from .data import load_concept
from .models import attach_lora, lora_parameters
from .prompts import PromptBank, concept_phrase, guidance_prefix
from .timing import PhaseTimer


class GuidanceStreams(LogitsProcessor):
    """log_softmax(scores) - gamma * (log p(. | expert stream) - log p(. | novice stream)).

    Each stream is its context followed by the tokens generated so far, run with its own key/value cache; the
    contexts are encoded on the first call, so a new processor (one per sample) re-encodes them.
    """

    def __init__(self, model, expert_ids: torch.Tensor, novice_ids: torch.Tensor, gamma: float):
        self.model = model
        self.inputs = [expert_ids, novice_ids]
        self.gamma = gamma
        self.caches: list | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores = F.log_softmax(scores, dim=-1)
        if self.gamma == 0:
            return scores
        if self.caches is None:
            outs = [self.model(input_ids=ids, use_cache=True) for ids in self.inputs]
        else:
            step = input_ids[:, -1:]
            outs = [self.model(input_ids=step, cache=cache, use_cache=True) for cache in self.caches]
        self.caches = [out.cache for out in outs]
        expert, novice = (F.log_softmax(out.logits[:, -1].float(), dim=-1) for out in outs)
        return scores - self.gamma * (expert - novice)


class ReferenceEngine:
    """One sample at a time, as the released loop; ``run(samples)`` returns the seconds of each sample."""

    def __init__(self, cfg: EraseConfig, model, tokenizer, timer: PhaseTimer | None = None):
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.model = attach_lora(model, cfg.lora)
        self.timer = timer or PhaseTimer(enabled=False)
        self.device = next(self.model.parameters()).device
        spec = cfg.concepts[0]
        self.concept = concept_phrase(spec.concept)
        self.data = load_concept(spec, cfg.data, self.concept)
        self.data.erase = [self._cut(t) for t in self.data.erase]
        self.data.retain = [self._cut(t) for t in self.data.retain]
        self.bank = PromptBank(cfg.prompts.expert_templates, cfg.prompts.novice_templates, cfg.prompts.deflections)
        self.rng = random.Random(cfg.train.seed)
        self.optimizer = torch.optim.AdamW(lora_parameters(self.model), lr=cfg.train.lr)
        self.per_step = cfg.train.batch_size * cfg.train.grad_accum
        self.done = 0

    def run(self, samples: int) -> list[float]:
        seconds = []
        for _ in range(samples):
            start = time.perf_counter()
            self.sample(self.data.erase[self.done % len(self.data.erase)],
                        self.data.retain[self.done % len(self.data.retain)])
            self.done += 1
            if self.done % self.per_step == 0:
                with self.timer.phase("optimizer"):
                    self.optimizer.step()
                    self.optimizer.zero_grad()
            seconds.append(time.perf_counter() - start)
        return seconds

    def sample(self, text: str, retain: str) -> dict[str, float]:
        elm = self.cfg.elm
        ctx = self.bank.draw_contexts(self.rng, self.concept)
        values = {}
        if elm.l_erase:
            with self.timer.phase("student_erase"):
                inputs = self._tokens(text)
                logits = self._student(inputs)
            with self.timer.phase("frozen"):
                target = self.erase_target(text, ctx.expert, ctx.novice)
            with self.timer.phase("student_erase"):
                values["erase"] = self._backward(elm.l_erase * F.cross_entropy(logits[0], target))
        if elm.l_retain:
            values["retain"] = self.retain_loss(retain)
        if elm.l_fluency:
            values["fluency"] = self.fluency_loss(text, ctx)
        return values

    @torch.no_grad()
    def erase_target(self, text: str, expert: str, novice: str) -> torch.Tensor:
        """P' over the whole vocabulary for every position of BOS + text, as float64 [n, V] tensors."""
        elm = self.cfg.elm
        self.model.eval()
        with self.model.disable_adapter():
            logp = [F.log_softmax(self.model(**self._tokens(p)).logits[0].to(torch.float64) / elm.temperature, dim=-1)
                    for p in (text, expert + text, novice + text)]
        self.model.train()
        n, vocab = logp[0].shape
        # the text's positions picked with boolean masks, as the original does (each pick is a copy; slices are not)
        base, expert_lp, novice_lp = (lp[self._text_mask(len(lp), n)] for lp in logp)
        if elm.eta_schedule == "linear":
            ramp = torch.linspace(elm.eta_start, elm.eta, n, dtype=torch.float64, device=self.device)
        else:
            ramp = torch.full((n,), elm.eta, dtype=torch.float64, device=self.device)
        eta = ramp[:, None].repeat(1, vocab)
        target = base + eta * (novice_lp - expert_lp)
        if 0 < elm.top_k < vocab:
            clamped = torch.clamp(target, min=torch.topk(target, elm.top_k, dim=-1).values[:, -1:])
            target[target != clamped] = -torch.inf
        return torch.softmax(target, dim=-1).to(self.model.dtype)

    def retain_loss(self, retain: str) -> float:
        inputs = self._tokens(retain)
        with self.timer.phase("frozen"), torch.no_grad():
            self.model.eval()
            with self.model.disable_adapter():
                labels = self.model(**inputs).logits.softmax(dim=-1)[0].argmax(-1)
            self.model.train()
        with self.timer.phase("student_retain"):
            logits = self._student(inputs)
            return self._backward(self.cfg.elm.l_retain * F.cross_entropy(logits[0], labels))

    def fluency_loss(self, text: str, ctx) -> float:
        deflection = self.bank.draw_deflection(self.rng)
        with self.timer.phase("generation"):
            full = self.generate(f"{text}. {deflection}", ctx)
        start = self._tokens(text)["input_ids"].shape[1]
        with self.timer.phase("student_fluency"):
            logits = self._student({"input_ids": full, "attention_mask": torch.ones_like(full)})
            loss = F.cross_entropy(logits[0, start:-1], full[0, start + 1:])
            return self._backward(self.cfg.elm.l_fluency * loss)

    def generate(self, prompt: str, ctx) -> torch.Tensor:
        """Prompt + a fresh guided continuation of a random length in [min_new_tokens, max_new_tokens], as ids.

        (The original decodes the continuation and tokenizes prompt + continuation again; the ids are kept here so
        that random-weight models with a small tokenizer keep the same token counts.)
        """
        settings = self.cfg.fluency
        inputs = self._tokens(prompt)
        streams = GuidanceStreams(self.model, self._tokens(guidance_prefix(ctx.expert))["input_ids"],
                                  self._tokens(guidance_prefix(ctx.novice))["input_ids"], settings.gamma)
        length = self.rng.randint(settings.min_new_tokens, settings.max_new_tokens)
        self.model.eval()
        with self.model.disable_adapter():
            out = self.model.generate(**inputs, max_new_tokens=length, do_sample=True, top_k=None,
                                      logits_processor=LogitsProcessorList([streams]),
                                      pad_token_id=self.tokenizer.pad_token_id)
        self.model.train()
        self.timer.count("generated_tokens", out.shape[1] - inputs["input_ids"].shape[1])
        return out

    def _text_mask(self, length: int, n: int) -> torch.Tensor:
        """True at the last ``n`` of ``length`` positions."""
        return torch.cat([torch.zeros(length - n, dtype=torch.bool), torch.ones(n, dtype=torch.bool)]).to(self.device)

    def _cut(self, text: str) -> str:
        """The text cut to data.max_tokens tokens, as our engine cuts it (the same work for both engines)."""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return text if len(ids) <= self.cfg.data.max_tokens else self.tokenizer.decode(ids[: self.cfg.data.max_tokens])

    def _tokens(self, text: str) -> dict:
        return {k: v.to(self.device) for k, v in self.tokenizer(text, return_tensors="pt").items()
                if k in ("input_ids", "attention_mask")}

    def _student(self, inputs: dict) -> torch.Tensor:
        self.model.train()
        tokens = inputs["input_ids"].numel()
        self.timer.count("student_tokens", tokens)
        self.timer.count("head_positions", tokens)
        return self.model(**inputs).logits

    @staticmethod
    def _backward(loss: torch.Tensor) -> float:
        loss.backward()
        return loss.item()
