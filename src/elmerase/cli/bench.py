"""``elmerase bench``: time our engine and the reference engine on the same model, data and settings."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from ..bench import PHASES, RANDOM_SHAPES, BenchPlan, ModelSource, median, run_bench
from ..config import list_presets, load_config

EXAMPLES = """
examples:
  # this CPU, embedded Gemma 3 270M, the reference-code preset at batch 4 x <= 256 tokens (the issue's CPU target)
  elmerase bench --config reference-code train.batch_size=4 train.grad_accum=1 data.max_tokens=256
  # seconds-long smoke run on a random tiny Llama
  elmerase bench --random-init tiny --steps 2 --reference-samples 2 fluency.min_new_tokens=4 fluency.max_new_tokens=8
  # a GPU, zephyr-7b shape with random weights, bf16, batch 8 x 512 tokens (scripts/gpu_bench.sh)
  elmerase bench --random-init mistral-7b --config reference-code model.dtype=bfloat16 speed.autocast=true \\
      train.batch_size=8 train.grad_accum=1 --text-tokens 512 --json docs/gpu_bench.json
  # each speed switch off in turn, then the plain path, on our engine only
  elmerase bench --engine elm --ablate --config reference-code train.batch_size=4 train.grad_accum=1

Our engine runs --warmup + --steps optimizer steps (the last --steps are measured); the reference engine runs
--reference-samples samples of batch 1 in float32. Key=value overrides apply to both engines' config (the reference
engine then forces batch 1 and float32, with the same samples per optimizer step).
"""


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="Time the ELM engine against the reference loop (samples/s, phases, memory).",
                       description="Run N optimizer steps of a config with our engine and with a re-creation of the "
                                   "reference code's loop; print samples/s, tokens/s, s/step, peak memory, the "
                                   "time per phase and the speed-up.",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", "-c", default="reference-code",
                   help=f"YAML file or preset ({', '.join(list_presets())}).")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. train.batch_size=4 data.max_tokens=256")
    p.add_argument("--model", default="gemma-3-270m",
                   help="Model for both engines (default the embedded gemma-3-270m; '' keeps the config's model.name).")
    p.add_argument("--random-init", choices=sorted(RANDOM_SHAPES), default=None,
                   help="A model of this shape with random weights, built on the device (no download).")
    p.add_argument("--engine", choices=["both", "elm", "reference"], default="both")
    p.add_argument("--steps", type=int, default=3, help="Measured optimizer steps of our engine.")
    p.add_argument("--warmup", type=int, default=1, help="Unmeasured optimizer steps of our engine first.")
    p.add_argument("--reference-samples", type=int, default=4, help="Samples of the reference engine (batch 1).")
    p.add_argument("--text-tokens", type=int, default=None,
                   help="Join the texts until each has this many tokens (and cut to it): benches at a fixed length.")
    p.add_argument("--data", choices=["builtin", "config"], default="builtin",
                   help="'builtin': the shipped Harry Potter erase and general retain texts; 'config': the config's.")
    p.add_argument("--ablate", action="store_true", help="Also run our engine with each speed switch off in turn.")
    p.add_argument("--json", default=None, metavar="PATH", help="Also write the results as JSON.")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default: torch's choice); a CPU shared with other jobs may run faster "
                        "with fewer.")
    p.set_defaults(run=run)


def run(args) -> int:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = [f"model.name={args.model}"] if args.model and not args.random_init else []
    if args.data == "builtin":
        overrides += ["concepts.0.erase=builtin:hp_erase", "concepts.0.retain=builtin:general_retain"]
    cfg = load_config(args.config, overrides + list(args.overrides))
    engines = ("elm", "reference") if args.engine == "both" else (args.engine,)
    plan = BenchPlan(cfg, ModelSource(args.random_init), engines, args.steps, args.warmup, args.reference_samples,
                     args.text_tokens, args.ablate)
    results = run_bench(plan, on_result=lambda r: print(f"... {r.engine}: {r.samples_per_s:.4g} samples/s",
                                                        flush=True))
    print(format_results(results))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"command": vars_for_json(args), "results": [dict(asdict(r), samples_per_s=r.samples_per_s,
                       train_samples_per_s=r.train_samples_per_s, tokens_per_s=r.tokens_per_s, mfu=r.mfu,
                       recipe_hours=r.recipe_hours) for r in results]}, fh, indent=1)
        print(f"wrote {args.json}")
    return 0


def vars_for_json(args) -> dict:
    return {k: v for k, v in vars(args).items() if k != "run"}


def format_results(results) -> str:
    """The bench report: one row per engine, the time per sample by phase, the speed-up."""
    if not results:
        return "nothing was run"
    lines = [f"device: {results[0].device}"]
    for r in results:
        lines.append(f"  {r.engine}: {r.settings}")
    lines.append("")
    lines.append(f"{'engine':<26}{'samples/s':>10}{'no-gen':>9}{'tokens/s':>10}{'s/step':>9}{'peak mem':>17}"
                 f"{'MFU':>7}{'9000 samples':>14}")
    for r in results:
        mfu = f"{100 * r.mfu:.1f}%" if r.mfu is not None else "-"
        lines.append(f"{r.engine:<26}{r.samples_per_s:>10.4g}{r.train_samples_per_s:>9.4g}{r.tokens_per_s:>10.4g}"
                     f"{median(r.step_seconds):>9.3g}{r.peak_memory / 2**30:>7.2f} GiB {r.memory_kind:<7}"
                     f"{mfu:>7}{r.recipe_hours:>12.3g} h")
    lines.append("")
    names = [*PHASES, "other"]
    lines.append(f"{'seconds per sample':<26}" + "".join(f"{n.replace('student_', 'st.'):>11}" for n in names)
                 + f"{'total':>9}")
    for r in results:
        lines.append(f"{r.engine:<26}" + "".join(f"{r.phases.get(n, 0.0) / r.samples:>11.3g}" for n in names)
                     + f"{r.seconds / r.samples:>9.3g}")
    lines += _comparison(results)
    return "\n".join(lines)


def _comparison(results) -> list[str]:
    by_name = {r.engine: r for r in results}
    lines = []
    ref = by_name.get("reference")
    if ref and ref.sample_seconds:
        s = sorted(ref.sample_seconds)
        lines.append(f"\nreference: median {median(s):.3g} s per sample over {len(s)} samples "
                     f"(min {s[0]:.3g}, max {s[-1]:.3g})")
    ours = by_name.get("elm")
    if ours and ref:
        lines.append(f"speed-up elm / reference: {ours.samples_per_s / ref.samples_per_s:.3g}x samples/s "
                     f"({ours.train_samples_per_s / ref.train_samples_per_s:.3g}x without fluency generation)")
        lines.append(f"projected 9000-sample recipe: elm {ours.recipe_hours:.3g} h, reference {ref.recipe_hours:.3g} h")
    return lines
