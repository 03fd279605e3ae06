"""The evaluation CLI on a model trained by the smoke config, and the suite table."""
import json
import subprocess
import sys

import pytest

from jaxrobust.errors import ConfigError
from jaxrobust.evaluate.suite import DEFAULT_SUITE, suite_attacks
from jaxrobust.train import train_and_evaluate

from ..train.helpers import REPO, load_config


def test_suite_settings_match_the_published_protocols():
  s = suite_attacks(DEFAULT_SUITE)
  assert s["clean"] is None
  assert s["fgsm"] == dict(name="fgsm", eps=8 / 255, step_size=8 / 255, norm="linf",
                           random_start="none")
  assert s["pgd20"]["num_steps"] == 20 and s["pgd20"]["step_size"] == pytest.approx(2 / 255)
  assert s["pgd20_trades"]["eps"] == 0.031 and s["pgd20_trades"]["step_size"] == 0.003
  assert s["cw30"]["loss"] == "cw" and s["cw30"]["kappa"] == 50.0
  assert s["cw30"]["num_steps"] == 30
  l2 = suite_attacks(["pgd20"], norm="l2")
  assert l2["pgd20"]["eps"] == 0.5 and l2["pgd20"]["norm"] == "l2"
  with pytest.raises(ConfigError, match="unknown evaluation"):
    suite_attacks(["pgd1000"])


@pytest.mark.slow
def test_cli_reports_every_attack(tmp_path, data_dir):
  del data_dir
  workdir = tmp_path / "run"
  train_and_evaluate(load_config("cifar10_pgd_at", "smoke"), str(workdir))
  out = subprocess.run(
      [sys.executable, "-m", "jaxrobust.evaluate", "--workdir", str(workdir),
       "--n_examples", "40", "--batch_size", "40"],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-2000:]
  report = json.loads((workdir / "eval_best.json").read_text())
  acc = report["accuracy"]
  assert set(acc) == set(DEFAULT_SUITE) and report["n_examples"] == 40
  for name in DEFAULT_SUITE:
    assert name in out.stdout
    assert 0.0 <= acc[name] <= acc["clean"] + 1e-9  # attacks never help
  # Asking for lossy JPEG-derived test images for robust numbers is refused.
  bad = subprocess.run(
      [sys.executable, "-m", "jaxrobust.evaluate", "--workdir", str(workdir),
       "--n_examples", "2000"], cwd=REPO, capture_output=True, text=True, timeout=600)
  assert bad.returncode == 2 and "JPEG-derived" in bad.stderr


def test_cli_missing_workdir(tmp_path):
  out = subprocess.run([sys.executable, "-m", "jaxrobust.evaluate", "--workdir",
                        str(tmp_path / "nope")], cwd=REPO, capture_output=True, text=True,
                       timeout=300)
  assert out.returncode == 2 and "config.json not found" in out.stderr
  assert "Traceback" not in out.stderr


def test_dashed_flag_names_are_accepted():
  from jaxrobust.cli import normalize_flag_names
  argv = ["prog", "--n-examples", "10", "--aa-state=/tmp/x", "--config.train.num_epochs=2"]
  assert normalize_flag_names(argv) == ["prog", "--n_examples", "10", "--aa_state=/tmp/x",
                                        "--config.train.num_epochs=2"]


def test_curve_plot_is_written(tmp_path):
  from jaxrobust.evaluate.report import plot_curve
  png = tmp_path / "curve.png"
  plot_curve({"0": {"pgd20": 0.6}, "8": {"pgd20": 0.3, "aa-standard": 0.25}}, str(png), "linf")
  assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
