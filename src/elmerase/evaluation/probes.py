"""Knowledge probes: the probability and rank of a target continuation after a cloze prompt.

A probe is ``{"prompt": "The headmaster of Hogwarts is Albus", "target": " Dumbledore"}`` (the target keeps its
leading space). Per probe: ``prob`` = P(whole target | prompt), ``first_prob`` / ``rank`` = probability and rank
(1 = most likely) of the target's first token, ``top1`` = every target token is the model's top token (greedy
decoding writes the target). Summary: mean prob, top-1 rate (each with standard error), median first-token rank.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from .mcq_data import DataError
from .scoring import Scorer, mean_stderr


@dataclass(frozen=True)
class Probe:
    prompt: str
    target: str
    where: str = ""


@dataclass
class ProbeResult:
    n: int
    mean_prob: float
    mean_prob_stderr: float | None
    top1_rate: float
    top1_stderr: float | None
    median_rank: float
    items: list[dict] = field(default_factory=list)  # prompt, target, prob, first_prob, rank, top1
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def load_probes(source: str | Path | Sequence[dict]) -> list[Probe]:
    """Probes from a .jsonl / .json file or an inline list of {prompt, target}; bad lines are errors."""
    if isinstance(source, (list, tuple)):
        records = [(r, f"probes[{i}]") for i, r in enumerate(source)]
        name = "inline probes"
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise DataError(f"probe file '{source}' does not exist; give a .jsonl of {{prompt, target}} lines")
        records, name = _read_records(path), str(path)
    probes = [_check(record, where) for record, where in records]
    if not probes:
        raise DataError(f"no probes in {name}")
    return probes


def _read_records(path: Path) -> list[tuple[Any, str]]:
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{err.lineno}: invalid JSON ({err.msg})") from err
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a JSON list of {{prompt, target}} objects")
        return [(r, f"{path}[{i}]") for i, r in enumerate(data)]
    out = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                out.append((json.loads(line), f"{path}:{number}"))
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{number}: invalid JSON ({err.msg})") from err
    return out


def _check(record: Any, where: str) -> Probe:
    if not isinstance(record, dict) or not all(isinstance(record.get(k), str) and record.get(k)
                                               for k in ("prompt", "target")):
        raise DataError(f"{where}: a probe needs non-empty string fields 'prompt' and 'target'")
    return Probe(record["prompt"], record["target"], where)


def probe(model, tokenizer, probes: Sequence[Probe], *, batch_size: int = 16, scorer: Scorer | None = None,
          progress: bool = True) -> ProbeResult:
    """Probability and rank of each probe's target (see the module docstring)."""
    if not probes:
        raise DataError("the probe list is empty")
    scorer = scorer or Scorer(model, tokenizer, batch_size=batch_size, progress=progress)
    start = time.perf_counter()
    requests = [(scorer.encode_context(p.prompt), scorer.encode_continuation(p.target)) for p in probes]
    scored = scorer.score(requests, desc=f"probes x{len(probes)}", ranks=True)
    items = [{"prompt": p.prompt, "target": p.target, "prob": math.exp(s.total),
              "first_prob": math.exp(s.logprobs[0]), "rank": s.ranks[0], "top1": all(r == 1 for r in s.ranks)}
             for p, s in zip(probes, scored)]
    mean_prob, prob_err = mean_stderr([i["prob"] for i in items])
    top1, top1_err = mean_stderr([float(i["top1"]) for i in items])
    return ProbeResult(n=len(items), mean_prob=mean_prob, mean_prob_stderr=prob_err, top1_rate=top1,
                       top1_stderr=top1_err, median_rank=float(statistics.median(i["rank"] for i in items)),
                       items=items, seconds=round(time.perf_counter() - start, 3))
