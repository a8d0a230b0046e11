"""The Python API: ``erase(config) -> EraseResult``."""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import EraseConfig, from_dict, load_config, to_dict
from .outputs import (check_output_dir, plot_losses, save_adapter, save_merged, side_by_side, staged_folder,
                      write_config, write_metrics, write_samples)
from .prompts import HARRY_POTTER, HARRY_POTTER_PROMPTS, concept_phrase
from .trainer import Run, prepare, train

log = logging.getLogger(__name__)


@dataclass
class EraseResult:
    """What an erase run produced."""

    output_dir: Path
    metrics: dict  # the last logged step: losses, total, seconds, tokens/s
    history: list[dict]
    seconds: float
    run: Run | None = None  # the trained model, tokenizer and data (not serialised)


def as_config(config: Any) -> EraseConfig:
    """An EraseConfig from an EraseConfig, a dict, or a YAML path / preset name."""
    if isinstance(config, EraseConfig):
        config.validate()
        return config
    if isinstance(config, dict):
        cfg = from_dict(EraseConfig, config)
        cfg.validate()
        return cfg
    return load_config(str(config))


def sample_prompts(cfg: EraseConfig) -> list[str]:
    """The concepts' prompts (the seed's four for Harry Potter when none are given) and the general prompts."""
    prompts: list[str] = []
    for spec in cfg.concepts:
        if spec.prompts:
            prompts += spec.prompts
        elif concept_phrase(spec.concept) == HARRY_POTTER:
            prompts += HARRY_POTTER_PROMPTS
    return prompts + list(cfg.output.general_prompts)


def erase(config: Any, model=None, tokenizer=None, progress: bool = True, keep_model: bool = False) -> EraseResult:
    """Train an ELM LoRA adapter and write the output folder.

    ``config``: EraseConfig, dict, or YAML path / preset name. ``model``/``tokenizer``: an already-loaded base
    model to use instead of loading ``config.model`` (its weights are not changed). With ``keep_model`` the
    result carries the trained PeftModel for further use (e.g. evaluation).
    """
    cfg = as_config(config)
    out = Path(cfg.output.dir)
    check_output_dir(out, cfg.output.overwrite)  # fail before any work
    start = time.perf_counter()
    run = prepare(cfg, model, tokenizer, progress)
    history = train(run, progress)
    with staged_folder(out, cfg.output.overwrite) as stage:
        write_erase_outputs(stage, run, history)
    seconds = time.perf_counter() - start
    log.info("wrote %s in %.1f s", out, seconds)
    return EraseResult(out, dict(history[-1]) if history else {}, history, seconds, run if keep_model else None)


def write_erase_outputs(folder: Path, run: Run, history: list[dict]) -> None:
    """adapter/, config.yaml, metrics.jsonl, losses.png, samples.md (and merged/) into ``folder``."""
    cfg = run.cfg
    save_adapter(run.model, folder)
    write_config(folder, to_dict(cfg))
    write_metrics(folder, history)
    plot_losses(folder, history)
    write_samples(folder, side_by_side(run.model, run.tokenizer, sample_prompts(cfg), cfg.output.sample_max_new_tokens))
    if cfg.output.merge:
        save_merged(run.model, run.tokenizer, folder)


def replace(cfg: EraseConfig, **sections: dict) -> EraseConfig:
    """A copy of ``cfg`` with some fields of some sections changed: replace(cfg, train={'steps': 3})."""
    changes = {name: dataclasses.replace(getattr(cfg, name), **fields) for name, fields in sections.items()}
    return dataclasses.replace(cfg, **changes)
