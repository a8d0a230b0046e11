"""``elmerase eval``: the original model against one or more erased models, from a suite YAML and/or flags."""

from __future__ import annotations

import argparse
from pathlib import Path

EXAMPLES = """
examples:
  elmerase eval tiny --mcq questions.json --modes letter,cloze,pmi        # offline smoke run
  elmerase eval gemma-3-270m --adapter erased=runs/hp/adapter --suite harry-potter --set HP_MCQ=hp-mcq/dev.json
  elmerase eval gemma-3-270m --mcq hp=hp-mcq/dev.json --mcq mmlu=data/mmlu --subjects astronomy \\
      --probes facts.jsonl --modes letter,cloze,pmi -o runs/eval-base
  elmerase eval gemma-3-270m --adapter runs/a/adapter --adapter runs/b/merged --suite wmdp-mmlu \\
      --set WMDP_BIO=wmdp/bio-questions.json --set MMLU=data/mmlu --override limit=200
  elmerase eval gemma-3-270m --adapter runs/hp/adapter --lmeval wmdp_bio,mmlu --lmeval-limit 100
"""


def add_parser(sub) -> None:
    from ..evaluation.mcq import MODES
    from ..evaluation.suite import list_suites

    p = sub.add_parser("eval", help="Evaluate the original model and erased models (MCQ, probes, perplexity, ...).",
                       description="Load MODEL once, evaluate it and each --adapter (adapter or merged-model folder) "
                                   "on a suite, write eval.json, report.md and eval.png to --output.",
                       epilog=f"shipped suites: {', '.join(list_suites())}\nscoring modes: {', '.join(MODES)}\n"
                              f"{EXAMPLES}", formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="Hub id, local folder, .gguf file, embedded default (gemma-3-270m) or 'tiny'.")
    p.add_argument("--adapter", "-a", action="append", default=[], metavar="[LABEL=]PATH",
                   help="An adapter folder or merged-model folder; repeat for several (label: the folder name, or its "
                        "parent's for .../adapter and .../merged).")
    p.add_argument("--suite", "-s", default=None, help="Suite YAML file or shipped suite name.")
    p.add_argument("--set", dest="variables", action="append", default=[], metavar="NAME=VALUE",
                   help="Fill a ${NAME} placeholder of the suite (e.g. HP_MCQ=path/dev.json).")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="Change a suite field, e.g. limit=100, mcq.0.modes=[letter,pmi], batch_size=8.")
    g = p.add_argument_group("sets added on the command line")
    g.add_argument("--mcq", action="append", default=[], metavar="[NAME=]PATH",
                   help="Multiple-choice set: .json/.jsonl/.csv, MMLU folder or hf:NAME[:CONFIG].")
    g.add_argument("--modes", default="pmi", help="Scoring modes for --mcq sets, comma-separated (default pmi).")
    g.add_argument("--shots", type=int, default=0, help="k-shot for --mcq sets (MMLU folders: from dev/).")
    g.add_argument("--subjects", default="", help="MMLU subjects for --mcq folders, comma-separated.")
    g.add_argument("--split", default="test", help="MMLU / hub split for --mcq sets (default test).")
    g.add_argument("--probes", action="append", default=[], metavar="[NAME=]PATH", help=".jsonl of {prompt, target}.")
    g.add_argument("--ppl", action="append", default=[], metavar="[NAME=]PATH", help="Text file for perplexity.")
    g.add_argument("--fluency", action="append", default=[], metavar="[NAME=]PATH",
                   help="Prompts (one per line) for reverse perplexity and repetition.")
    g.add_argument("--prompts", default=None, metavar="PATH", help="Prompts (one per line) shown side by side.")
    g.add_argument("--lmeval", default="", metavar="TASKS", help="lm-eval tasks, e.g. wmdp_bio,wmdp_cyber,mmlu.")
    g.add_argument("--lmeval-include", default=None, metavar="DIR", help="Folder of your own lm-eval task YAMLs.")
    g.add_argument("--lmeval-limit", type=float, default=None, help="Documents per lm-eval task.")
    o = p.add_argument_group("run")
    o.add_argument("--output", "-o", default="runs/eval", help="Output folder (default runs/eval).")
    o.add_argument("--overwrite", action="store_true", help="Replace the outputs of an earlier run in --output.")
    o.add_argument("--limit", type=int, default=None, help="Use at most N questions per multiple-choice set.")
    o.add_argument("--skip-bad", action="store_true", help="Skip malformed questions instead of failing.")
    o.add_argument("--batch-size", type=int, default=None, help="Rows per forward pass (suite default 32).")
    o.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default: torch's choice). On a CPU shared with other jobs, 1 is "
                        "often several times faster than 2.")
    o.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16.")
    o.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    o.add_argument("--no-plot", action="store_true", help="Do not draw eval.png.")
    o.add_argument("--quiet", action="store_true", help="No progress bars.")
    p.set_defaults(run=run)


