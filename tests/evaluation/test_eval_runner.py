"""run_suite end to end on the tiny model: one base, adapters switched, three outputs that agree; suites; CLI."""

from __future__ import annotations

import json
import re

import pytest

from eval_helpers import QUESTIONS

from elmerase.config import ConfigError
from elmerase.evaluation import list_suites, load_suite, run_suite
from elmerase.evaluation.report import DECIMALS


def _suite(questions_json) -> dict:
    return {"name": "t", "progress": False,
            "mcq": [{"name": "hp", "source": str(questions_json), "modes": ["cloze", "pmi"]}],
            "probes": [{"name": "facts", "items": [{"prompt": "The headmaster of Hogwarts is Albus",
                                                    "target": " Dumbledore"}]}],
            "perplexity": [{"name": "general", "texts": ["The capital of France is Paris. Water boils."]}],
            "fluency": [{"name": "hp", "prompts": ["Harry Potter"], "sampling": {"max_new_tokens": 6}}],
            "generations": {"prompts": ["Harry Potter studied at"], "max_new_tokens": 6}}


@pytest.fixture(scope="module")
def run(tmp_path_factory, adapter_dir):
    folder = tmp_path_factory.mktemp("eval")
    questions = folder / "q.json"
    questions.write_text(json.dumps(QUESTIONS))
    results = run_suite(_suite(questions), "tiny", {"erased": str(adapter_dir)}, folder / "out")
    return results, folder / "out"


def test_outputs_exist_and_cover_every_model(run):
    results, out = run
    assert {p.name for p in out.iterdir()} >= {"eval.json", "report.md", "eval.png", "suite.yaml"}
    assert (out / "eval.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert results["labels"] == ["original", "erased"]
    assert json.loads((out / "eval.json").read_text()) == json.loads(json.dumps(results))
    for name, entry in results["metrics"].items():
        assert set(entry["values"]) == {"original", "erased"}, name
    assert results["metrics"]["mcq/hp/pmi"]["values"]["original"]["stderr"] is not None
    assert results["metrics"]["mcq/hp/pmi"]["chance"] == 0.25


def test_adapter_changes_the_numbers(run):
    values = run[0]["metrics"]["ppl/general"]["values"]
    assert values["original"]["value"] != values["erased"]["value"]


def test_report_numbers_equal_eval_json(run):
    results, out = run
    table = {}
    for line in (out / "report.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] in results["metrics"]:
            table[cells[0]] = cells[2:]
    assert set(table) == set(results["metrics"])
    for name, cells in table.items():
        entry = results["metrics"][name]
        tolerance = 0.51 * 10 ** -DECIMALS[entry["unit"]]
        for label, cell in zip(results["labels"], cells):
            numbers = [float(x) for x in re.findall(r"[-+]?\d+\.?\d*(?:e[-+]?\d+)?", cell)]
            expected = entry["values"][label]
            assert numbers[0] == pytest.approx(expected["value"], abs=tolerance, rel=1e-3), (name, label)
            if expected["stderr"] is not None:
                assert numbers[1] == pytest.approx(expected["stderr"], abs=tolerance, rel=1e-3), (name, label)


def test_loaded_peft_model_is_compared_with_itself_adapter_off(tmp_path, tokenizer, adapter_dir, questions_json):
    from peft import PeftModel

    from elmerase.tiny import build_tiny_model

    model = PeftModel.from_pretrained(build_tiny_model(tokenizer, seed=0), str(adapter_dir))
    suite = {"progress": False, "mcq": [{"name": "hp", "source": str(questions_json), "modes": ["cloze"]}]}
    results = run_suite(suite, (model, tokenizer), output_dir=tmp_path / "out", plot=False)
    assert results["labels"] == ["original", "erased"]
    assert not (tmp_path / "out" / "eval.png").exists()
    base = run_suite(suite, (model.get_base_model(), tokenizer))  # a plain model: original only, nothing written
    assert base["labels"] == ["original"]
    more = run_suite(suite, (model, tokenizer), {"again": str(adapter_dir)})  # loaded beside, removed after
    assert more["labels"] == ["original", "again"] and list(model.peft_config) == ["default"]


def test_letter_mode_without_letter_tokens_fails_before_any_pass(questions_json):
    from elmerase.evaluation import ScoringError

    suite = {"progress": False, "mcq": [{"source": str(questions_json), "modes": ["cloze", "letter"]}]}
    with pytest.raises(ScoringError, match="use one of cloze"):
        run_suite(suite, "tiny")


def test_bad_adapter_path_and_empty_suite(tmp_path, questions_json):
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        run_suite({"mcq": [{"source": str(questions_json)}]}, "tiny", {"x": str(tmp_path)})
    with pytest.raises(ConfigError, match="measures nothing"):
        run_suite({}, "tiny")


def test_shipped_suites_load_with_their_variables():
    assert set(list_suites()) >= {"harry-potter", "wmdp-mmlu"}
    hp = load_suite("harry-potter", {"HP_MCQ": "hp.json", "MMLU": "mmlu", "MMLU_SUBJECTS": "astronomy,virology"})
    assert [m.name for m in hp.mcq] == ["hp-mcq", "mmlu"]
    assert hp.mcq[1].subjects == ["astronomy", "virology"] and hp.mcq[1].limit == 200
    assert [p.name for p in hp.perplexity] == []  # optional paths not given: dropped
    wmdp = load_suite("wmdp-mmlu", {"WMDP_BIO": "b.json", "MMLU": "m", "LMEVAL_TASKS": "wmdp_bio,mmlu"},
                      ["limit=7", "mcq.0.modes=[letter]"])
    assert wmdp.lmeval.tasks == ["wmdp_bio", "mmlu"] and wmdp.limit == 7 and wmdp.mcq[0].modes == ["letter"]


def test_suite_errors_name_the_fix(tmp_path):
    with pytest.raises(ConfigError, match="--set HP_MCQ=VALUE"):
        load_suite("harry-potter")
    bad = tmp_path / "bad.yaml"
    bad.write_text("mcq:\n  - {source: q.json, mode: [pmi]}\n")
    with pytest.raises(ConfigError, match="did you mean 'modes'"):
        load_suite(bad)
    bad.write_text("mcq:\n  - {source: q.json, modes: [guess]}\n")
    with pytest.raises(ConfigError, match="not valid; use letter"):
        load_suite(bad)
    with pytest.raises(ConfigError, match="neither a file nor a shipped suite"):
        load_suite("no-such-suite")


def test_cli_help_and_run(tmp_path, questions_json, capsys):
    from elmerase.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "--help"])
    assert exit_info.value.code == 0 and "examples:" in capsys.readouterr().out
    probes = tmp_path / "probes.jsonl"
    probes.write_text('{"prompt": "The capital of France is", "target": " Paris"}\n')
    args = ["eval", "tiny", "--mcq", f"hp={questions_json}", "--modes", "cloze,pmi", "--probes", str(probes),
            "-o", str(tmp_path / "out"), "--quiet", "--no-plot"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "mcq/hp/pmi" in printed and "probe/probes/mean_prob" in printed
    assert main(args) == 2  # the folder holds eval.json: --overwrite needed
    assert "--overwrite" in capsys.readouterr().err
