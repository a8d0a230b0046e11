"""Config loading: every shipped preset, precedence, validation, errors that name the fix."""

import pytest

from elmerase.config import ConfigError, EraseConfig, describe_fields, list_presets, load_config, parse_layers


@pytest.mark.parametrize("name", list_presets())
def test_every_preset_loads_and_starts_with_its_command(name):
    cfg = load_config(name)
    assert isinstance(cfg, EraseConfig)
    from elmerase.config import preset_path

    first = preset_path(name).read_text().splitlines()[0]
    assert first.startswith("# elmerase ")


def test_presets_hold_the_papers_and_reference_codes_values():
    paper = load_config("paper")
    assert (paper.lora.rank, paper.elm.eta, paper.elm.eta_schedule, paper.lora.layers) == (4, 500, "constant", [4, 5, 6, 7])
    ref = load_config("reference-code")
    assert (ref.lora.rank, ref.lora.alpha, ref.lora.dropout) == (256, 16, 0.05)
    assert (ref.elm.eta, ref.elm.eta_schedule, ref.elm.eta_start) == (1000, "linear", 1)
    assert (ref.elm.temperature, ref.elm.top_k, ref.train.lr, ref.train.grad_accum) == (1.2, 50, 5e-5, 4)
    assert (ref.elm.retain_loss, ref.train.batch_size, ref.data.min_chars, ref.data.max_chars) == ("hard_ce", 1, 50, 700)


def test_precedence_cli_over_yaml_over_defaults(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  steps: 7\n  lr: 0.01\n")
    cfg = load_config(str(path), ["train.steps=9", "lora.layers=2-3", "concepts.0.erase=[a, b]",
                                  "concepts.0.retain=r.txt"])
    assert cfg.train.steps == 9 and cfg.train.lr == 0.01 and cfg.train.batch_size == EraseConfig().train.batch_size
    assert cfg.lora.layers == [2, 3] and cfg.concepts[0].erase == ["a", "b"]


@pytest.mark.parametrize("override,message", [
    ("train.stpes=3", "did you mean 'steps'"),
    ("elm.eta_schedule=cosine", "eta_schedule='cosine' is not one of constant, linear"),
    ("train.steps=0", "train.steps=0 must be at least 1"),
    ("trainsteps", "must look like section.field=value"),
])
def test_bad_values_name_the_fix(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("tiny", [override])


def test_unknown_preset_lists_presets():
    with pytest.raises(ConfigError, match="presets: .*paper"):
        load_config("no-such-thing")


def test_parse_layers():
    assert parse_layers("4-7") == [4, 5, 6, 7]
    assert parse_layers("1,3-4") == [1, 3, 4]
    assert parse_layers([4, 5]) == [4, 5]


def test_every_field_has_help():
    rows = describe_fields()
    assert len(rows) > 40
    missing = [name for name, _, help_ in rows if not help_]
    assert missing == []
