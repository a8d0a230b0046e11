"""Multiple-choice question sets: ELM/WMDP JSON, JSONL, MMLU CSV files and folders, hub datasets.

Every question is checked (text, choices, answer index) and a bad one is reported with its file and line:
an error by default, skipped with a warning when ``skip_bad`` is set. An empty set is always an error.

Accepted sources:

* ``file.json``: ``[{"question": str, "choices": [str, ...], "answer": int}]`` (ELM HP-MCQ, WMDP).
* ``file.jsonl``: one such object per line; ``answer`` may also be a letter; ``subject`` is optional.
* ``subject_test.csv``: MMLU rows ``question,A,B,C,D,letter`` without header; the subject is the file name
  without its ``_dev`` / ``_val`` / ``_test`` suffix.
* a folder: MMLU CSVs, either directly inside or under ``dev/``, ``val/``, ``test/`` (the hendrycks layout).
* ``hf:NAME[:CONFIG]``: a hub dataset with question / choices / answer columns, e.g. ``hf:cais/wmdp:wmdp-bio``,
  ``hf:cais/mmlu:astronomy`` (needs the hub).
"""

from __future__ import annotations

import csv
import json
import logging
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

log = logging.getLogger(__name__)

LETTERS = string.ascii_uppercase
SPLITS = ("dev", "val", "test")


class DataError(ValueError):
    """A question file that cannot be used; the message names the file, the line and the fix."""


@dataclass(frozen=True)
class Question:
    """One multiple-choice question; ``answer`` indexes ``choices``."""

    question: str
    choices: tuple[str, ...]
    answer: int
    subject: str = ""
    where: str = ""  # "file:line" for messages


def load_questions(source: str | Path, *, split: str = "test", subjects: list[str] | None = None,
                   num_choices: int | None = 4, skip_bad: bool = False, limit: int | None = None) -> list[Question]:
    """Read, check and return the questions of ``source`` (see the module docstring for the forms).

    ``split`` picks the MMLU files (``dev``, ``val``, ``test``) or the hub split; ``subjects`` keeps only those
    MMLU subjects; ``num_choices`` is the required number of choices (None: any number from 2).
    """
    source = str(source)
    raw = list(_read(source, split, subjects))
    questions, problems = [], []
    for record, where, subject in raw:
        try:
            questions.append(_check(record, where, subject, num_choices))
        except DataError as err:
            problems.append(str(err))
    if problems:
        if not skip_bad:
            shown = "\n  ".join(problems[:5])
            more = f"\n  ... and {len(problems) - 5} more" if len(problems) > 5 else ""
            raise DataError(f"{len(problems)} malformed question(s) in {source}:\n  {shown}{more}\n"
                            f"Fix them, or pass --skip-bad (suite: skip_bad: true) to skip them.")
        for problem in problems:
            log.warning("skipped %s", problem)
    if not questions:
        raise DataError(f"no questions in {source}" + (f" for subjects {subjects}" if subjects else "")
                        + (f" (split '{split}')" if _is_folder(source) else "") + "; check the path and filters")
    return questions[:limit] if limit else questions


def _is_folder(source: str) -> bool:
    return Path(source).is_dir()


def _read(source: str, split: str, subjects: list[str] | None) -> Iterator[tuple[Any, str, str]]:
    """(record, where, subject) for each raw question."""
    if source.startswith("hf:"):
        yield from _read_hub(source[3:], split)
        return
    path = Path(source).expanduser()
    if path.is_dir():
        files = mmlu_files(path, split, subjects)
        for file in files:
            yield from _read_csv(file)
        return
    if not path.is_file():
        raise DataError(f"question source '{source}' does not exist; give a .json, .jsonl or .csv file, "
                        f"an MMLU folder or hf:NAME[:CONFIG]")
    suffix = path.suffix.lower()
    if suffix == ".json":
        yield from _read_json(path)
    elif suffix == ".jsonl":
        yield from _read_jsonl(path)
    elif suffix == ".csv":
        yield from _read_csv(path)
    else:
        raise DataError(f"{path}: unknown question format '{suffix}'; use .json, .jsonl, .csv or an MMLU folder")


def mmlu_subject(path: Path) -> str:
    """'astronomy_test.csv' -> 'astronomy'."""
    stem = path.stem
    for split in SPLITS:
        if stem.endswith("_" + split):
            return stem[: -len(split) - 1]
    return stem


def mmlu_files(folder: Path, split: str, subjects: list[str] | None = None) -> list[Path]:
    """The CSV files of ``split`` in an MMLU folder (``folder/split/*.csv`` or ``folder/*_split.csv``)."""
    if split not in SPLITS:
        raise DataError(f"MMLU split '{split}' is not one of {', '.join(SPLITS)}")
    inner = folder / split
    if inner.is_dir():
        files = sorted(inner.glob("*.csv"))
    else:
        files = sorted(folder.glob(f"*_{split}.csv"))
        if not files and not any(mmlu_subject(p) != p.stem for p in folder.glob("*.csv")):
            files = sorted(folder.glob("*.csv"))  # a folder of subject files without split suffixes
    if subjects:
        known = {mmlu_subject(f) for f in files}
        missing = [s for s in subjects if s not in known]
        if missing:
            raise DataError(f"{folder}: no {split} file for subject(s) {', '.join(missing)}; "
                            f"known: {', '.join(sorted(known)) or 'none'}")
        files = [f for f in files if mmlu_subject(f) in subjects]
    if not files:
        raise DataError(f"{folder}: no MMLU CSV files for split '{split}' (expected {split}/*.csv or *_{split}.csv)")
    return files


