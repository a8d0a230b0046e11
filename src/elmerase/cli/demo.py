"""``elmerase demo``: erase Harry Potter from the embedded default model, evaluate before / after."""

from __future__ import annotations

import argparse

EXAMPLES = """
examples:
  elmerase demo                                   # gemma-3-270m, output in runs/demo/
  elmerase demo --output runs/demo2 --overwrite --mcq hp-dev=../shared/data/hp-mcq/dev.json
  elmerase demo --config tiny train.steps=2 --eval-limit 20   # a quick offline smoke run
"""


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="Erase Harry Potter from the embedded default model and measure it.",
                       description="Load the embedded default model, train the ELM adapter, evaluate the original "
                                   "and the erased model, write everything (adapter/, report.md, eval.json, plots) "
                                   "to the output folder.",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", "-c", default="gemma-3-270m", help="Erase config: YAML file or preset name.")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="Config overrides, e.g. train.steps=10.")
    p.add_argument("--output", "-o", default="runs/demo", help="Output folder (default runs/demo).")
    p.add_argument("--overwrite", action="store_true", help="Replace an existing output folder.")
    p.add_argument("--mcq", action="append", default=[], metavar="NAME=PATH",
                   help="Extra concept MCQ file to measure (e.g. hp-dev=../shared/data/hp-mcq/dev.json).")
    p.add_argument("--eval-limit", type=int, default=None, help="Cap every MCQ set (quick runs).")
    p.add_argument("--quiet", action="store_true", help="No progress bars.")
    p.set_defaults(run=run)


def run(args) -> int:
    from ..demo import format_bars, format_generations, format_table, run_demo

    extra = {}
    for item in args.mcq:
        if "=" not in item:
            raise ValueError(f"--mcq {item!r}: use NAME=PATH")
        name, path = item.split("=", 1)
        extra[name] = path
    result = run_demo(args.output, args.config, args.overrides, args.overwrite, extra, args.eval_limit,
                      progress=not args.quiet)
    print("\ngreedy continuations, original vs erased:\n" + format_generations(result.generations))
    print("\n" + format_table(result.table) + "\n\n" + format_bars(result.bars))
    timing = ", ".join(f"{k} {v:.0f} s" for k, v in result.seconds.items())
    print(f"\ntime: {timing}\nwrote {result.output_dir} (report.md, eval.json, eval.png, adapter/, samples.md)")
    return 0
