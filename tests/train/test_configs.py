"""Every config file builds, validates, and its small variant trains on real data."""
import json
import pathlib

import pytest

from jaxrobust.train import train_and_evaluate, validate_config

from .helpers import REPO, load_config

CONFIGS = sorted(p.stem for p in (REPO / "configs").glob("*.py") if p.stem != "__init__")


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("arg", [None, "local", "smoke"])
def test_config_validates(name, arg):
  validate_config(load_config(name, arg))


@pytest.mark.slow
@pytest.mark.parametrize("name", CONFIGS)
def test_smoke_variant_trains_on_real_data(name, tmp_path, data_dir):
  del data_dir
  config = load_config(name, "smoke")
  report = train_and_evaluate(config, str(tmp_path))
  assert report["last"]["step"] == config.train.num_steps
  assert 0.0 <= report["last"]["robust"] <= 1.0 and report["last"]["count"] == 100
  saved = json.loads(pathlib.Path(tmp_path, "report.json").read_text())
  assert saved["last"]["clean"] == report["last"]["clean"]
  lines = pathlib.Path(tmp_path, "logs", "metrics.jsonl").read_text().splitlines()
  assert any("val/robust" in ln for ln in lines) and any("train/loss" in ln for ln in lines)
  assert list(pathlib.Path(tmp_path, "logs").glob("events.out.tfevents.*"))