def _read_csv(path: Path) -> Iterator[tuple[Any, str, str]]:
    subject = mmlu_subject(path)
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        start = 1
        for row in reader:
            where = f"{path}:{start}"
            start = reader.line_num + 1
            if not row or (where.endswith(":1") and _is_header(row)):
                continue
            if len(row) < 4:
                yield {"_error": f"{len(row)} columns; expected question, the choices and the answer letter"}, where, subject
                continue
            yield {"question": row[0], "choices": row[1:-1], "answer": row[-1].strip()}, where, subject


def _is_header(row: list[str]) -> bool:
    return row[0].strip().lower() == "question" and row[-1].strip().lower() in ("answer", "letter", "target")


def _read_json(path: Path) -> Iterator[tuple[Any, str, str]]:
    text = path.read_text(encoding="utf-8")
    decoder = json.JSONDecoder()
    pos = _skip(text, 0)
    if pos >= len(text) or text[pos] != "[":
        raise DataError(f"{path}: expected a JSON list of {{question, choices, answer}} objects")
    pos = _skip(text, pos + 1)
    while pos < len(text) and text[pos] != "]":
        try:
            record, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{err.lineno}: invalid JSON ({err.msg})") from err
        yield record, f"{path}:{text.count(chr(10), 0, pos) + 1}", _subject_of(record)
        pos = _skip(text, end)
        if pos < len(text) and text[pos] == ",":
            pos = _skip(text, pos + 1)


def _subject_of(record: Any) -> str:
    return str(record.get("subject", "")) if isinstance(record, dict) else ""


def _skip(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _read_jsonl(path: Path) -> Iterator[tuple[Any, str, str]]:
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                yield {"_error": f"invalid JSON ({err.msg})"}, where, ""
                continue
            yield record, where, _subject_of(record)


def _read_hub(spec: str, split: str) -> Iterator[tuple[Any, str, str]]:
    name, _, config = spec.partition(":")
    hub_split = {"val": "validation"}.get(split, split)
    try:
        from datasets import load_dataset

        data = load_dataset(name, config or None, split=hub_split)
    except Exception as err:  # noqa: BLE001 - datasets raises many types when offline
        raise DataError(f"cannot load hub dataset {name}{':' + config if config else ''} split '{hub_split}' "
                        f"({type(err).__name__}: {err}). Offline? Download it once and pass the local "
                        f".json/.jsonl/.csv file or MMLU folder instead") from err
    for number, row in enumerate(data):
        yield dict(row), f"hf:{spec}[{hub_split}]:{number}", str(row.get("subject", config or ""))


def _check(record: Any, where: str, subject: str, num_choices: int | None) -> Question:
    """A Question from a raw record, or DataError naming ``where`` and what is wrong."""
    def bad(msg: str) -> DataError:
        return DataError(f"{where}: {msg}")

    if not isinstance(record, dict):
        raise bad(f"expected an object with question, choices and answer, got {type(record).__name__}")
    if "_error" in record:
        raise bad(record["_error"])
    missing = [k for k in ("question", "choices", "answer") if k not in record]
    if missing:
        raise bad(f"missing field(s) {', '.join(missing)}")
    question, choices = record["question"], record["choices"]
    if not isinstance(question, str) or not question.strip():
        raise bad("'question' must be a non-empty string")
    if not isinstance(choices, (list, tuple)) or not all(isinstance(c, str) for c in choices):
        raise bad("'choices' must be a list of strings")
    if num_choices is not None and len(choices) != num_choices:
        raise bad(f"{len(choices)} choices, expected {num_choices} (set num_choices to change)")
    if len(choices) < 2:
        raise bad("fewer than 2 choices")
    answer = _answer_index(record["answer"], len(choices))
    if answer is None:
        raise bad(f"answer {record['answer']!r} is not an index 0-{len(choices) - 1} "
                  f"or a letter A-{LETTERS[len(choices) - 1]}")
    return Question(question.strip(), tuple(c.strip() for c in choices), answer, subject, where)


def _answer_index(answer: Any, n: int) -> int | None:
    if isinstance(answer, bool):
        return None
    if isinstance(answer, int):
        index = answer
    elif isinstance(answer, str) and answer.strip().isdigit():
        index = int(answer.strip())
    elif isinstance(answer, str) and len(answer.strip()) == 1 and answer.strip().upper() in LETTERS:
        index = LETTERS.index(answer.strip().upper())
    else:
        return None
    return index if 0 <= index < n else None
