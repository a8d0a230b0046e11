"""Run a suite: read every set, load the base model once, evaluate the original model and each erased model.

The original model is scored once per run (its Scorer cache also serves the reverse-perplexity pass of every
adapter); adapters are switched on and off on the same base model. The result is a dict (``eval.json``):

    {"suite": ..., "labels": ["original", "erased"], "models": {...},
     "metrics": {"mcq/hp/pmi": {"unit": "fraction", "chance": 0.25,
                                "values": {"original": {"value": 0.39, "stderr": 0.024}, "erased": {...}}}, ...},
     "details": {...}, "generations": [...], "timing": {...}, "suite_config": {...}}
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import ConfigError, ModelConfig
from ..models import load_model
from . import lmeval as lmeval_mod
from .fluency import generate, reverse_perplexity, summarize as summarize_fluency
from .generations import generate_styles
from .mcq import choice_scores, letter_ids, summarize as summarize_mcq
from .mcq_data import Question, load_questions
from .perplexity import load_texts, perplexity
from .probes import Probe, load_probes, probe
from .scoring import Scorer
from .suite import Suite, load_suite, suite_to_dict
from .variants import ORIGINAL, Variants

log = logging.getLogger(__name__)


@dataclass
class SuiteData:
    """Every set of a suite, read and checked before any model time is spent."""

    mcq: list[tuple[Any, list[Question], list[Question]]] = field(default_factory=list)  # spec, questions, shots
    probes: list[tuple[Any, list[Probe]]] = field(default_factory=list)
    texts: list[tuple[Any, list[str]]] = field(default_factory=list)
    prompts: list[tuple[Any, list[str]]] = field(default_factory=list)  # fluency spec, prompts


class MetricTable:
    """metric name -> unit, extras and one {value, stderr} per model label."""

    def __init__(self) -> None:
        self.metrics: dict[str, dict] = {}

    def add(self, name: str, label: str, value: float, stderr: float | None = None, unit: str = "fraction",
            **extra: Any) -> None:
        entry = self.metrics.setdefault(name, {"unit": unit, **extra, "values": {}})
        entry["values"][label] = {"value": _clean(value), "stderr": _clean(stderr)}


def _clean(x: float | None) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def as_suite(suite: Suite | str | Path | dict, variables: dict | None = None,
             overrides: list[str] | None = None) -> Suite:
    if isinstance(suite, Suite):
        suite.validate()
        return suite
    if isinstance(suite, dict):
        from ..config import from_dict

        built = from_dict(Suite, suite)
        built.validate()
        return built
    return load_suite(suite, variables, overrides)


def load_data(suite: Suite) -> SuiteData:
    data = SuiteData()
    for spec in suite.mcq:
        data.mcq.append((spec, *_mcq_set(spec, suite)))
    data.probes = [(spec, load_probes(spec.items or spec.source)) for spec in suite.probes]
    data.texts = [(spec, load_texts(spec.texts or spec.source, spec.column)) for spec in suite.perplexity]
    data.prompts = [(spec, _prompts(spec)) for spec in suite.fluency]
    return data


def _mcq_set(spec, suite: Suite) -> tuple[list[Question], list[Question]]:
    common = {"subjects": spec.subjects or None, "num_choices": spec.num_choices, "skip_bad": suite.skip_bad}
    questions = load_questions(spec.source, split=spec.split, **common)
    pool: list[Question] = []
    if spec.shots:
        if spec.fewshot_source:
            pool = load_questions(spec.fewshot_source, split="dev", **common)
        elif Path(spec.source).expanduser().is_dir():
            pool = load_questions(spec.source, split="dev", **common)
        else:
            pool, questions = questions[: spec.shots], questions[spec.shots:]
    limits = [n for n in (spec.limit, suite.limit) if n]
    if limits:
        questions = questions[: min(limits)]
    if not questions:
        raise ConfigError(f"mcq '{spec.name}' has no question left to evaluate after the shots and limits")
    return questions, pool


def _prompts(spec) -> list[str]:
    prompts = list(spec.prompts)
    if spec.source:
        path = Path(spec.source).expanduser()
        if path.suffix.lower() == ".jsonl":
            prompts += load_texts(str(path), "prompt")
        else:
            prompts += [line for line in load_texts(str(path))[0].splitlines() if line.strip()]
    return prompts


def _load(model: Any) -> tuple[Any, Any, ModelConfig]:
    if isinstance(model, (tuple, list)):
        m, tok = model
        return m, tok, ModelConfig(device=str(next(m.parameters()).device))
    cfg = model if isinstance(model, ModelConfig) else ModelConfig(name=str(model))
    m, tok = load_model(cfg)
    return m, tok, cfg


def run_suite(suite: Suite | str | Path | dict, model: Any, adapters: dict[str, str] | None = None,
              output_dir: str | Path | None = None, *, variables: dict[str, str] | None = None,
              overrides: list[str] | None = None, plot: bool = True) -> dict:
    """Evaluate the original model and each adapter / merged model of ``adapters`` (label -> folder) on ``suite``.

    ``model`` is a ModelConfig, a model name, or an already-loaded ``(model, tokenizer)`` (a PeftModel without
    ``adapters`` compares its adapters, adapter off = original). Writes eval.json, report.md and eval.png into
    ``output_dir`` when given. Returns the eval.json dict.
    """
    suite = as_suite(suite, variables, overrides)
    if suite.is_empty():
        raise ConfigError("the suite measures nothing: give mcq, probes, perplexity, fluency, generations or lmeval")
    data = load_data(suite)
    start = time.perf_counter()
    base, tokenizer, cfg = _load(model)
    variants = Variants(base, tokenizer, adapters, cfg)
    run = _Run(suite, data, variants)
    try:
        for label in variants.labels:
            run.evaluate(label)
        run.score_fluency()
    finally:
        variants.close()
    results = run.results(time.perf_counter() - start)
    if output_dir is not None:
        from .report import write_report

        write_report(results, output_dir, plot=plot)
    return results


class _Run:
    """State of one run: the metric table, details, texts generated for the fluency pass, timings."""

    def __init__(self, suite: Suite, data: SuiteData, variants: Variants):
        self.suite, self.data, self.variants = suite, data, variants
        self.table = MetricTable()
        self.details: dict[str, dict] = {"mcq": {}, "probes": {}, "perplexity": {}, "fluency": {}, "lmeval": {}}
        self.generated: dict[str, dict[str, list[str]]] = {}  # fluency set -> label -> continuations
        self.side_by_side = [{"prompt": p} for p in suite.generations.prompts]
        self.timing: dict[str, dict[str, float]] = {}
        self.scorers: dict[str, Scorer] = {}

    def _time(self, label: str, key: str, began: float) -> None:
        self.timing.setdefault(label, {})[key] = round(time.perf_counter() - began, 2)

    def evaluate(self, label: str) -> None:
        log.info("evaluating %s", label)
        with self.variants.active(label) as (model, tokenizer):
            scorer = Scorer(model, tokenizer, batch_size=self.suite.batch_size, progress=self.suite.progress)
            if label == ORIGINAL:
                self.scorers[ORIGINAL] = scorer  # reused to score every model's fluency continuations
                self._check_letters(scorer)
            self._mcq(label, scorer)
            self._probes(label, scorer)
            self._perplexity(label, scorer)
            self._generate(label, model, tokenizer)
            self._lmeval(label, model, tokenizer)

    def _check_letters(self, scorer: Scorer) -> None:
        """Fail before any pass when a set asks for letter scoring and the tokenizer has no letter tokens."""
        for spec, questions, _ in self.data.mcq:
            if "letter" in spec.modes:
                letter_ids(scorer, max(len(q.choices) for q in questions))

    def _mcq(self, label: str, scorer: Scorer) -> None:
        for spec, questions, pool in self.data.mcq:
            for mode in spec.modes:
                began = time.perf_counter()
                scores = choice_scores(scorer, questions, mode, shots=spec.shots, fewshot=pool, subject=spec.subject)
                result = summarize_mcq(mode, questions, scores, time.perf_counter() - began)
                self._time(label, f"mcq/{spec.name}/{mode}", began)
                log.info("%s mcq/%s/%s: %.3f (n=%d)", label, spec.name, mode, result.accuracy, result.n)
                chance = sum(1 / len(q.choices) for q in questions) / len(questions)
                self.table.add(f"mcq/{spec.name}/{mode}", label, result.accuracy, result.stderr, "fraction",
                               chance=round(chance, 4), n=result.n)
                self.details["mcq"].setdefault(spec.name, {}).setdefault(mode, {})[label] = result.to_dict()

    def _probes(self, label: str, scorer: Scorer) -> None:
        for spec, probes in self.data.probes:
            began = time.perf_counter()
            result = probe(scorer.model, scorer.tokenizer, probes, scorer=scorer)
            self._time(label, f"probe/{spec.name}", began)
            self.table.add(f"probe/{spec.name}/mean_prob", label, result.mean_prob, result.mean_prob_stderr)
            self.table.add(f"probe/{spec.name}/top1", label, result.top1_rate, result.top1_stderr)
            self.table.add(f"probe/{spec.name}/median_rank", label, result.median_rank, None, "count")
            self.details["probes"].setdefault(spec.name, {})[label] = result.to_dict()

    def _perplexity(self, label: str, scorer: Scorer) -> None:
        for spec, texts in self.data.texts:
            began = time.perf_counter()
            result = perplexity(scorer.model, scorer.tokenizer, texts, window=spec.window,
                                max_tokens=spec.max_tokens, scorer=scorer)
            self._time(label, f"ppl/{spec.name}", began)
            self.table.add(f"ppl/{spec.name}", label, result.ppl, result.stderr, "perplexity",
                           n_tokens=result.n_tokens)
            self.details["perplexity"].setdefault(spec.name, {})[label] = result.to_dict()

    def _generate(self, label: str, model, tokenizer) -> None:
        progress, batch = self.suite.progress, self.suite.batch_size
        for spec, prompts in self.data.prompts:
            began = time.perf_counter()
            texts = generate(model, tokenizer, prompts, spec.sampling, batch_size=batch, progress=progress)
            self.generated.setdefault(spec.name, {})[label] = texts
            self._time(label, f"fluency/{spec.name}/generate", began)
        if self.side_by_side:
            began = time.perf_counter()
            outputs = generate_styles(model, tokenizer, self.suite.generations.prompts, self.suite.generations,
                                      batch_size=batch, progress=progress)
            for i, row in enumerate(self.side_by_side):
                row[label] = {style: texts[i] for style, texts in outputs.items()}
            self._time(label, "generations", began)

    def _lmeval(self, label: str, model, tokenizer) -> None:
        if not self.suite.lmeval.tasks:
            return
        began = time.perf_counter()
        for task, metrics in lmeval_mod.run_lmeval(model, tokenizer, self.suite.lmeval).items():
            for metric, entry in metrics.items():
                self.table.add(f"lmeval/{task}/{metric}", label, entry["value"], entry["stderr"])
            self.details["lmeval"].setdefault(task, {})[label] = metrics
        self._time(label, "lmeval", began)

    def score_fluency(self) -> None:
        """Score every model's continuations with the reference (the original model unless a spec names one)."""
        for spec, prompts in self.data.prompts:
            expanded = [p for p in prompts for _ in range(spec.sampling.samples_per_prompt)]
            with self._reference(spec.reference) as scorer:
                for label, texts in self.generated.get(spec.name, {}).items():
                    began = time.perf_counter()
                    ppls = reverse_perplexity(scorer.model, scorer.tokenizer, expanded, texts, scorer=scorer)
                    result = summarize_fluency(expanded, texts, ppls, time.perf_counter() - began)
                    self._time(label, f"fluency/{spec.name}/score", began)
                    self._add_fluency(spec.name, label, result)

    def _add_fluency(self, name: str, label: str, result) -> None:
        base = f"fluency/{name}"
        self.table.add(f"{base}/reverse_ppl", label, result.reverse_ppl_mean, result.reverse_ppl_stderr, "perplexity")
        self.table.add(f"{base}/reverse_ppl_median", label, result.reverse_ppl_median, None, "perplexity")
        self.table.add(f"{base}/distinct_1", label, result.distinct_1)
        self.table.add(f"{base}/distinct_2", label, result.distinct_2)
        self.table.add(f"{base}/longest_repeat", label, result.longest_repeat, None, "count")
        self.details["fluency"].setdefault(name, {})[label] = result.to_dict()

    def _reference(self, name: str):
        import contextlib

        if not name:
            @contextlib.contextmanager
            def original():
                with self.variants.active(ORIGINAL):
                    yield self.scorers[ORIGINAL]
            return original()
        model, tokenizer = load_model(ModelConfig(**{**self.variants.model_cfg.__dict__, "name": name}))
        return contextlib.nullcontext(Scorer(model, tokenizer, batch_size=self.suite.batch_size,
                                             progress=self.suite.progress))

    def results(self, seconds: float) -> dict:
        return {"suite": self.suite.name, "description": self.suite.description, "labels": self.variants.labels,
                "models": self.variants.describe(), "metrics": self.table.metrics, "details": self.details,
                "generations": self.side_by_side, "timing": self.timing, "seconds": round(seconds, 2),
                "suite_config": suite_to_dict(self.suite)}
