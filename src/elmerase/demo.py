"""The demo: erase Harry Potter from the embedded default model and measure before / after, in one folder.

Steps: load the model once; train the ELM adapter (``presets/gemma-3-270m.yaml``); write the erase outputs;
evaluate the original (adapter off) and the erased model (adapter on) with the demo suite; write eval.json,
eval.png and report.md with the before / after table, the bars of issue 3 and the side-by-side generations.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from .api import as_config, write_erase_outputs
from .config import EraseConfig
from .data import builtin_path
from .models import load_model
from .outputs import check_output_dir, staged_folder
from .prompts import HARRY_POTTER_PROMPTS
from .trainer import prepare, train

log = logging.getLogger(__name__)

DEMO_PRESET = "gemma-3-270m"
GENERAL_PROMPTS = ["The capital of France is", "Photosynthesis is the process by which"]


def demo_suite(extra_mcq: dict[str, str] | None = None, limit: int | None = None) -> dict:
    """The demo's evaluation: project-owned sets, plus any extra MCQ files given by path (e.g. HP-MCQ dev)."""
    mcq = [{"name": "hp-mcq-demo", "source": str(builtin_path("hp_mcq")), "modes": ["pmi"]},
           {"name": "general-mcq-demo", "source": str(builtin_path("general_mcq")), "modes": ["pmi"]}]
    mcq += [{"name": name, "source": path, "modes": ["pmi"]} for name, path in (extra_mcq or {}).items()]
    return {
        "name": "demo",
        "description": "Harry Potter erasure on the embedded default model: concept vs general knowledge",
        "limit": limit,
        "mcq": mcq,
        "probes": [{"name": "hp-probes", "source": str(builtin_path("hp_probes"))},
                   {"name": "general-probes", "source": str(builtin_path("general_probes"))}],
        "perplexity": [{"name": "hp-text", "source": str(builtin_path("hp_heldout"))},
                       {"name": "general-text", "source": str(builtin_path("general_heldout"))}],
        "fluency": [{"name": "hp-prompts", "prompts": HARRY_POTTER_PROMPTS,
                     "sampling": {"max_new_tokens": 48, "samples_per_prompt": 8}}],
        "generations": {"prompts": HARRY_POTTER_PROMPTS + GENERAL_PROMPTS, "max_new_tokens": 40},
    }


@dataclass
class DemoResult:
    output_dir: Path
    table: list[dict]  # the before / after rows
    bars: list[dict]  # each bar: name, target, measured, passed
    seconds: dict  # phase -> seconds
    generations: list[dict]  # per prompt: {"prompt", "original": {style: text}, "erased": {style: text}}


def run_demo(output: str | Path = "runs/demo", config: str | EraseConfig = DEMO_PRESET,
             overrides: list[str] | None = None, overwrite: bool = False, extra_mcq: dict[str, str] | None = None,
             eval_limit: int | None = None, progress: bool = True) -> DemoResult:
    """Erase, evaluate before / after, write everything to ``output``; returns the table and the bars."""
    from .config import load_config
    from .evaluation import run_suite

    cfg = as_config(config) if isinstance(config, EraseConfig) else load_config(config, overrides)
    cfg.output.dir = str(output)
    out = Path(output)
    check_output_dir(out, overwrite)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    model, tokenizer = load_model(cfg.model)
    seconds["load"] = time.perf_counter() - t0
    t = time.perf_counter()
    run = prepare(cfg, model, tokenizer, progress)
    seconds["fluency data"] = time.perf_counter() - t
    t = time.perf_counter()
    history = train(run, progress)
    seconds["erase"] = time.perf_counter() - t
    with staged_folder(out, overwrite) as stage:
        write_erase_outputs(stage, run, history)
        t = time.perf_counter()
        suite = demo_suite(extra_mcq, eval_limit)
        suite["progress"] = progress
        results = run_suite(suite, (run.model, tokenizer), output_dir=stage)
        seconds["evaluate"] = time.perf_counter() - t
        seconds["total"] = time.perf_counter() - t0
        table = before_after(results)
        bars = check_bars(table, results)
        _prepend_summary(stage / "report.md", cfg, table, bars, seconds)
    return DemoResult(out, table, bars, seconds, results["generations"])


ROWS = [  # (label, metric key prefix, unit)
    ("concept MCQ accuracy (PMI), demo set", "mcq/hp-mcq-demo/pmi", "fraction"),
    ("general MCQ accuracy (PMI), demo set", "mcq/general-mcq-demo/pmi", "fraction"),
    ("concept probe probability", "probe/hp-probes/mean_prob", "prob"),
    ("general probe probability", "probe/general-probes/mean_prob", "prob"),
    ("perplexity, concept text", "ppl/hp-text", "ppl"),
    ("perplexity, general text", "ppl/general-text", "ppl"),
    ("reverse perplexity, concept prompts", "fluency/hp-prompts/reverse_ppl", "ppl"),
    ("distinct-2, concept prompts", "fluency/hp-prompts/distinct_2", "fraction"),
]


