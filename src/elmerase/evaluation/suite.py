"""Evaluation suites: which sets, scorers and limits one ``elmerase eval`` run uses, as YAML.

Precedence: ``--override key=value`` > the YAML file > built-in defaults. Strings may hold placeholders:
``${NAME}`` (required) and ``${NAME:-default}``; values come from ``--set NAME=VALUE``, then the environment.
An entry whose ``source`` resolves to an empty string and that has no inline data is dropped (optional data).
Shipped suites (package data): ``harry-potter`` and ``wmdp-mmlu``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml

from ..config import ConfigError, apply_override, from_dict, to_dict
from .fluency import SamplingSettings
from .generations import GenerationSettings
from .lmeval import LmEvalSettings
from .mcq import MODES

log = logging.getLogger(__name__)

_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _f(default: Any, help: str) -> Any:
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class McqSpec:
    """A multiple-choice set and how to score it."""

    name: str = _f("mcq", "Label in the report.")
    source: str = _f("", "A .json / .jsonl / .csv file, an MMLU folder or hf:NAME[:CONFIG] (see mcq_data).")
    modes: list[str] = _f(["pmi"], f"Scoring modes: {', '.join(MODES)}.")
    shots: int = _f(0, "Solved examples before each question (k-shot).")
    fewshot_source: str = _f("", "Where the shots come from; empty: the dev split of an MMLU folder, otherwise "
                             "the first `shots` questions of the set (then not evaluated).")
    split: str = _f("test", "MMLU split (dev, val, test) or hub split.")
    subjects: list[str] = _f([], "MMLU subjects to keep (empty: all).")
    subject: str = _f("", "Topic named in the letter prompt ('... questions (with answers) about X.'); MMLU "
                      "questions use their own subject.")
    num_choices: int | None = _f(4, "Required number of choices per question (null: any, at least 2).")
    limit: int | None = _f(None, "Use only the first N questions.")


@dataclass
class ProbeSpec:
    """Cloze facts whose target probability should fall after erasure."""

    name: str = _f("probes", "Label in the report.")
    source: str = _f("", "A .jsonl / .json file of {prompt, target}.")
    items: list[dict] = _f([], "Inline probes: [{prompt: ..., target: ' ...'}].")


@dataclass
class TextSpec:
    """Text whose perplexity is measured (concept text should rise, general text should not)."""

    name: str = _f("text", "Label in the report.")
    source: str = _f("", "A .txt (one text), .jsonl or .json file.")
    texts: list[str] = _f([], "Inline texts.")
    column: str = _f("text", "Field holding the text in .jsonl / .json records.")
    window: int = _f(256, "Tokens per scored window.")
    max_tokens: int | None = _f(4096, "Score at most this many tokens (null: all).")


@dataclass
class FluencySpec:
    """Concept prompts the erased model continues; a reference model scores the continuations."""

    name: str = _f("fluency", "Label in the report.")
    prompts: list[str] = _f([], "Inline prompts.")
    source: str = _f("", "A .txt file (one prompt per line) or .jsonl of {prompt}.")
    reference: str = _f("", "Model that scores the continuations: empty = the original model, or any model name "
                        "load_model accepts (hub id, folder, .gguf, embedded default).")
    sampling: SamplingSettings = field(default_factory=SamplingSettings)


@dataclass
class GenerationSpec(GenerationSettings):
    """Prompts shown side by side for the original and each erased model."""

    prompts: list[str] = _f([], "Prompts; empty: no side-by-side table.")


@dataclass
class Suite:
    """Everything one evaluation run measures."""

    name: str = _f("custom", "Suite name, shown in the report.")
    description: str = _f("", "One line on what the suite measures.")
    batch_size: int = _f(32, "Contexts per forward pass for scoring (their continuations run 4x as many rows).")
    skip_bad: bool = _f(False, "Skip malformed questions (reported with file and line) instead of failing.")
    limit: int | None = _f(None, "Cap on every multiple-choice set (quick runs).")
    progress: bool = _f(True, "Progress bars on every pass.")
    mcq: list[McqSpec] = _f([], "Multiple-choice sets.")
    probes: list[ProbeSpec] = _f([], "Probe sets.")
    perplexity: list[TextSpec] = _f([], "Perplexity texts.")
    fluency: list[FluencySpec] = _f([], "Reverse-perplexity prompt sets.")
    generations: GenerationSpec = field(default_factory=GenerationSpec)
    lmeval: LmEvalSettings = field(default_factory=LmEvalSettings)

    def validate(self) -> None:
        for spec in self.mcq:
            bad = [m for m in spec.modes if m not in MODES]
            if bad or not spec.modes:
                raise ConfigError(f"mcq '{spec.name}': modes {bad or '[]'} not valid; use {', '.join(MODES)}")
            if spec.shots < 0:
                raise ConfigError(f"mcq '{spec.name}': shots must be >= 0")
        for group in ("mcq", "probes", "perplexity", "fluency"):
            names = [s.name for s in getattr(self, group)]
            dup = {n for n in names if names.count(n) > 1}
            if dup:
                raise ConfigError(f"{group}: duplicate name(s) {', '.join(sorted(dup))}; give each entry its own name")
        if any(t.window < 2 for t in self.perplexity):
            raise ConfigError("perplexity window must be at least 2 tokens")
        if self.batch_size < 1:
            raise ConfigError("batch_size must be at least 1")

    def is_empty(self) -> bool:
        return not (self.mcq or self.probes or self.perplexity or self.fluency or self.generations.prompts
                    or self.lmeval.tasks)


def suite_path(name: str) -> Path:
    return Path(str(resources.files("elmerase") / "suites" / f"{name}.yaml"))


def list_suites() -> list[str]:
    return sorted(p.stem for p in Path(str(resources.files("elmerase") / "suites")).glob("*.yaml"))


def substitute(value: Any, variables: dict[str, str], where: str = "suite") -> Any:
    """Replace ${NAME} / ${NAME:-default} in every string of ``value`` (variables first, then environment)."""
    if isinstance(value, dict):
        return {k: substitute(v, variables, where) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, variables, where) for v in value]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match) -> str:
        name, default = match.group(1), match.group(2)
        found = variables.get(name, os.environ.get(name))
        if found is not None:
            return str(found)
        if default is not None:
            return default
        raise ConfigError(f"{where} needs ${{{name}}}: pass --set {name}=VALUE (or export {name}=VALUE)")

    text = _PLACEHOLDER.sub(replace, value)
    if _PLACEHOLDER.fullmatch(value):
        parsed = _scalar(text)
        if isinstance(parsed, (int, float, bool)):
            return parsed  # 'limit: ${N:-200}' gives the number 200
    return text


def _scalar(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def load_suite(path_or_name: str | Path | None = None, variables: dict[str, str] | None = None,
               overrides: list[str] | None = None) -> Suite:
    """Defaults, then the YAML (a path or a shipped suite name), placeholders filled, then overrides."""
    data = to_dict(Suite())
    where = "suite"
    if path_or_name:
        raw, where = _read(str(path_or_name))
        data.update(split_lists(Suite, substitute(raw, dict(variables or {}), where)))
    for assignment in overrides or []:
        apply_override(data, assignment)
    suite = from_dict(Suite, split_lists(Suite, data))
    drop_unset(suite)
    suite.validate()
    return suite


def split_lists(cls: type, data: Any) -> Any:
    """A string given for a list-of-strings field becomes a comma-separated list ('' -> []), so placeholders
    like ``subjects: ${MMLU_SUBJECTS:-}`` work; nested sections and lists of sections are walked."""
    if not isinstance(data, dict):
        return data
    hints = get_type_hints(cls)
    out = dict(data)
    for key, value in data.items():
        tp = hints.get(key)
        args = get_args(tp)
        if dataclasses.is_dataclass(tp):
            out[key] = split_lists(tp, value)
        elif get_origin(tp) is list and args and dataclasses.is_dataclass(args[0]) and isinstance(value, list):
            out[key] = [split_lists(args[0], v) for v in value]
        elif get_origin(tp) is list and args == (str,) and isinstance(value, str):
            out[key] = [v.strip() for v in value.split(",") if v.strip()]
    return out


def _read(path_or_name: str) -> tuple[dict, str]:
    path = Path(path_or_name).expanduser()
    if not path.is_file():
        path = suite_path(path_or_name)
        if not path.is_file():
            raise ConfigError(f"suite '{path_or_name}' is neither a file nor a shipped suite "
                              f"({', '.join(list_suites())})")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a suite is a mapping (name, mcq, probes, perplexity, ...)")
    return data, f"suite {path.name}"


def drop_unset(suite: Suite) -> None:
    """Drop entries whose source is empty and that carry no inline data (optional paths left unset)."""
    inline = {"mcq": None, "probes": "items", "perplexity": "texts", "fluency": "prompts"}
    for group, attr in inline.items():
        kept = []
        for spec in getattr(suite, group):
            if spec.source or (attr and getattr(spec, attr)):
                kept.append(spec)
            else:
                log.info("suite %s: %s '%s' has no source; skipped", suite.name, group, spec.name)
        setattr(suite, group, kept)


def suite_to_dict(suite: Suite) -> dict:
    return dataclasses.asdict(suite)
