import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from asr.config import (
    ConfigError,
    apply_overrides,
    from_dict,
    load_config,
    parse_override,
    read_yaml,
    save_config,
    to_dict,
)
from asr.encoders.base import EncoderConfig
from asr.experiment import ExperimentConfig
from asr.train.optim import OptimConfig as TrainOptimConfig


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.98)
    schedule: Literal["noam", "cosine"] = "noam"


@dataclass(frozen=True)
class CTCSection:
    weight: float = 0.3


@dataclass(frozen=True)
class Experiment:
    name: str
    max_steps: int = 100
    use_amp: bool = False
    exp_dir: Path = Path("exp")
    chunk_sizes: list[int] = field(default_factory=lambda: [16, 32])
    optim: OptimConfig = field(default_factory=OptimConfig)
    ctc: CTCSection | None = None
    extra: dict[str, float] = field(default_factory=dict)


def test_defaults_fill_missing_keys_and_nested_sections():
    cfg = from_dict(Experiment, {"name": "x"})
    assert cfg == Experiment(name="x")
    assert cfg.optim.lr == 1e-3 and cfg.ctc is None


def test_unknown_key_is_an_error_with_did_you_mean_and_full_path():
    with pytest.raises(ConfigError, match=r"unknown key 'optim\.lrr'.*did you mean 'lr'"):
        from_dict(Experiment, {"name": "x", "optim": {"lrr": 0.1}})
    with pytest.raises(ConfigError, match=r"unknown key 'max_step'.*did you mean 'max_steps'"):
        from_dict(Experiment, {"name": "x", "max_step": 3})


@pytest.mark.parametrize(
    "data, match",
    [
        ({"name": "x", "max_steps": "ten"}, r"max_steps: expected an integer"),
        ({"name": "x", "max_steps": 1.5}, r"max_steps: expected an integer"),
        ({"name": "x", "use_amp": "yes"}, r"use_amp: expected true/false"),
        ({"name": "x", "optim": {"schedule": "step"}}, r"optim\.schedule: 'step' is not one of"),
        ({"name": "x", "chunk_sizes": [16, "a"]}, r"chunk_sizes\[1\]: expected an integer"),
        ({"name": "x", "optim": {"betas": [0.9]}}, r"optim\.betas: expected 2 items"),
        ({"name": "x", "optim": None}, r"optim: null is not allowed"),
        ({}, r"missing required key 'name'"),
    ],
)
def test_wrong_types_name_the_field(data, match):
    with pytest.raises(ConfigError, match=match):
        from_dict(Experiment, data)


def test_overrides_coerce_types_and_create_optional_sections():
    data = apply_overrides(
        {"name": "x", "optim": {"lr": 0.1}},
        ["optim.lr=2e-4", "max_steps=7", "use_amp=true", "chunk_sizes=[8, 16]", "ctc.weight=0.5",
         "exp_dir=/tmp/e", "extra.a=1"],
    )
    cfg = from_dict(Experiment, data)
    assert cfg.optim.lr == pytest.approx(2e-4) and isinstance(cfg.optim.lr, float)
    assert cfg.max_steps == 7 and cfg.use_amp is True
    assert cfg.chunk_sizes == [8, 16]
    assert cfg.ctc == CTCSection(weight=0.5)
    assert cfg.exp_dir == Path("/tmp/e")
    assert cfg.extra == {"a": 1.0}


