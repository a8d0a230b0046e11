"""``elmerase erase``: train an ELM adapter from a YAML config (or preset) with key=value overrides."""

from __future__ import annotations

import argparse
import textwrap

from ..config import describe_fields, list_presets, load_config

EXAMPLES = """
examples:
  elmerase erase --config tiny                          # offline smoke run, random tiny Llama
  elmerase erase --config paper model.name=meta-llama/Llama-2-7b-chat-hf output.dir=runs/hp
  elmerase erase --config reference-code train.steps=10 --overwrite
  elmerase erase --config my.yaml lora.layers=4-7 elm.eta=300 --merge
"""


def add_parser(sub) -> None:
    fields = "\n".join(f"  {name:34s} {help_} (default {default})"
                       for name, default, help_ in describe_fields())
    epilog = (f"config fields (override with key=value; CLI > YAML > defaults):\n{fields}\n\n"
              f"presets: {', '.join(list_presets())}\n{EXAMPLES}")
    p = sub.add_parser("erase", help="Erase a concept: train an ELM LoRA adapter.",
                       description="Train a LoRA adapter with ELM and write adapter/, config.yaml, metrics.jsonl, "
                                   "losses.png and samples.md to output.dir.",
                       epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", "-c", default=None, help="YAML file or preset name.")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. train.steps=10 lora.rank=8")
    p.add_argument("--output", "-o", default=None, help="Output folder (same as output.dir=...).")
    p.add_argument("--overwrite", action="store_true", help="Replace an existing output folder.")
    p.add_argument("--merge", action="store_true", help="Also write merged/ (adapter folded into the model).")
    p.add_argument("--quiet", action="store_true", help="No progress bars.")
    p.set_defaults(run=run)


def cli_overrides(args) -> list[str]:
    extra = list(args.overrides)
    if args.output:
        extra.append(f"output.dir={args.output}")
    if args.overwrite:
        extra.append("output.overwrite=true")
    if getattr(args, "merge", False):
        extra.append("output.merge=true")
    return extra


def run(args) -> int:
    from ..api import erase

    cfg = load_config(args.config, cli_overrides(args))
    result = erase(cfg, progress=not args.quiet)
    m = result.metrics
    print(textwrap.dedent(f"""
        wrote {result.output_dir} in {result.seconds:.1f} s
        last step: erase {m.get('erase')}  retain {m.get('retain')}  fluency {m.get('fluency')}  total {m.get('total')}
        adapter: {result.output_dir / 'adapter'}""").strip())
    return 0
