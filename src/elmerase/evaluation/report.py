"""The three outputs of an evaluation: eval.json (every number), report.md (tables), eval.png (grouped bars).

Every number in report.md is eval.json's, formatted: fractions with 4 decimals, perplexities and counts with 2.
eval.png has one panel per unit (fractions, perplexities on a log axis, counts): for each metric a group of bars,
one per model, with the standard error as error bar where there is one.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DECIMALS = {"fraction": 4, "perplexity": 2, "count": 2}
UNIT_TITLES = {"fraction": "accuracy / probability / rate", "perplexity": "perplexity (log scale)",
               "count": "rank / words"}


def fmt(value: float | None, unit: str) -> str:
    """Fixed decimals per unit; a fraction below 0.001 in 3 significant digits (a probe's 3.2e-05 stays visible)."""
    if value is None:
        return "n/a"
    if unit == "fraction" and 0 < abs(value) < 1e-3:
        return f"{value:.3g}"
    return f"{value:.{DECIMALS.get(unit, 4)}f}"


def fmt_cell(entry: dict | None, unit: str) -> str:
    """'0.3900 ± 0.0244', '12.34' or 'n/a'."""
    if not entry or entry.get("value") is None:
        return "n/a"
    text = fmt(entry["value"], unit)
    if entry.get("stderr") is not None:
        text += f" ± {fmt(entry['stderr'], unit)}"
    return text


def write_report(results: dict, output_dir: str | Path, plot: bool = True) -> dict[str, Path]:
    """Write eval.json, report.md, suite.yaml (the resolved suite) and (when ``plot``) eval.png into
    ``output_dir``; return their paths."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "eval.json", "markdown": out / "report.md"}
    paths["json"].write_text(json.dumps(results, indent=2, ensure_ascii=False, allow_nan=False) + "\n")
    paths["markdown"].write_text(render_markdown(results))
    if "suite_config" in results:  # the resolved suite, next to its results
        import yaml

        paths["suite"] = out / "suite.yaml"
        paths["suite"].write_text(yaml.safe_dump(results["suite_config"], sort_keys=False, allow_unicode=True))
    if plot and results["metrics"]:
        paths["plot"] = out / "eval.png"
        plot_metrics(results, paths["plot"])
    log.info("wrote %s", ", ".join(str(p) for p in paths.values()))
    return paths


def summary_rows(results: dict) -> list[list[str]]:
    """The summary table: metric, chance, then one cell per model label."""
    rows = []
    for name, entry in results["metrics"].items():
        chance = fmt(entry["chance"], "fraction") if "chance" in entry else ""
        rows.append([name, chance] + [fmt_cell(entry["values"].get(lb), entry["unit"]) for lb in results["labels"]])
    return rows


def _table(header: list[str], rows: list[list[Any]]) -> str:
    def clean(cell: Any) -> str:
        return str(cell).replace("|", "\\|").replace("\n", " ⏎ ")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(clean(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def render_markdown(results: dict) -> str:
    labels = results["labels"]
    parts = [f"# Evaluation: {results['suite']}\n", f"{results.get('description', '')}\n" if
             results.get("description") else "", "Models:\n"]
    parts += [f"- **{label}**: {', '.join(f'{k} `{v}`' for k, v in info.items())}\n"
              for label, info in results["models"].items()]
    parts.append(f"\nRun time: {results['seconds']:.1f} s. Values are mean ± standard error.\n\n## Summary\n\n")
    parts.append(_table(["metric", "chance"] + labels, summary_rows(results)))
    parts += [_mcq_section(results), _probe_section(results), _fluency_section(results),
              _generation_section(results), _timing_section(results)]
    return "".join(p for p in parts if p)


def _mcq_section(results: dict) -> str:
    labels, out = results["labels"], []
    for name, modes in results["details"]["mcq"].items():
        out.append(f"\n## Multiple choice: {name}\n\nLetter choices (how often each answer position was picked; "
                   f"a model that always picks one letter scores chance):\n\n")
        rows = []
        for mode, per_label in modes.items():
            first = next(iter(per_label.values()))
            rows.append([mode, "(gold)"] + list(first["answer_letters"].values()))
            rows += [[mode, lb] + list(per_label[lb]["predicted_letters"].values()) for lb in labels if lb in per_label]
        letters = list(next(iter(next(iter(modes.values())).values()))["answer_letters"])
        out.append(_table(["mode", "model"] + letters, rows))
        out.append(_subject_table(modes, labels))
    return "".join(out)


def _subject_table(modes: dict, labels: list[str]) -> str:
    out = []
    for mode, per_label in modes.items():
        subjects = next(iter(per_label.values()))["per_subject"]
        if not subjects:
            continue
        rows = [[s, subjects[s]["n"]] + [fmt_cell(per_label[lb]["per_subject"][s], "fraction")
                                         for lb in labels if lb in per_label] for s in subjects]
        out.append(f"\nPer subject ({mode}):\n\n" + _table(["subject", "n"] + labels, rows))
    return "".join(out)


def _probe_section(results: dict) -> str:
    labels, out = results["labels"], []
    for name, per_label in results["details"]["probes"].items():
        out.append(f"\n## Probes: {name}\n\nP(target | prompt) and the rank of its first token:\n\n")
        first = next(iter(per_label.values()))["items"]
        rows = []
        for i, item in enumerate(first):
            cells = [f"{fmt(per_label[lb]['items'][i]['prob'], 'fraction')} (#{per_label[lb]['items'][i]['rank']})"
                     for lb in labels if lb in per_label]
            rows.append([item["prompt"], repr(item["target"])] + cells)
        out.append(_table(["prompt", "target"] + labels, rows))
    return "".join(out)


def _fluency_section(results: dict, shown: int = 3) -> str:
    out = []
    for name, per_label in results["details"]["fluency"].items():
        out.append(f"\n## Fluency: {name}\n\nFirst samples (reverse perplexity under the reference model):\n\n")
        rows = [[lb, s["prompt"], s["continuation"].strip(), fmt(s["ppl"], "perplexity")]
                for lb, result in per_label.items() for s in result["samples"][:shown]]
        out.append(_table(["model", "prompt", "continuation", "ppl"], rows))
    return "".join(out)


def _generation_section(results: dict) -> str:
    if not results["generations"]:
        return ""
    out = ["\n## Generations side by side\n"]
    for row in results["generations"]:
        styles = list(next(v for k, v in row.items() if k != "prompt"))
        cells = [[lb] + [row[lb][s].strip() for s in styles] for lb in results["labels"] if lb in row]
        out.append(f"\n**{row['prompt']}**\n\n" + _table(["model"] + styles, cells))
    return "".join(out)


def _timing_section(results: dict) -> str:
    rows = [[lb, key, f"{sec:.1f}"] for lb, parts in results["timing"].items() for key, sec in parts.items()]
    return "\n## Timing (seconds)\n\n" + _table(["model", "part", "seconds"], rows) if rows else ""


def plot_metrics(results: dict, path: Path) -> None:
    """Grouped bars, one panel per unit: original vs each erased model per metric, stderr as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    units = [u for u in DECIMALS if any(e["unit"] == u for e in results["metrics"].values())]
    labels = results["labels"]
    widest = _widest(results, units)
    fig, axes = plt.subplots(len(units), 1, figsize=(min(24.0, max(6.0, 1.0 + widest * (0.4 * len(labels) + 0.5))),
                                                       3.6 * len(units)), squeeze=False)
    for ax, unit in zip(axes[:, 0], units):
        names = [n for n, e in results["metrics"].items() if e["unit"] == unit]
        width = min(0.8 / len(labels), 0.35)
        for j, label in enumerate(labels):
            cells = [results["metrics"][n]["values"].get(label) or {} for n in names]
            values = [c.get("value") or 0.0 for c in cells]
            errors = [c["stderr"] if c.get("stderr") is not None else math.nan for c in cells]  # no cap when none
            xs = [i + (j - (len(labels) - 1) / 2) * width for i in range(len(names))]
            ax.bar(xs, values, width, yerr=errors, capsize=3, label=label)
        for i, name in enumerate(names):
            if "chance" in results["metrics"][name]:
                half = width * len(labels) / 2 + 0.05
                ax.hlines(results["metrics"][name]["chance"], i - half, i + half, colors="gray", linestyles="dashed",
                          label="chance" if i == min(j for j, n in enumerate(names) if "chance" in
                                                     results["metrics"][n]) else None)
        ax.set_xlim(-0.6, widest - 0.4)  # the same bar width in every panel
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=20, ha="right", fontsize=8)
        ax.set_title(UNIT_TITLES[unit], fontsize=10)
        if unit == "perplexity":
            ax.set_yscale("log")
        ax.legend(fontsize=8)
    fig.suptitle(f"{results['suite']}: " + " vs ".join(labels))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _widest(results: dict, units: list[str]) -> int:
    return max(sum(1 for e in results["metrics"].values() if e["unit"] == u) for u in units)