def test_int_fields_take_whole_numbers_written_as_floats(tmp_path):
    """``--set max_steps=1e3`` (YAML 1.1 reads 1e3 as a string) was refused for an int field;
    a whole number is taken, a fraction, NaN, infinity or a boolean is not (naming the key)."""
    for text, expected in (("1e3", 1000), ("2.0", 2), ("1.0e+3", 1000), ("-3e0", -3)):
        cfg = from_dict(Experiment, apply_overrides({"name": "x"}, [f"max_steps={text}"]))
        assert cfg.max_steps == expected and type(cfg.max_steps) is int
    cfg = from_dict(Experiment, apply_overrides({"name": "x"}, ["chunk_sizes=[1e1, 2.0]"]))
    assert cfg.chunk_sizes == [10, 2]
    path = tmp_path / "exp.yaml"
    path.write_text("name: demo\nmax_steps: 1e3\n")
    assert load_config(Experiment, path).max_steps == 1000
    experiment = load_config(ExperimentConfig, "recipes/mini_tts/conformer_transducer.yaml",
                             overrides=["train.max_steps=1e3"])
    assert experiment.train.max_steps == 1000
    for text in ("1.5", "1.5e0", "nan", ".nan", "inf", ".inf", "-.inf", "1e400", "true", "ten"):
        with pytest.raises(ConfigError, match=r"^max_steps: expected an integer"):
            from_dict(Experiment, apply_overrides({"name": "x"}, [f"max_steps={text}"]))


def test_override_errors():
    with pytest.raises(ConfigError, match="must look like"):
        parse_override("optim.lr")
    with pytest.raises(ConfigError, match="is a value, not a section"):
        apply_overrides({"name": "x"}, ["name.first=1"])
    with pytest.raises(ConfigError, match=r"unknown key 'optim\.lx'"):
        from_dict(Experiment, apply_overrides({"name": "x"}, ["optim.lx=1"]))
    assert parse_override("a.b=null") == (["a", "b"], None)


def test_optional_section_can_be_disabled_with_null():
    cfg = from_dict(
        Experiment, apply_overrides({"name": "x", "ctc": {"weight": 1.0}}, ["ctc=null"])
    )
    assert cfg.ctc is None


