"""params.yaml builds every config; bad values name their key; dvc.yaml
declares for each stage exactly the params sections/keys it reads."""
import dataclasses
import re

import pytest

from iconforge import config
from conftest import committed_text

ALL = [config.FetchConfig, config.FilterConfig, config.RasterizeConfig, config.CaptionConfig,
       config.ModelConfig, config.TrainConfig, config.SampleConfig, config.EvaluateConfig, config.EdaConfig]


def params():
    return config.parse_params(committed_text("params.yaml"))


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.section)
def test_default_params_build(cls):
    cfg = config.build(cls, params()[cls.section])
    assert dataclasses.is_dataclass(cfg)
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(cfg, dataclasses.fields(cfg)[0].name, None)


@pytest.mark.parametrize("section,key,value,message", [
    ("rasterize", "size", -5, "rasterize.size: must be > 0"),
    ("filter", "licenses", ["cc-0", "gpl"], "filter.licenses: unknown license"),
    ("train", "rank", 0, "train.rank: must be > 0"),
    ("train", "lr", -1e-4, "train.lr: must be > 0"),
    ("train", "steps", "many", "train.steps: must be an integer"),
    ("model", "base", "not a model", "model.base:"),
    ("caption", "template", "{trigger} {colour}", "caption.template: bad placeholder"),
    ("fetch", "sha256", "abc", "fetch.sha256: must be empty or 64 hex digits"),
])
def test_bad_value_names_key(section, key, value, message):
    cls = next(c for c in ALL if c.section == section)
    raw = dict(params()[section], **{key: value})
    with pytest.raises(config.ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        config.build(cls, raw)


def test_unknown_and_missing_keys():
    raw = dict(params()["train"], rnak=4)
    with pytest.raises(config.ConfigError, match=r"train\.rnak: unknown key"):
        config.build(config.TrainConfig, raw)
    raw = dict(params()["train"])
    del raw["lr"]
    with pytest.raises(config.ConfigError, match=r"train\.lr: missing"):
        config.build(config.TrainConfig, raw)


def test_params_read_as_yaml_1_2_like_dvc_writes_them(tmp_path):
    # `dvc exp run -S train.mixed_precision=no` writes a bare `no`: a string in YAML 1.2, False in 1.1.
    text = committed_text("params.yaml")
    text = re.sub(r"mixed_precision: \S+", "mixed_precision: no", text)
    (tmp_path / "params.yaml").write_text(text, encoding="utf-8")
    assert config.load(config.TrainConfig, tmp_path / "params.yaml").mixed_precision == "no"
