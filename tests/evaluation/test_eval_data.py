"""Question loaders: ELM/WMDP JSON, JSONL, MMLU CSV files and folders, hub sources; bad input with file:line."""

from __future__ import annotations

import json

import pytest

from elmerase.evaluation.mcq_data import DataError, Question, load_questions, mmlu_files

ROWS = ['What is 2+2?,3,4,5,6,B\n', '"Why, is the sky blue?",Scattering,Paint,Oceans,Magic,A\n']


def _write_json(path, records):
    path.write_text("[\n" + ",\n".join(json.dumps(r) for r in records) + "\n]\n")  # one record per line
    return path


def test_json_questions(questions_json):
    qs = load_questions(questions_json)
    assert len(qs) == 3
    assert qs[0] == Question("Who is the headmaster of Hogwarts?",
                             ("Albus Dumbledore", "Paris", "The moon", "Bread"), 0, "", f"{questions_json}:2")


def test_jsonl_letters_and_subjects(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text('{"question": "Q1", "choices": ["a", "b", "c", "d"], "answer": "C", "subject": "x"}\n\n'
                    '{"question": "Q2", "choices": ["a", "b", "c", "d"], "answer": 3}\n')
    qs = load_questions(path)
    assert [(q.answer, q.subject, q.where.rsplit(":", 1)[1]) for q in qs] == [(2, "x", "1"), (3, "", "3")]


def test_mmlu_csv_file_subject_and_quoted_commas(tmp_path):
    path = tmp_path / "astronomy_test.csv"
    path.write_text("".join(ROWS))
    qs = load_questions(path)
    assert [q.subject for q in qs] == ["astronomy", "astronomy"]
    assert qs[1].question == "Why, is the sky blue?" and qs[1].answer == 0 and qs[0].answer == 1


def test_mmlu_folder_layouts_and_subject_filter(tmp_path):
    for split in ("dev", "test"):
        (tmp_path / split).mkdir()
        for subject in ("astronomy", "anatomy"):
            (tmp_path / split / f"{subject}_{split}.csv").write_text("".join(ROWS))
    qs = load_questions(tmp_path, subjects=["anatomy"])
    assert len(qs) == 2 and {q.subject for q in qs} == {"anatomy"}
    assert len(load_questions(tmp_path, split="dev")) == 4
    flat = tmp_path / "test"  # a folder of *_test.csv files works too
    assert [p.name for p in mmlu_files(flat, "test")] == ["anatomy_test.csv", "astronomy_test.csv"]
    with pytest.raises(DataError, match="no test file for subject"):
        load_questions(tmp_path, subjects=["botany"])


@pytest.mark.parametrize("record, message", [
    ({"question": "Q", "choices": ["a", "b", "c", "d"]}, "missing field"),
    ({"question": "Q", "choices": ["a", "b", "c", "d"], "answer": 4}, "not an index 0-3"),
    ({"question": "Q", "choices": ["a", "b", "c"], "answer": 0}, "3 choices, expected 4"),
    ({"question": "", "choices": ["a", "b", "c", "d"], "answer": 0}, "non-empty string"),
])
def test_malformed_question_names_file_and_line(tmp_path, record, message):
    good = {"question": "Fine", "choices": ["a", "b", "c", "d"], "answer": 1}
    path = _write_json(tmp_path / "bad.json", [good, record])
    with pytest.raises(DataError, match=f"(?s){path.name}:3: .*{message}.*skip-bad") as info:
        load_questions(path)
    assert "--skip-bad" in str(info.value)
    kept = load_questions(path, skip_bad=True)
    assert [q.question for q in kept] == ["Fine"]


def test_malformed_csv_row_line_number(tmp_path):
    path = tmp_path / "x_test.csv"
    path.write_text(ROWS[0] + "Q,a,b,c,d,Z\n")
    with pytest.raises(DataError, match="x_test.csv:2: answer 'Z'"):
        load_questions(path)


def test_empty_set_and_missing_file_are_errors(tmp_path):
    with pytest.raises(DataError, match="no questions"):
        load_questions(_write_json(tmp_path / "empty.json", []))
    with pytest.raises(DataError, match="no questions"):
        load_questions(_write_json(tmp_path / "all_bad.json", [{"question": "Q"}]), skip_bad=True)
    with pytest.raises(DataError, match="does not exist"):
        load_questions(tmp_path / "nope.json")
    (tmp_path / "q.txt").write_text("x")
    with pytest.raises(DataError, match="unknown question format"):
        load_questions(tmp_path / "q.txt")


def test_invalid_json_reports_line(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('[\n{"question": "Q", "choices": ["a","b","c","d"], "answer": 0},\n{"question": oops}\n]')
    with pytest.raises(DataError, match="broken.json:3: invalid JSON"):
        load_questions(path)


def test_any_number_of_choices_when_asked(tmp_path):
    path = _write_json(tmp_path / "two.json", [{"question": "Q", "choices": ["yes", "no"], "answer": 1}])
    assert load_questions(path, num_choices=None)[0].choices == ("yes", "no")


def test_hub_source_offline_names_the_fix(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("no internet")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match="Offline\\? Download it once"):
        load_questions("hf:cais/wmdp:wmdp-bio")


def test_hub_source_rows(monkeypatch):
    import datasets

    rows = [{"question": "Q", "choices": ["a", "b", "c", "d"], "answer": 2, "subject": "virology"}]
    monkeypatch.setattr(datasets, "load_dataset", lambda name, config, split: rows)
    qs = load_questions("hf:cais/mmlu:virology", split="val")
    assert qs[0].answer == 2 and qs[0].subject == "virology" and qs[0].where == "hf:cais/mmlu:virology[validation]:0"
