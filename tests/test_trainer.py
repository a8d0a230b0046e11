"""A few ELM steps on the tiny model: what changes, what does not, what is written, determinism."""

import json

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

from elmerase import erase
from elmerase.tiny import build_tiny_model


def test_three_steps_train_only_lora_and_write_everything(tiny_config, tokenizer):
    model = build_tiny_model(tokenizer, seed=0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = erase(tiny_config, model=model, tokenizer=tokenizer, progress=False, keep_model=True)
    out = result.output_dir
    for name in ("adapter/adapter_config.json", "adapter/adapter_model.safetensors", "config.yaml",
                 "metrics.jsonl", "losses.png", "samples.md"):
        assert (out / name).is_file(), name
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    for row in rows:
        for key in ("erase", "retain", "fluency", "total", "lr", "seconds", "tokens_per_s"):
            assert key in row and torch.isfinite(torch.tensor(float(row[key])))
    peft_model = result.run.model
    base = peft_model.get_base_model()
    for name, param in base.named_parameters():
        if "lora_" in name:
            continue
        original = before[name.replace(".base_layer", "")]
        assert torch.equal(param, original), f"base weight {name} changed"
    lora_b = [p for n, p in peft_model.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b), "LoRA B should have moved from zero"
    assert "Harry Potter's best friend is" in (out / "samples.md").read_text()


def test_saved_adapter_reloads_with_same_logits(tiny_config, tokenizer):
    result = erase(tiny_config, model=build_tiny_model(tokenizer, seed=0), tokenizer=tokenizer,
                   progress=False, keep_model=True)
    ids = torch.tensor([[1] + tokenizer("Hogwarts and the moon", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        trained = result.run.model(ids).logits
        reloaded = PeftModel.from_pretrained(build_tiny_model(tokenizer, seed=0), result.output_dir / "adapter")
        again = reloaded.eval()(ids).logits
        with reloaded.disable_adapter():
            original = reloaded(ids).logits
    assert torch.allclose(trained, again, atol=1e-6)
    assert not torch.allclose(trained, original, atol=1e-6)


@pytest.mark.slow
def test_same_seed_gives_bit_identical_adapter(tiny_config, tokenizer, tmp_path):
    paths = []
    for i in range(2):
        tiny_config.output.dir = str(tmp_path / f"run{i}")
        paths.append(erase(tiny_config, model=build_tiny_model(tokenizer, seed=0), tokenizer=tokenizer,
                           progress=False).output_dir)
    a, b = (load_file(p / "adapter" / "adapter_model.safetensors") for p in paths)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_merge_writes_a_plain_model(tiny_config, tokenizer):
    tiny_config.output.merge = True
    out = erase(tiny_config, model=build_tiny_model(tokenizer, seed=0), tokenizer=tokenizer, progress=False).output_dir
    assert (out / "merged" / "config.json").is_file()
    assert (out / "merged" / "model.safetensors").is_file()


def test_existing_output_is_not_overwritten(tiny_config, tokenizer, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="--overwrite"):
        erase(tiny_config, model=build_tiny_model(tokenizer, seed=0), tokenizer=tokenizer, progress=False)
    assert (out / "keep.txt").read_text() == "precious"


def test_failed_run_leaves_no_partial_output(tiny_config, tokenizer, tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("disk full")
    monkeypatch.setattr("elmerase.api.plot_losses", boom)
    with pytest.raises(RuntimeError):
        erase(tiny_config, model=build_tiny_model(tokenizer, seed=0), tokenizer=tokenizer, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]


def test_two_concepts_are_interleaved_by_weight(tiny_config, tokenizer, monkeypatch):
    from elmerase import trainer
    from elmerase.config import ConceptSpec

    first = tiny_config.concepts[0]
    tiny_config.concepts = [ConceptSpec("bio", first.erase, first.retain, weight=2.0),
                            ConceptSpec("cyber", first.erase[:3], first.retain, weight=1.0)]
    tiny_config.train.steps, tiny_config.train.grad_accum = 2, 3
    tiny_config.elm.l_fluency = 0.0
    seen = []
    original = trainer.micro_batch_losses
    monkeypatch.setattr(trainer, "micro_batch_losses",
                        lambda run, state: seen.append(state.data.concept) or original(run, state))
    erase(tiny_config, model=build_tiny_model(tokenizer, seed=0), tokenizer=tokenizer, progress=False)
    assert seen == ["bio", "cyber", "bio", "bio", "cyber", "bio"]
