"""``elmerase bench``: random-init shapes, both engines end to end on a tiny model, the report, the reference target."""

import json

import pytest
import torch

from elmerase.bench import (RANDOM_SHAPES, BenchPlan, ModelSource, bench_config, build_random_model, long_texts,
                            reference_config, run_bench, student_flops)
from elmerase.cli import main
from elmerase.cli.bench import format_results
from elmerase.config import ElmSettings, load_config
from elmerase.reference_engine import ReferenceEngine
from elmerase.targets import EraseExample, encode, erase_targets
from elmerase.tiny import build_tiny_model

SMALL = ["concepts.0.erase=builtin:hp_erase", "concepts.0.retain=builtin:general_retain", "data.max_tokens=32",
         "fluency.min_new_tokens=3", "fluency.max_new_tokens=6", "lora.rank=4"]


@pytest.mark.parametrize("shape,billions", [("mistral-7b", 7.24), ("llama-3-8b", 8.03)])
def test_random_shapes_have_the_real_parameter_counts(shape, billions):
    """Counted from the config (building 7B weights on a CPU test would take minutes): embeddings, 32 layers of
    attention (q, o: H x H; k, v: H x kv_heads x head_dim) and MLP (3 x H x I), norms, an untied LM head."""
    s = RANDOM_SHAPES[shape]
    h, i, v, layers = s["hidden_size"], s["intermediate_size"], s["vocab_size"], s["num_hidden_layers"]
    kv = h // s["num_attention_heads"] * s["num_key_value_heads"]
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * i + 2 * h
    total = 2 * v * h + layers * per_layer + h
    assert total / 1e9 == pytest.approx(billions, abs=0.01)


def test_random_tiny_model_is_deterministic_and_fits_the_tokenizer():
    a, tokenizer = build_random_model("tiny", device="cpu", seed=3)
    b, _ = build_random_model("tiny", device="cpu", seed=3)
    assert a.config.vocab_size >= len(tokenizer)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not any(p.requires_grad for p in a.parameters())


def test_long_texts_reach_the_length(tokenizer):
    texts = ["one two three four five", "six seven eight", "nine ten eleven twelve thirteen"]
    joined = long_texts(texts, tokenizer, 20)
    assert joined and all(len(tokenizer(t, add_special_tokens=False)["input_ids"]) >= 20 for t in joined)


def test_reference_config_keeps_samples_per_step():
    cfg = load_config("reference-code", ["train.batch_size=4", "train.grad_accum=2", "model.dtype=bfloat16"])
    ref = reference_config(cfg)
    assert (ref.train.batch_size, ref.train.grad_accum, ref.model.dtype) == (1, 8, "float32")


def test_student_flops_without_skipping_is_six_n_t_style(tiny_model):
    """Forward 2 P T + 2 V H T, backward the same for layers >= 0 when nothing is skipped: 2x forward."""
    layers = sum(p.numel() for layer in tiny_model.model.layers for p in layer.parameters())
    head = tiny_model.lm_head.weight.numel()
    flops = student_flops(tiny_model, {"student_tokens": 10, "head_positions": 10}, first_lora=0)
    assert flops == 2 * (2 * layers * 10 + 2 * head * 10)


def test_reference_target_is_the_elm_target(tokenizer):
    """The reference engine's float64 full-vocabulary target equals targets.erase_targets on the same tokens."""
    cfg = load_config("tiny", SMALL + ["elm.top_k=5", "elm.eta_schedule=linear", "elm.eta=30"])
    engine = ReferenceEngine(cfg, build_tiny_model(tokenizer), tokenizer)
    text, expert, novice = " Harry went to Hogwarts.", "An expert wrote:\n", "A novice wrote:\n"
    target = engine.erase_target(text, expert, novice)
    elm = ElmSettings(**{**cfg.elm.__dict__, "target_dtype": "float64"})
    ex = EraseExample(encode(tokenizer, text), encode(tokenizer, expert), encode(tokenizer, novice))
    with engine.model.disable_adapter():
        indices, probs = erase_targets(engine.model, [ex], [tokenizer.bos_token_id], tokenizer.pad_token_id, elm)
    dense = torch.zeros_like(target).scatter_(-1, indices, probs)
    assert torch.allclose(target, dense, atol=1e-5)


def test_bench_runs_both_engines_and_reports(tokenizer):
    cfg = load_config("reference-code", SMALL + ["train.batch_size=2", "train.grad_accum=1", "model.device=cpu"])
    plan = BenchPlan(cfg, ModelSource("tiny"), steps=1, warmup=0, reference_samples=2)
    results = run_bench(plan)
    ours, ref = results
    assert (ours.engine, ref.engine) == ("elm", "reference")
    assert ours.samples == 2 and ref.samples == 2 and len(ref.sample_seconds) == 2
    for r in results:
        assert r.samples_per_s > 0 and r.tokens > 0 and r.peak_memory > 0 and r.memory_kind == "cpu rss"
        assert {"frozen", "student_erase", "student_retain", "student_fluency"} <= set(r.phases)
        assert r.student_flops > 0 and r.mfu is None  # no known peak on a CPU
    assert ref.phases["generation"] > 0
    report = format_results(results)
    assert "speed-up elm / reference" in report and "9000" in report


def test_bench_config_limits_texts_and_isolates_fluency_cache(tmp_path, tokenizer):
    cfg = load_config("reference-code", SMALL)
    out = bench_config(cfg, 6, tokenizer, text_tokens=40, fluency_dir=str(tmp_path))
    assert out.data.max_texts == 6 and out.data.max_tokens == 40 and out.fluency.cache_dir == str(tmp_path)
    assert len(out.concepts) == 1 and cfg.data.max_texts is None  # the caller's config is left alone


@pytest.mark.slow
def test_bench_command_with_ablations_writes_json(tmp_path, capsys):
    path = tmp_path / "bench.json"
    code = main(["bench", "--random-init", "tiny", "--engine", "elm", "--ablate", "--steps", "1", "--warmup", "0",
                 "--json", str(path), *SMALL, "train.batch_size=2", "train.grad_accum=1"])
    assert code == 0
    out = capsys.readouterr().out
    assert "elm plain path" in out and "elm -prefix_cache" in out
    data = json.loads(path.read_text())
    assert [r["engine"] for r in data["results"]][0] == "elm" and len(data["results"]) == 6
