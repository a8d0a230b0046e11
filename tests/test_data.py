"""Text sources, filtering, streams and the concept schedule; the error messages."""

import itertools
import json
import random

import pandas as pd
import pytest

from elmerase.config import DataSettings
from elmerase.data import DataError, Stream, concept_schedule, filter_texts, read_texts


def test_txt_splits_paragraphs(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("first para\nstill first\n\nsecond\n\n\n third \n")
    assert read_texts(str(path)) == ["first para\nstill first", "second", "third"]


def test_jsonl_json_csv_parquet_and_lists(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "x1"}\n{"text": "x2"}\n')
    (tmp_path / "b.json").write_text(json.dumps([{"body": "y"}]))
    (tmp_path / "c.json").write_text(json.dumps(["z1", "z2"]))
    pd.DataFrame({"doc": ["p", "q"]}).to_csv(tmp_path / "d.csv", index=False)
    pd.DataFrame({"doc": ["r"]}).to_parquet(tmp_path / "e.parquet")
    assert read_texts(str(tmp_path / "a.jsonl")) == ["x1", "x2"]
    assert read_texts(str(tmp_path / "b.json"), "body") == ["y"]
    assert read_texts(str(tmp_path / "c.json")) == ["z1", "z2"]
    assert read_texts(str(tmp_path / "d.csv"), "doc") == ["p", "q"]
    assert read_texts(str(tmp_path / "e.parquet"), "doc") == ["r"]
    assert read_texts(["u", "v"]) == ["u", "v"]


def test_builtin_demo_sets_exist():
    assert len(read_texts("builtin:hp_erase")) >= 150
    assert len(read_texts("builtin:general_retain")) >= 300


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_texts(str(tmp_path / "nope.txt"))


def test_missing_column_lists_columns(tmp_path):
    pd.DataFrame({"body": ["p"], "id": [1]}).to_csv(tmp_path / "d.csv", index=False)
    with pytest.raises(DataError, match="no column 'text'; its columns: body, id"):
        read_texts(str(tmp_path / "d.csv"))
    (tmp_path / "a.jsonl").write_text('{"body": "x"}\n')
    with pytest.raises(DataError, match="no field 'text' \\(it has: body\\)"):
        read_texts(str(tmp_path / "a.jsonl"))


def test_hub_unreachable_says_offline(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("no network")
    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match="offline: pass a local file"):
        read_texts("hf:mickume/harry_potter_tiny:train:text")
    with pytest.raises(DataError, match="hf:NAME\\[:CONFIG\\]:SPLIT:COLUMN"):
        read_texts("hf:only-a-name")


def test_filter_drops_short_cuts_long_and_explains_empty():
    settings = DataSettings(min_chars=5, max_chars=8)
    assert filter_texts(["abc", "abcdefghijkl", "  abcdef  "], settings, "erase") == ["abcdefgh", "abcdef"]
    with pytest.raises(DataError, match="3 read, all shorter than data.min_chars=5"):
        filter_texts(["a", "b", "c"], settings, "erase")


def test_stream_covers_every_item_each_epoch():
    stream = Stream(list("abcde"), random.Random(0))
    first, second = stream.take(5), stream.take(5)
    assert sorted(first) == sorted(second) == list("abcde")


def test_concept_schedule_proportions():
    assert list(itertools.islice(concept_schedule([2.0, 1.0]), 6)) == [0, 1, 0, 0, 1, 0]
    assert list(itertools.islice(concept_schedule([1.0]), 3)) == [0, 0, 0]
    counts = list(itertools.islice(concept_schedule([3.0, 1.0]), 400))
    assert counts.count(0) == 300
