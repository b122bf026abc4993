import pytest

from weakseg.engine.config import ConfigError, config_hash, dump_yaml, load_config, parse_override


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_defaults_and_name_from_file(tmp_path):
    cfg = load_config(write(tmp_path, "my_run.yaml", "method: {name: full}\n"))
    assert cfg.name == "my_run"
    assert cfg.method.name == "full"
    assert cfg.engine.batch_size == 8


def test_unknown_key_names_path_file_and_closest(tmp_path):
    p = write(tmp_path, "bad.yaml", "optim:\n  lerning_rate: 0.1\n")
    with pytest.raises(ConfigError) as exc:
        load_config(p)
    msg = str(exc.value)
    assert "optim.lerning_rate" in msg and str(p) in msg
    p = write(tmp_path, "bad2.yaml", "engine:\n  batch_sise: 4\n")
    with pytest.raises(ConfigError, match="did you mean 'batch_size'"):
        load_config(p)


def test_unknown_method_key_is_checked_against_method_config(tmp_path):
    p = write(tmp_path, "m.yaml", "method:\n  name: full\n  label_smothing: 0.1\n")
    with pytest.raises(ConfigError, match="method.label_smothing.*label_smoothing"):
        load_config(p)
    with pytest.raises(ConfigError, match="unknown method 'ful'.*'full'"):
        load_config(write(tmp_path, "m2.yaml", "method: {name: ful}\n"))


def test_types_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="engine.channels_last: expected true or false"):
        load_config(write(tmp_path, "a.yaml", "engine: {channels_last: 'yes'}\n"))
    with pytest.raises(ConfigError, match="engine.batch_size: expected an integer"):
        load_config(write(tmp_path, "b.yaml", "engine: {batch_size: 2.5}\n"))
    with pytest.raises(ConfigError, match="data.scale_range: expected a list of 2"):
        load_config(write(tmp_path, "c.yaml", "data: {scale_range: [0.5, 1.0, 2.0]}\n"))
    cfg = load_config(write(tmp_path, "d.yaml", "optim: {lr: 1}\ndata: {scale_range: [0.5, 2]}\n"))
    assert isinstance(cfg.optim.lr, float) and cfg.data.scale_range == (0.5, 2.0)


def test_choices_are_validated(tmp_path):
    with pytest.raises(ConfigError, match="optim.name = 'adam'"):
        load_config(write(tmp_path, "a.yaml", "optim: {name: adam}\n"))
    with pytest.raises(ConfigError, match="model.output_stride"):
        load_config(write(tmp_path, "b.yaml", "model: {output_stride: 12}\n"))


def test_base_and_overrides(tmp_path):
    (tmp_path / "_base_").mkdir()
    write(tmp_path / "_base_", "b.yaml", "optim: {lr: 0.5, momentum: 0.8}\nmodel: {head_kwargs: {a: 1}}\n")
    p = write(tmp_path, "child.yaml", "_base_: _base_/b.yaml\noptim: {lr: 0.1}\nmodel: {head_kwargs: {b: 2}}\n")
    cfg = load_config(p, ["engine.seed=7", "eval.scales=[0.5,1.0]", "eval.crf=null"])
    assert cfg.optim.lr == 0.1 and cfg.optim.momentum == 0.8  # merged section
    assert cfg.model.head_kwargs == {"b": 2}  # kwargs dicts are replaced, not merged
    assert cfg.engine.seed == 7 and cfg.eval.scales == (0.5, 1.0) and cfg.eval.crf is None
    with pytest.raises(ConfigError, match="unknown config key 'engine.sed'"):
        load_config(p, ["engine.sed=1"])


def test_base_chains_are_refused(tmp_path):
    write(tmp_path, "a.yaml", "engine: {seed: 1}\n")
    write(tmp_path, "b.yaml", "_base_: a.yaml\n")
    with pytest.raises(ConfigError, match="chains are not allowed"):
        load_config(write(tmp_path, "c.yaml", "_base_: b.yaml\n"))


def test_override_parsing_and_hash():
    assert parse_override("a.b=3") == (["a", "b"], 3)
    assert parse_override("a=[1, 2]") == (["a"], [1, 2])
    assert parse_override("a=true") == (["a"], True)
    with pytest.raises(ConfigError):
        parse_override("novalue")
    assert config_hash({"a": 1}) == config_hash({"a": 1}) != config_hash({"a": 2})


def test_every_preset_loads():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "configs"
    presets = [p for p in root.rglob("*.yaml") if "_base_" not in p.parts]
    assert presets
    for p in presets:
        cfg = load_config(p)
        assert cfg.name == p.stem
        assert "name:" in dump_yaml(cfg)
