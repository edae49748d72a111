"""Configuration: defaults in one place, file and CLI merged, errors that name the option."""

import json

import pytest

from enet_cli.core.config import (
    OPTION_ALIASES,
    DataConfig,
    EnetConfig,
    Mode,
    ModelConfig,
    RuntimeConfig,
    TrainConfig,
    model_size,
    option_name,
    parse_size,
)
from enet_cli.core.errors import ConfigError
from enet_cli.train.settings import load_config

pytestmark = pytest.mark.compat


def test_defaults_are_the_published_recipe():
    """PyTorch-ENet's CamVid arguments (its saved ARGUMENTS: batch_size 10, epochs 300,
    learning_rate 0.0005, lr_decay 0.1, lr_decay_epochs 100, weight_decay 0.0002, weighing
    ENet, 360x480) and its training transform (Resize + ToTensor: no augmentation, no
    gradient clipping, Adam)."""
    cfg = load_config()
    assert cfg.train.batch_size == 10 and cfg.train.epochs == 300
    assert cfg.train.learning_rate == 5e-4 and cfg.train.weight_decay == 2e-4
    assert cfg.train.lr_decay_epochs == 100 and cfg.train.lr_decay_factor == 0.1
    assert cfg.train.class_weighting.value == "enet" and cfg.train.clip_norm is None
    assert cfg.data.augment is False and cfg.data.random_scale is None
    assert cfg.data.color_jitter == 0
    assert cfg.data.image_size is None  # the preprocessed size
    assert cfg.runtime.mode is Mode.single
    assert cfg.model.num_classes == 11


def test_yaml_file_then_cli_overrides(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("train:\n  batch_size: 4\n  epochs: 7\ndata:\n  image_size: 720x960\n")
    cfg = load_config(path, {"train": {"epochs": 2, "batch_size": None}})
    assert cfg.train.batch_size == 4  # from the file: the unset option (None) does not hide it
    assert cfg.train.epochs == 2  # the CLI wins over the file
    assert cfg.data.image_size == (720, 960)


def test_json_file(tmp_path):
    path = tmp_path / "exp.json"
    path.write_text(
        json.dumps(
            {"runtime": {"mode": "mp", "microbatches": 2}, "data": {"image_size": [368, 496]}}
        )
    )
    cfg = load_config(path)
    assert cfg.runtime.mode is Mode.mp and cfg.runtime.microbatches == 2
    assert cfg.data.image_size == (368, 496)


@pytest.mark.parametrize(
    "overrides,expected",
    [
        ({"train": {"batch_size": -2}}, "invalid value for --batch-size: "),
        ({"runtime": {"mode": "pipeline"}}, "invalid value for --mode: "),
        ({"data": {"image_size": "0x480"}}, "must be 1 to 16384"),
        ({"data": {"image_size": "big"}}, "invalid value for --size: expected HEIGHTxWIDTH"),
        ({"model": {"num_classes": 1}}, "invalid value for --classes: "),
    ],
)
def test_cli_errors_name_the_option(overrides, expected):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    message = str(err.value)
    assert expected in message
    assert "\n" not in message


def test_file_errors_name_the_file_and_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  batch_size: 0\n")
    with pytest.raises(ConfigError, match=r"train\.batch_size in .*bad\.yaml"):
        load_config(path)
    path.write_text("train:\n  batch_sise: 4\n")
    with pytest.raises(ConfigError, match=r"unknown setting train\.batch_sise in .*bad\.yaml"):
        load_config(path)
    path.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml is not valid YAML/JSON"):
        load_config(path)
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(path)
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize(
    "text,size",
    [("360x480", (360, 480)), ("720,960", (720, 960)), ([8, 16], (8, 16)), ("368X496", (368, 496))],
)
def test_parse_size(text, size):
    assert parse_size(text) == size


def test_model_size_rounds_each_side_up_to_a_multiple_of_8():
    assert model_size(361, 479) == (368, 480)
    assert model_size(360, 480) == (360, 480)
    assert model_size(1, 1) == (8, 8)
    assert model_size(181, 243) == (184, 248)


def test_field_names_are_unique_across_sections_so_cli_options_are_flat():
    names = [
        f
        for section in (ModelConfig, DataConfig, TrainConfig, RuntimeConfig)
        for f in section.model_fields
    ]
    assert len(names) == len(set(names))
    options = [option_name(n) for n in names]
    assert len(options) == len(set(options))
    assert set(OPTION_ALIASES) <= set(names)


def test_random_scale_and_round_trip_through_json():
    cfg = load_config(None, {"data": {"random_scale": "0.75,1.5"}})
    assert cfg.data.random_scale == (0.75, 1.5)
    again = EnetConfig.model_validate_json(cfg.model_dump_json())
    assert again == cfg
    with pytest.raises(ConfigError, match="random-scale"):
        load_config(None, {"data": {"random_scale": "1.5,0.5"}})