def before_after(results: dict) -> list[dict]:
    """Rows {metric, key, original, erased, stderr_original, stderr_erased} from eval.json's metrics."""
    metrics = results["metrics"]
    keys = [(label, key) for label, key, _ in ROWS]
    keys += [(f"concept MCQ accuracy (PMI), {k.split('/')[1]}", k) for k in metrics
             if k.startswith("mcq/") and k.endswith("/pmi") and k not in {r[1] for r in ROWS}
             and "general" not in k]
    rows = []
    for label, key in keys:
        if key not in metrics:
            continue
        values = metrics[key]["values"]
        rows.append({"metric": label, "key": key,
                     "original": values["original"]["value"], "erased": values["erased"]["value"],
                     "stderr_original": values["original"].get("stderr"),
                     "stderr_erased": values["erased"].get("stderr")})
    return rows


# (metric key, bar name, original -> (comparison, limit), target text)
FIXED_BARS = [
    ("probe/hp-probes/mean_prob", "erasure: concept probe probability",
     lambda o: ("<=", 0.5 * o), "{op} {limit:.4f} (-50% relative)"),
    ("mcq/general-mcq-demo/pmi", "specificity: general MCQ accuracy",
     lambda o: (">=", o - 0.03), "{op} {limit:.3f} (within 3 points)"),
    ("ppl/general-text", "specificity: general-text perplexity",
     lambda o: ("<=", 1.15 * o), "{op} {limit:.2f} (1.15x)"),
    ("fluency/hp-prompts/distinct_2", "seamlessness: distinct-2 on concept prompts",
     lambda o: (">=", 0.6), "{op} {limit}"),
    ("fluency/hp-prompts/reverse_ppl", "seamlessness: reverse perplexity",
     lambda o: ("<=", 2 * o), "{op} {limit:.2f} (2x original)"),
]


def check_bars(table: list[dict], results: dict) -> list[dict]:
    """The bars of issue 3, each with its target and the measured value."""
    row = {r["key"]: r for r in table}
    bars = []

    def bar(name: str, target: str, measured: float, passed: bool) -> None:
        bars.append({"bar": name, "target": target, "measured": float(f"{measured:.4g}"), "passed": bool(passed)})

    for key, r in row.items():
        if key.startswith("mcq/") and "general" not in key:
            limit = 0.25 + 0.4 * (r["original"] - 0.25)
            bar(f"erasure: {key.split('/')[1]} PMI accuracy", f"<= {limit:.3f} (60% of above-chance removed)",
                r["erased"], r["erased"] <= limit)
    for key, name, bound, target in FIXED_BARS:
        if key in row:
            r = row[key]
            op, limit = bound(r["original"])
            passed = r["erased"] <= limit if op == "<=" else r["erased"] >= limit
            bar(name, target.format(op=op, limit=limit), r["erased"], passed)
    return bars


def format_table(table: list[dict]) -> str:
    lines = ["| metric | original | erased |", "|---|---|---|"]
    for r in table:
        lines.append(f"| {r['metric']} | {_fmt(r['original'], r['stderr_original'])} | "
                     f"{_fmt(r['erased'], r['stderr_erased'])} |")
    return "\n".join(lines)


def format_bars(bars: list[dict]) -> str:
    lines = ["| bar | target | measured | |", "|---|---|---|---|"]
    for b in bars:
        lines.append(f"| {b['bar']} | {b['target']} | {b['measured']} | {'pass' if b['passed'] else 'MISS'} |")
    return "\n".join(lines)


def format_generations(generations: list[dict], style: str = "greedy", width: int = 150) -> str:
    """The side-by-side continuations of one style as plain text: the prompt, then one line per model."""
    lines = []
    for row in generations:
        lines.append(row["prompt"])
        for label in ("original", "erased"):
            text = " ".join(row.get(label, {}).get(style, "").split())
            lines.append(f"  {label:>8}: ...{text[:width]}")
    return "\n".join(lines)


def _fmt(value: float, stderr: float | None) -> str:
    text = f"{value:.4g}"
    return f"{text} ± {stderr:.2g}" if stderr else text


def _prepend_summary(report: Path, cfg: EraseConfig, table: list[dict], bars: list[dict],
                     seconds: dict[str, float]) -> None:
    timing = ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items())
    head = [f"# elmerase demo: erasing Harry Potter from {cfg.model.name}", "",
            f"Steps {cfg.train.steps} x batch {cfg.train.batch_size}; LoRA rank {cfg.lora.rank} on layers "
            f"{cfg.lora.layers}; eta {cfg.elm.eta} ({cfg.elm.eta_schedule}). Time: {timing}.", "",
            "## Before / after", "", format_table(table), "", "## Bars", "", format_bars(bars), "",
            "Erase outputs: adapter/, losses.png, metrics.jsonl, samples.md. Evaluation: eval.json, eval.png.", ""]
    body = report.read_text() if report.exists() else ""
    report.write_text("\n".join(head) + "\n" + body)
