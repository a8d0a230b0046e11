"""The output folder: written under a temporary name and moved into place only when complete."""

from __future__ import annotations

import json
import logging
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import torch
import yaml

log = logging.getLogger(__name__)


class OutputExistsError(FileExistsError):
    """The output folder exists and is not empty."""


def check_output_dir(path: Path, overwrite: bool) -> None:
    if path.exists() and any(path.iterdir()) and not overwrite:
        raise OutputExistsError(f"output folder '{path}' exists and is not empty; pass --overwrite "
                                f"(output.overwrite=true) to replace it, or choose another output.dir")


@contextmanager
def staged_folder(final: Path, overwrite: bool):
    """Yield a fresh temporary folder beside ``final``; on success it replaces ``final``, on error it is removed."""
    final = Path(final)
    check_output_dir(final, overwrite)
    final.parent.mkdir(parents=True, exist_ok=True)
    stage = final.parent / f".{final.name}.partial-{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    if final.exists():
        old = final.parent / f".{final.name}.old-{os.getpid()}"
        final.rename(old)
        stage.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        stage.rename(final)


def write_config(folder: Path, cfg_dict: dict) -> None:
    with open(folder / "config.yaml", "w") as fh:
        yaml.safe_dump(cfg_dict, fh, sort_keys=False, allow_unicode=True)


def write_metrics(folder: Path, history: list[dict]) -> None:
    with open(folder / "metrics.jsonl", "w") as fh:
        for row in history:
            fh.write(json.dumps(row) + "\n")


def plot_losses(folder: Path, history: list[dict]) -> None:
    """losses.png: the three loss curves and the total against the optimizer step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    steps = [row["step"] for row in history]
    for name in ("erase", "retain", "fluency", "total"):
        if history and name in history[0]:
            ax.plot(steps, [row[name] for row in history], label=name, lw=2 if name == "total" else 1.2)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title("ELM losses")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(folder / "losses.png", dpi=120)
    plt.close(fig)


@torch.no_grad()
def greedy(model, tokenizer, prompt: str, max_new_tokens: int) -> str:
    """Greedy continuation of ``prompt`` (BOS as the tokenizer adds it)."""
    device = next(model.parameters()).device
    enc = tokenizer(prompt, return_tensors="pt").to(device)
    out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                         pad_token_id=tokenizer.pad_token_id, top_p=None, top_k=None, temperature=None)
    return tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)


def side_by_side(model, tokenizer, prompts: list[str], max_new_tokens: int) -> list[dict]:
    """Greedy generations of the original (adapter off) and the erased model (adapter on)."""
    rows = []
    model.eval()
    for prompt in prompts:
        with model.disable_adapter():
            original = greedy(model, tokenizer, prompt, max_new_tokens)
        erased = greedy(model, tokenizer, prompt, max_new_tokens)
        rows.append({"prompt": prompt, "original": original, "erased": erased})
    return rows


def write_samples(folder: Path, rows: list[dict]) -> None:
    lines = ["# Greedy generations: original vs erased", ""]
    for row in rows:
        lines += [f"## {row['prompt']}", "", "| original | erased |", "|---|---|",
                  f"| {_cell(row['original'])} | {_cell(row['erased'])} |", ""]
    (folder / "samples.md").write_text("\n".join(lines))


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ").strip()


def save_adapter(model, folder: Path) -> None:
    model.save_pretrained(str(folder / "adapter"), safe_serialization=True)


def save_merged(model, tokenizer, folder: Path) -> None:
    """merged/: the base model with the adapter folded in (a plain transformers model folder).

    Merging works on a copy so that the in-memory model keeps its switchable adapter.
    """
    import copy

    merged = copy.deepcopy(model).merge_and_unload()
    merged.save_pretrained(str(folder / "merged"), safe_serialization=True)
    tokenizer.save_pretrained(str(folder / "merged"))
