"""The model catalogue file: what it accepts, and a ConfigError naming the file and field for what it does not."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nightshift.core.catalogue import Catalogue, ModelRef
from nightshift.core.errors import ConfigError
from nightshift.settings import EngineConfig, Settings

GOOD = """
default: small
models:
  small:
    source: /models/small
    price_per_engine_hour: {spot: 0.1, dedicated: 0.3}
    engine: {max_model_len: 1024}
    adapters:
      small-sql: {source: /models/small-sql}
  big:
    source: s3://models/big
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "models.yaml"
    path.write_text(text)
    return path


def test_a_good_catalogue_resolves_models_adapters_and_the_default(tmp_path):
    catalogue = Catalogue.load(_write(tmp_path, GOOD))
    assert catalogue.ids() == ["big", "small", "small-sql"]
    assert catalogue.resolve(None) == ModelRef(model="small")
    assert catalogue.resolve("small-sql") == ModelRef(model="small", adapter="small-sql")
    assert catalogue.resolve("small-sql").served_name == "small-sql"
    assert catalogue.resolve("gpt-4o") is None
    assert catalogue.price("small", "spot") == 0.1


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("models: [unclosed\n", "not valid YAML"),
        ("default: nope\nmodels:\n  small: {source: /m}\n", "default model 'nope' is not in models"),
        (
            "default: a\nmodels:\n  a: {source: /a, adapters: {b: {source: /l}}}\n  b: {source: /b}\n",
            "model id 'b' is declared twice",
        ),
        ("default: a\nmodels:\n  a: {source: /a, adapters: {a: {source: /l}}}\n", "model id 'a' is declared twice"),
        ("default: a\nmodels:\n  a: {source: /a, colour: red}\n", "models.a.colour"),
        ("default: a\nmodels:\n  a: {source: /a, price_per_engine_hour: {spot: -1}}\n", "models.a.price_per_engine_hour.spot"),
        ("default: 'a b'\nmodels:\n  'a b': {source: /a}\n", "not a valid model id"),
        ("default: a\nmodels: {}\n", "models"),
    ],
)
def test_a_bad_catalogue_raises_config_error_naming_file_and_field(tmp_path, text, field):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        Catalogue.load(path)
    assert str(path) in str(err.value) and field in str(err.value)


def test_a_missing_catalogue_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot be read"):
        Catalogue.load(tmp_path / "absent.yaml")


@pytest.mark.parametrize(
    ("engine", "field"),
    [
        ({"max_model_len": 1}, "models.small.engine.max_model_len"),
        ({"max_modle_len": 1024}, "models.small.engine.max_modle_len: not an engine setting"),
        ({"model": "/other"}, "models.small.engine.model: not an engine setting"),
    ],
)
def test_engine_overrides_are_checked_when_the_settings_read_the_catalogue(tmp_path, engine, field):
    path = _write(tmp_path, json.dumps({"default": "small", "models": {"small": {"source": "/m", "engine": engine}}}))
    with pytest.raises(ConfigError) as err:
        Settings(engine=EngineConfig(catalogue=str(path))).catalogue()
    assert str(path) in str(err.value) and field in str(err.value)


def test_a_models_engine_settings_are_the_deployments_with_its_overrides(tmp_path):
    base = EngineConfig(max_model_len=512, default_max_tokens=8)
    config = base.for_model({"default_max_tokens": 3})
    assert (config.max_model_len, config.default_max_tokens) == (512, 3)
    assert base.default_max_tokens == 8


def test_without_a_file_the_configured_model_is_the_only_entry():
    catalogue = Settings(engine=EngineConfig(model="/models/tiny-qwen2", served_model_name="tiny")).catalogue()
    assert catalogue.ids() == ["tiny"] and catalogue.models["tiny"].source == "/models/tiny-qwen2"
    assert Settings().catalogue().ids() == ["smollm2-135m-instruct"]
