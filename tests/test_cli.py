"""The command line: --help of every subcommand, a full tiny erase run, error messages."""

import subprocess
import sys

import pytest

from elmerase.cli import SUBCOMMANDS, build_parser, main
from tests.conftest import GENERAL_TEXTS, HP_TEXTS


def test_top_level_help(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    assert "erase" in capsys.readouterr().out


@pytest.mark.parametrize("command", sorted(build_parser()._subparsers._group_actions[0].choices))
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    assert "example" in capsys.readouterr().out.lower()


def test_erase_help_lists_config_fields(capsys):
    with pytest.raises(SystemExit):
        main(["erase", "--help"])
    out = capsys.readouterr().out
    for field in ("lora.rank", "elm.eta_schedule", "train.grad_accum", "fluency.gamma", "concepts.N.erase"):
        assert field in out


def _write_data(tmp_path):
    (tmp_path / "erase.txt").write_text("\n\n".join(HP_TEXTS))
    (tmp_path / "retain.txt").write_text("\n\n".join(GENERAL_TEXTS))


def _tiny_args(tmp_path):
    return ["erase", "--config", "tiny", f"concepts.0.erase={tmp_path / 'erase.txt'}",
            f"concepts.0.retain={tmp_path / 'retain.txt'}", "train.steps=2", "train.batch_size=2",
            f"fluency.cache_dir={tmp_path / 'cache'}", "fluency.max_new_tokens=6", "fluency.min_new_tokens=4",
            "output.sample_max_new_tokens=4", "--quiet"]


@pytest.mark.slow
def test_erase_writes_every_output_via_console_script(tmp_path):
    _write_data(tmp_path)
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "elmerase", *_tiny_args(tmp_path), "--output", str(out),
                           "--merge"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    for name in ("adapter/adapter_model.safetensors", "config.yaml", "metrics.jsonl", "losses.png", "samples.md",
                 "merged/config.json"):
        assert (out / name).exists(), name
    assert "wrote" in proc.stdout


def test_existing_output_needs_overwrite(tmp_path, capsys):
    _write_data(tmp_path)
    out = tmp_path / "run"
    out.mkdir()
    (out / "x").write_text("keep")
    assert main([*_tiny_args(tmp_path), "--output", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "x").read_text() == "keep"


@pytest.mark.parametrize("override,message", [
    ("concepts.0.erase=/no/such/file.txt", "does not exist"),
    ("data.min_chars=100000", "all shorter than data.min_chars"),
    ("lora.layers=[30]", "the model has layers 0-7"),
    ("lora.target_modules=[c_attn]", "its linear modules are"),
    ("train.stpes=3", "did you mean 'steps'"),
])
def test_errors_name_the_fix(tmp_path, capsys, override, message):
    _write_data(tmp_path)
    code = main([*_tiny_args(tmp_path), "--output", str(tmp_path / "run"), override])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
