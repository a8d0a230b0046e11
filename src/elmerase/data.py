"""Text sources -> filtered text lists -> seeded streams of mini-batches, mixed across concepts."""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from .config import ConceptSpec, DataSettings

log = logging.getLogger(__name__)


class DataError(ValueError):
    """A text source that cannot be read or is empty; the message names the fix."""


def builtin_path(name: str) -> Path:
    """A data file shipped with the package (``builtin:hp_erase`` -> demo_data/hp_erase.jsonl)."""
    folder = Path(str(resources.files("elmerase") / "demo_data"))
    matches = sorted(folder.glob(f"{name}.*"))
    if not matches:
        known = sorted({p.stem for p in folder.glob("*.json*")})
        raise DataError(f"no built-in data set '{name}'; built-in: {', '.join(known)}")
    return matches[0]


def read_texts(source: Any, column: str = "text") -> list[str]:
    """Read raw texts from a list, a local file, ``builtin:NAME`` or ``hf:NAME[:CONFIG]:SPLIT:COLUMN``."""
    if isinstance(source, (list, tuple)):
        return [str(t) for t in source]
    if not isinstance(source, str):
        raise DataError(f"cannot read texts from {source!r}: give a file path, 'hf:...', 'builtin:...' or a list")
    if source.startswith("hf:"):
        return _read_hub(source)
    if source.startswith("builtin:"):
        return read_texts(str(builtin_path(source[len("builtin:"):])), column)
    path = Path(source).expanduser()
    if not path.is_file():
        raise DataError(f"text file '{source}' does not exist; check the path "
                        f"(or use 'hf:NAME:SPLIT:COLUMN' for a hub dataset)")
    suffix = path.suffix.lower()
    if suffix == ".txt":
        return [p.strip() for p in path.read_text(encoding="utf-8").split("\n\n") if p.strip()]
    if suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        return _column(rows, column, path)
    if suffix == ".json":
        rows = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(rows, list):
            raise DataError(f"{path}: expected a JSON list of strings or of objects with field '{column}'")
        return _column(rows, column, path)
    if suffix in (".csv", ".parquet"):
        import pandas as pd

        frame = pd.read_csv(path) if suffix == ".csv" else pd.read_parquet(path)
        if column not in frame.columns:
            raise DataError(f"{path} has no column '{column}'; its columns: {', '.join(map(str, frame.columns))}. "
                            f"Set the concept's 'column'.")
        return [str(t) for t in frame[column].dropna().tolist()]
    raise DataError(f"{path}: unknown text format '{suffix}'; use .txt, .jsonl, .json, .csv or .parquet")


def _column(rows: list, column: str, path: Path) -> list[str]:
    texts = []
    for i, row in enumerate(rows):
        if isinstance(row, str):
            texts.append(row)
        elif isinstance(row, dict) and column in row:
            texts.append(str(row[column]))
        else:
            keys = ", ".join(row) if isinstance(row, dict) else type(row).__name__
            raise DataError(f"{path}: item {i} has no field '{column}' (it has: {keys}); set the concept's 'column'")
    return texts


def _read_hub(source: str) -> list[str]:
    parts = source[3:].split(":")
    if len(parts) == 3:
        name, config, split, column = parts[0], None, parts[1], parts[2]
    elif len(parts) == 4:
        name, config, split, column = parts
    else:
        raise DataError(f"'{source}': hub sources look like hf:NAME[:CONFIG]:SPLIT:COLUMN")
    try:
        import datasets

        data = datasets.load_dataset(name, config, split=split)
    except (ConnectionError, OSError) as err:
        raise DataError(f"cannot load hub dataset '{name}' ({err.__class__.__name__}): offline: "
                        f"pass a local file (.txt, .jsonl, .csv, .parquet) instead") from err
    if column not in data.column_names:
        raise DataError(f"hub dataset '{name}' has no column '{column}'; columns: {', '.join(data.column_names)}")
    return [str(t) for t in data[column]]


def filter_texts(texts: list[str], settings: DataSettings, what: str) -> list[str]:
    """Drop texts shorter than min_chars, cut longer ones to max_chars; empty result is an error."""
    kept = [t.strip()[: settings.max_chars] for t in texts if len(t.strip()) >= settings.min_chars]
    if settings.max_texts is not None:
        kept = kept[: settings.max_texts]
    if not kept:
        raise DataError(f"{what}: no text left after filtering: {len(texts)} read, all shorter than "
                        f"data.min_chars={settings.min_chars} characters. Lower data.min_chars or add longer texts.")
    dropped = len(texts) - len(kept)
    if dropped:
        log.info("%s: kept %d of %d texts (%d below %d characters or over max_texts)", what, len(kept), len(texts),
                 dropped, settings.min_chars)
    return kept


@dataclass
class ConceptData:
    """The filtered texts of one concept."""

    concept: str
    erase: list[str]
    retain: list[str]
    weight: float


def load_concept(spec: ConceptSpec, settings: DataSettings, concept: str) -> ConceptData:
    erase = filter_texts(read_texts(spec.erase, spec.column), settings, f"erase set of '{concept[:40]}'")
    retain = filter_texts(read_texts(spec.retain, spec.column), settings, f"retain set of '{concept[:40]}'")
    return ConceptData(concept=concept, erase=erase, retain=retain, weight=spec.weight)


class Stream:
    """Cycles through items in a seeded shuffled order, reshuffling every epoch."""

    def __init__(self, items: list, rng: random.Random):
        self.items = list(items)
        self.rng = rng
        self.order: list[int] = []

    def take(self, n: int) -> list:
        out = []
        while len(out) < n:
            if not self.order:
                self.order = list(range(len(self.items)))
                self.rng.shuffle(self.order)
            out.append(self.items[self.order.pop()])
        return out


def concept_schedule(weights: list[float]):
    """Deterministic weighted interleaving: each next concept is the one furthest behind its share.

    Weights 2:1 give 0, 1, 0, 0, 1, 0, ... (the WMDP reference interleaves bio, bio, cyber).
    """
    total = sum(weights)
    credit = [0.0] * len(weights)
    while True:
        for i, w in enumerate(weights):
            credit[i] += w / total
        best = max(range(len(weights)), key=lambda i: (credit[i], -i))
        credit[best] -= 1.0
        yield best
