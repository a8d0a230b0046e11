"""Evaluate an erasure: the original model against each erased model (adapter or merged), in one run.

    from elmerase.evaluation import run_suite, load_suite
    results = run_suite("harry-potter", "gemma-3-270m", {"erased": "runs/hp/adapter"}, "runs/hp/eval",
                        variables={"HP_MCQ": "hp-mcq/dev.json"})
    results["metrics"]["mcq/hp-mcq/pmi"]["values"]["erased"]   # {"value": ..., "stderr": ...}

Single pieces work on any (model, tokenizer), a PeftModel with its adapter on or inside
``with model.disable_adapter():``: score_mcq, probe, perplexity, fluency / reverse_perplexity, distinct_n,
generate_side_by_side, run_lmeval.
"""

from .fluency import (FluencyResult, SamplingSettings, distinct_n, fluency, generate, longest_repeated_ngram,
                      reverse_perplexity)
from .generations import GenerationSettings, generate_side_by_side
from .lmeval import LmEvalError, LmEvalSettings, run_lmeval
from .mcq import MODES, McqResult, ScoringError, score_mcq, score_mcq_modes
from .mcq_data import DataError, Question, load_questions
from .perplexity import PerplexityResult, load_texts, perplexity
from .probes import Probe, ProbeResult, load_probes, probe
from .report import write_report
from .runner import run_suite
from .scoring import Scorer, Scored
from .suite import Suite, list_suites, load_suite

__all__ = [
    "run_suite", "load_suite", "list_suites", "Suite", "write_report",
    "score_mcq", "score_mcq_modes", "McqResult", "MODES", "ScoringError", "load_questions", "Question", "DataError",
    "probe", "load_probes", "Probe", "ProbeResult",
    "perplexity", "load_texts", "PerplexityResult",
    "fluency", "generate", "reverse_perplexity", "distinct_n", "longest_repeated_ngram", "SamplingSettings",
    "FluencyResult", "generate_side_by_side", "GenerationSettings",
    "run_lmeval", "LmEvalSettings", "LmEvalError", "Scorer", "Scored",
]
