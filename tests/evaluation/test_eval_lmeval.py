"""lm-evaluation-harness through its Python API, offline: a local task YAML over a JSONL file, the tiny model."""

from __future__ import annotations

import json

import pytest
from eval_helpers import QUESTIONS

from elmerase.evaluation.lmeval import parse_results

TASK = """task: tiny_mcq
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


def test_parse_results_keeps_metrics_and_stderr():
    raw = {"wmdp_bio": {"alias": "wmdp_bio", "acc,none": 0.5, "acc_stderr,none": 0.1, "acc_norm,none": 0.4,
                        "acc_norm_stderr,none": "N/A"}}
    assert parse_results(raw, ["acc", "acc_norm"]) == {
        "wmdp_bio": {"acc": {"value": 0.5, "stderr": 0.1}, "acc_norm": {"value": 0.4, "stderr": None}}}


def test_lmeval_task_on_original_and_adapter(tmp_path, adapter_dir, monkeypatch):
    pytest.importorskip("lm_eval", reason="lm-eval not installed (pip install 'elmerase[lmeval]'; CI installs it)")
    from elmerase.evaluation import run_suite

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "tiny_mcq.yaml").write_text(TASK.format(data=data))
    suite = {"progress": False, "lmeval": {"tasks": ["tiny_mcq"], "include_path": str(tasks), "batch_size": 4}}
    results = run_suite(suite, "tiny", {"erased": str(adapter_dir)}, tmp_path / "out", plot=False)
    values = results["metrics"]["lmeval/tiny_mcq/acc"]["values"]
    assert set(values) == {"original", "erased"}
    assert all(0.0 <= v["value"] <= 1.0 and v["stderr"] is not None for v in values.values())
    assert "lmeval/tiny_mcq/acc" in (tmp_path / "out" / "report.md").read_text()