def named(value: str) -> tuple[str, str]:
    """'name=path' -> (name, path); 'path' -> (its stem or folder name, path); 'runs/hp/adapter' -> 'hp'."""
    name, sep, path = value.partition("=")
    if sep and name and "/" not in name:
        return name, path
    folder = Path(value.rstrip("/"))
    if folder.name in ("adapter", "merged") and folder.parent.name:
        return folder.parent.name, value
    return folder.stem or value, value


def flag_overrides(args) -> list[str]:
    """Suite overrides for the run flags (they come last: CLI > YAML > defaults)."""
    out = list(args.override)
    if args.limit:
        out.append(f"limit={args.limit}")
    if args.skip_bad:
        out.append("skip_bad=true")
    if args.batch_size:
        out.append(f"batch_size={args.batch_size}")
    if args.quiet:
        out.append("progress=false")
    return out


def add_flag_sets(suite, args) -> None:
    """The sets given as flags, appended to the suite."""
    from ..evaluation.lmeval import LmEvalSettings
    from ..evaluation.suite import FluencySpec, McqSpec, ProbeSpec, TextSpec

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    subjects = [s.strip() for s in args.subjects.split(",") if s.strip()]
    for value in args.mcq:
        name, path = named(value)
        suite.mcq.append(McqSpec(name=name, source=path, modes=modes, shots=args.shots, subjects=subjects,
                                 split=args.split))
    suite.probes += [ProbeSpec(name=n, source=p) for n, p in map(named, args.probes)]
    suite.perplexity += [TextSpec(name=n, source=p) for n, p in map(named, args.ppl)]
    suite.fluency += [FluencySpec(name=n, source=p) for n, p in map(named, args.fluency)]
    if args.prompts:
        suite.generations.prompts += [ln.strip() for ln in Path(args.prompts).read_text().splitlines() if ln.strip()]
    if args.lmeval:
        suite.lmeval = LmEvalSettings(tasks=[t.strip() for t in args.lmeval.split(",") if t.strip()],
                                      include_path=args.lmeval_include, limit=args.lmeval_limit,
                                      batch_size=suite.lmeval.batch_size)
    suite.validate()


def run(args) -> int:
    from ..config import ModelConfig
    from ..evaluation import run_suite
    from ..evaluation.lmeval import LmEvalError
    from ..evaluation.report import summary_rows
    from ..evaluation.suite import load_suite

    variables = dict(v.split("=", 1) for v in args.variables if "=" in v)
    bad = [v for v in args.variables if "=" not in v]
    if bad:
        raise ValueError(f"--set {bad[0]}: write NAME=VALUE")
    suite = load_suite(args.suite, variables, flag_overrides(args))
    add_flag_sets(suite, args)
    out = Path(args.output)
    if (out / "eval.json").exists() and not args.overwrite:
        raise FileExistsError(f"{out} already holds eval.json; pass --overwrite or another --output")
    adapters = dict(named(a) for a in args.adapter)
    if len(adapters) != len(args.adapter):
        raise ValueError("two --adapter folders get the same label; name them: --adapter LABEL=PATH")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    cfg = ModelConfig(name=args.model, dtype=args.dtype, device=args.device)
    try:
        results = run_suite(suite, cfg, adapters, out, plot=not args.no_plot)
    except LmEvalError as err:
        print(f"elmerase eval: error: {err}")
        return 2
    labels = results["labels"]
    width = max([len(r[0]) for r in summary_rows(results)] + [6])
    print(f"{'metric':{width}s}  {'chance':6s}  " + "  ".join(f"{lb:>18s}" for lb in labels))
    for row in summary_rows(results):
        print(f"{row[0]:{width}s}  {row[1]:6s}  " + "  ".join(f"{c:>18s}" for c in row[2:]))
    print(f"\nwrote {out / 'eval.json'}, {out / 'report.md'}" + ("" if args.no_plot else f", {out / 'eval.png'}")
          + f" in {results['seconds']:.1f} s")
    return 0
