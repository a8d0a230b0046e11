"""Perplexity of text (concept text against general text), BOS handled per model.

Each text is tokenized whole and cut into windows of ``window`` tokens; a window is scored after the model's
BOS token when its tokenizer adds one (Gemma needs it: without BOS its perplexity is several times higher),
otherwise after the window's own first token. Perplexity = exp(total negative log-likelihood / scored tokens);
its standard error comes from the spread of the per-window mean NLL (delta method: ppl * stderr(nll)).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from .mcq_data import DataError
from .scoring import Scorer, mean_stderr


@dataclass
class PerplexityResult:
    ppl: float
    stderr: float | None
    nll: float  # mean negative log-likelihood per token (nats)
    n_tokens: int
    n_windows: int
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def load_texts(source: str | Path | Sequence[str], column: str = "text") -> list[str]:
    """A .txt file (one text), a .jsonl / .json file of {column: text} or strings, or an inline list."""
    if isinstance(source, (list, tuple)):
        texts = [str(t) for t in source]
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise DataError(f"text file '{source}' does not exist; give a .txt, .jsonl or .json file")
        if path.suffix.lower() == ".jsonl":
            texts = [_field(json.loads(line), column, f"{path}:{i}")
                     for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if line.strip()]
        elif path.suffix.lower() == ".json":
            texts = [_field(r, column, f"{path}[{i}]") for i, r in enumerate(json.loads(path.read_text("utf-8")))]
        else:
            texts = [path.read_text(encoding="utf-8")]
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise DataError(f"no text in {source if not isinstance(source, (list, tuple)) else 'the inline list'}")
    return texts


def _field(record, column: str, where: str) -> str:
    if isinstance(record, str):
        return record
    if isinstance(record, dict) and isinstance(record.get(column), str):
        return record[column]
    raise DataError(f"{where}: expected a string or an object with a '{column}' string field")


def windows(scorer: Scorer, texts: Sequence[str], window: int, max_tokens: int | None) -> list[tuple[tuple, tuple]]:
    """(context, continuation) requests covering the texts in windows, at most ``max_tokens`` scored tokens."""
    requests, budget = [], max_tokens if max_tokens else math.inf
    for text in texts:
        ids = scorer.encode_continuation(text)
        for start in range(0, len(ids), window):
            piece = ids[start: start + window]
            context, scored = (tuple(scorer.bos), piece) if scorer.bos else (piece[:1], piece[1:])
            scored = scored[: int(min(len(scored), budget))]
            if scored:
                requests.append((context, scored))
                budget -= len(scored)
            if budget <= 0:
                return requests
    return requests


def perplexity(model, tokenizer, texts: Sequence[str], *, window: int = 256, max_tokens: int | None = 4096,
               batch_size: int = 4, scorer: Scorer | None = None, progress: bool = True) -> PerplexityResult:
    """Perplexity of ``model`` on ``texts`` (see the module docstring); ``max_tokens`` caps the work."""
    if window < 2:
        raise ValueError("window must be at least 2 tokens")
    scorer = scorer or Scorer(model, tokenizer, batch_size=batch_size, progress=progress)
    start = time.perf_counter()
    requests = windows(scorer, texts, window, max_tokens)
    if not requests:
        raise DataError("the texts hold no token to score")
    scored = scorer.score(requests, desc=f"perplexity x{len(requests)}")
    total = sum(-s.total for s in scored)
    n_tokens = sum(s.n_tokens for s in scored)
    nll = total / n_tokens
    _, nll_err = mean_stderr([-s.total / s.n_tokens for s in scored])
    ppl = math.exp(nll)
    return PerplexityResult(ppl=ppl, stderr=ppl * nll_err if nll_err is not None else None, nll=nll,
                            n_tokens=n_tokens, n_windows=len(scored), seconds=round(time.perf_counter() - start, 3))