def test_yaml_round_trip_and_file_errors(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("name: demo\noptim:\n  lr: 1.0e-3\n  betas: [0.8, 0.9]\nctc:\n  weight: 0.2\n")
    cfg = load_config(Experiment, path, overrides=["max_steps=5"])
    assert cfg.optim.betas == (0.8, 0.9) and cfg.max_steps == 5 and cfg.ctc.weight == 0.2
    saved = tmp_path / "out" / "config.yaml"
    save_config(cfg, saved)
    assert load_config(Experiment, saved) == cfg
    assert to_dict(cfg)["exp_dir"] == "exp"

    bad = tmp_path / "bad.yaml"
    bad.write_text("name: demo\noptimm: {}\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: unknown key 'optimm'.*did you mean 'optim'"):
        load_config(Experiment, bad)
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(Experiment, tmp_path / "list.yaml")


def test_post_init_validation_is_reported_as_config_error():
    @dataclass(frozen=True)
    class Positive:
        value: int = 1

        def __post_init__(self):
            if self.value <= 0:
                raise ValueError(f"value must be > 0, got {self.value}")

    with pytest.raises(ConfigError, match="value must be > 0"):
        from_dict(Positive, {"value": -1})


def test_base_files_are_merged_under_the_mapping_that_names_them(tmp_path):
    (tmp_path / "presets").mkdir()
    (tmp_path / "presets" / "enc.yaml").write_text("kind: conformer\nd_model: 64\nnum_heads: 4\n")
    (tmp_path / "presets" / "small.yaml").write_text("_base_: enc.yaml\nd_model: 32\n")
    (tmp_path / "recipe.yaml").write_text(
        "encoder:\n  _base_: [presets/small.yaml]\n  num_heads: 2\nheads: {ctc: {}}\n"
    )
    assert read_yaml(tmp_path / "recipe.yaml") == {
        "encoder": {"kind": "conformer", "d_model": 32, "num_heads": 2}, "heads": {"ctc": {}},
    }


def test_base_errors_name_the_files(tmp_path):
    (tmp_path / "a.yaml").write_text("_base_: b.yaml\n")
    (tmp_path / "b.yaml").write_text("x:\n  _base_: a.yaml\n")
    with pytest.raises(ConfigError, match=r"extend each other: .*a.yaml -> .*b.yaml -> .*a.yaml"):
        read_yaml(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("_base_: missing.yaml\n")
    with pytest.raises(FileNotFoundError,
                       match=r"missing.yaml: no such file \(the _base_ of .*c.yaml"):
        read_yaml(tmp_path / "c.yaml")
    (tmp_path / "d.yaml").write_text("_base_: {a: 1}\n")
    with pytest.raises(ConfigError, match="_base_ must be a file name"):
        read_yaml(tmp_path / "d.yaml")


def test_librispeech_recipes_name_their_presets_instead_of_copying_them():
    root = Path(__file__).resolve().parents[1] / "recipes"
    preset = load_config(EncoderConfig, root / "presets" / "encoder_m.yaml")
    optim = load_config(TrainOptimConfig, root / "presets" / "optim_librispeech.yaml")
    for recipe in sorted((root / "librispeech").glob("*.yaml")):
        cfg = load_config(ExperimentConfig, recipe)
        assert cfg.optim == optim, recipe
        if "_offline" in recipe.stem:  # the streaming recipe at full context
            assert "_base_: conformer_transducer.yaml" in recipe.read_text()
            assert cfg.encoder == dataclasses.replace(preset, causal=False, chunk_size=0,
                                                      left_chunks=-1, dynamic_chunk_training=False)
            continue
        assert "_base_: ../presets/encoder_m.yaml" in recipe.read_text()
        assert cfg.encoder == preset, recipe


def test_a_key_given_twice_in_a_yaml_file_is_an_error_naming_file_and_lines(tmp_path):
    # PyYAML keeps the last of two equal keys silently: the first value would be lost
    path = tmp_path / "dup.yaml"
    path.write_text("name: demo\noptim:\n  lr: 0.1\n  schedule: cosine\n  lr: 0.2\n")
    with pytest.raises(ConfigError, match=r"(?s)dup\.yaml.*'lr' is given twice \(first on line 3\)"
                                          r".*line 5"):
        load_config(Experiment, path)
    path.write_text("name: demo\noptim: {lr: 0.1}\nname: other\n")
    with pytest.raises(ConfigError, match=r"'name' is given twice \(first on line 1\)"):
        read_yaml(path)
    with pytest.raises(ConfigError, match="given twice"):
        parse_override("optim={lr: 1, lr: 2}")


def test_anchors_aliases_and_merge_keys_still_load(tmp_path):
    # a merge key's mapping may be overridden by the keys beside it: that is not a duplicate
    path = tmp_path / "anchors.yaml"
    path.write_text(
        "name: demo\nctc: &c {weight: 0.5}\n"
        "optim:\n  <<: {lr: 0.1, schedule: cosine}\n  lr: 0.2\n"
    )
    assert read_yaml(path) == {"name": "demo", "ctc": {"weight": 0.5},
                               "optim": {"lr": 0.2, "schedule": "cosine"}}
    cfg = load_config(Experiment, path)
    assert cfg.optim.lr == 0.2 and cfg.optim.schedule == "cosine" and cfg.ctc.weight == 0.5


def test_a_key_given_twice_on_the_command_line_takes_the_last():
    assert apply_overrides({}, ["a.b=1", "a.b=2"]) == {"a": {"b": 2}}


@pytest.mark.parametrize(
    "override, key",
    [
        ("train.log_interval=0", "log_interval"),  # the loop takes steps modulo it: step 1 crashed
        ("train.max_steps=-5", "max_steps"),
        ("train.keep_last=-1", "keep_last"),
        ("train.checkpoint_interval=-1", "checkpoint_interval"),
        ("train.average_period=-1", "average_period"),
        ("train.max_skipped_in_a_row=-1", "max_skipped_in_a_row"),
        ("train.time_budget_s=nan", "time_budget_s"),
        ("train.min_loss_scale=.nan", "min_loss_scale"),
        ("optim.lr=nan", "lr"),
        ("optim.lr=.inf", "lr"),
        ("optim.min_lr=-1e-5", "min_lr"),  # cosine would end with a negative learning rate
        ("optim.weight_decay=-0.1", "weight_decay"),
        ("optim.betas=[0.9, 1.0]", "betas"),
        ("optim.total_steps=0", "total_steps"),
        ("optim.grad_clip=nan", "grad_clip"),
        ("optim.lr_batches=inf", "lr_batches"),
        ("heads.loss_weights.ctc=-1", "loss_weights"),
        ("heads.loss_weights.ctc=nan", "loss_weights"),
    ],
)
def test_invalid_training_values_are_refused_at_load_naming_the_key(override, key):
    overrides = ["heads.ctc={}", override]
    with pytest.raises(ConfigError, match=key):
        load_config(ExperimentConfig, None, overrides)


def test_the_documented_off_values_still_load():
    cfg = load_config(ExperimentConfig, None, [
        "train.max_steps=0", "train.valid_interval=0", "train.checkpoint_interval=0",
        "train.keep_last=0", "train.average_period=0", "train.min_loss_scale=0",
        "optim.grad_clip=0", "optim.weight_decay=0", "optim.min_lr=0", "heads.ctc={}",
        "heads.loss_weights.ctc=0",
    ])
    assert cfg.optim.grad_clip == 0 and cfg.heads.weights() == {"ctc": 0.0}


def test_a_quoted_number_is_text_and_refused_for_a_number_field(tmp_path):
    """``lr: "0.5"`` in a YAML (or ``--set 'lr="0.5"'``) is a string: it was taken as the number
    it spells, as a bool or NaN is not; refused naming the key. A number written as YAML writes
    numbers (``0.5``, ``1e-3``, ``1.0e3``, ``--set max_steps=7``) is taken."""
    path = tmp_path / "exp.yaml"
    for text, key in (('optim:\n  lr: "0.5"\n', "optim.lr"), ("max_steps: '7'\n", "max_steps"),
                      ("optim:\n  betas: [0.9, '0.98']\n", r"optim.betas\[1\]"),
                      ("ctc:\n  weight: !!str 1\n", "ctc.weight")):
        path.write_text("name: demo\n" + text)
        with pytest.raises(ConfigError, match=rf"{key}: expected an? (number|integer), got "
                                              r"'[0-9.]+' \(a string: write the number "
                                              r"without quotes\)"):
            load_config(Experiment, path)
    with pytest.raises(ConfigError, match=r"optim.lr: expected a number, got '0.5'"):
        load_config(Experiment, None, ['name=x', 'optim.lr="0.5"'])
    path.write_text("name: demo\noptim:\n  lr: 1e-3\n  betas: [1.0e-1, 5E-1]\nmax_steps: 1e3\n")
    cfg = load_config(Experiment, path, overrides=["optim.lr=0.5", "ctc.weight=2e-1"])
    assert (cfg.optim.lr, cfg.optim.betas, cfg.max_steps) == (0.5, (0.1, 0.5), 1000)
    assert cfg.ctc == CTCSection(weight=0.2) and type(cfg.ctc.weight) is float
    assert load_config(Experiment, path, overrides=["optim.lr=1.0e3"]).optim.lr == 1000.0


def test_an_error_of_a_set_override_names_the_overrides_not_the_file(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("name: demo\noptim:\n  lr: 0.5\n")
    with pytest.raises(ConfigError, match=r"^the --set overrides \(on .*exp\.yaml\): unknown key "
                       r"'optim\.lrr'.*did you mean 'lr'") as caught:  # fmt: skip
        load_config(Experiment, path, overrides=["max_steps=5", "optim.lrr=1"])
    assert not str(caught.value).startswith(str(path))
    with pytest.raises(ConfigError, match=r"^the --set overrides: optim\.lr: expected a number"):
        load_config(Experiment, None, overrides=["name=x", "optim.lr=abc"])
    # an error of the file is the file's, with overrides or without
    path.write_text("name: demo\noptimm: {}\n")
    with pytest.raises(ConfigError, match=r"^.*exp\.yaml: unknown key 'optimm'"):
        load_config(Experiment, path, overrides=["max_steps=5"])
