"""AutoAttack 'rand' end to end on a trained stochastic model, through the CLIs."""
import json
import os
import re
import subprocess
import sys

import pytest

from jaxrobust.errors import ConfigError
from jaxrobust.evaluate.report import canonical_evaluation_name, evaluation_names

from ..train.helpers import REPO


def test_evaluation_names_accept_both_spellings_and_list_everything():
  assert canonical_evaluation_name("aa_standard") == "aa-standard"
  assert canonical_evaluation_name("aa-rand") == "aa-rand"
  with pytest.raises(ConfigError) as e:
    canonical_evaluation_name("pgd1000")
  for name in evaluation_names():
    assert name in str(e.value)
  assert "aa-standard" in str(e.value) and "pgd20" in str(e.value)


def test_threat_model_comes_from_the_run_config_when_present():
  import ml_collections
  from jaxrobust.evaluate.__main__ import threat_model
  old = ml_collections.ConfigDict({"seed": 0})
  assert threat_model(old) == (None, "linf")          # older workdirs: today's defaults
  new = ml_collections.ConfigDict({"eps": 0.02, "norm": "linf"})
  assert threat_model(new) == (0.02, "linf")
  assert threat_model(new, eps_flag=0.01) == (0.01, "linf")
  assert threat_model(new, norm_flag="l2") == (None, "l2")  # the run's eps is an L-inf eps
  assert threat_model(ml_collections.ConfigDict({"eps": 0.5, "norm": "l2"})) == (0.5, "l2")


def _run(args, timeout=900, devices=None):
  """``python -m args``; ``devices``: that many CPU devices instead of the session's 8."""
  env = None
  if devices is not None:
    env = dict(os.environ, XLA_FLAGS=re.sub(
        r"--xla_force_host_platform_device_count=\d+", "", os.environ.get("XLA_FLAGS", "")) +
        f" --xla_force_host_platform_device_count={devices}")
  return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True,
                        timeout=timeout, env=env)


# The AutoAttack runs below shard their batch over 2 CPU devices: still the multi-device
# path, while the EOT loop of a stochastic model on 8 forced CPU devices costs ~3x the CPU time
# (compiled and run) for the same check.
AA_DEVICES = 2


@pytest.fixture(scope="module")
def noisy_workdir(tmp_path_factory, data_dir):
  """A tiny stochastic model (``noisy_simple_cnn_tiny``) trained for 2 steps by the CLI."""
  del data_dir
  workdir = tmp_path_factory.mktemp("stochastic") / "noisy"
  train = _run(["jaxrobust.train", "--config", str(REPO / "configs/cifar10_pgd_at.py") +
                ":smoke", "--workdir", str(workdir), "--config.model.name=noisy_simple_cnn_tiny",
                "--config.train.num_steps=2"])
  assert train.returncode == 0, train.stderr[-3000:]
  return workdir


# Two tests (not one) so that the two AutoAttack runs go to different test workers.
@pytest.mark.slow
def test_aa_rand_runs_on_a_trained_stochastic_model(noisy_workdir, tmp_path):
  out = _run(["jaxrobust.evaluate", "--workdir", str(noisy_workdir), "--attacks", "clean,aa-rand",
              "--n-examples", "8", "--out", str(tmp_path / "rand.json")], devices=AA_DEVICES)
  assert out.returncode == 0, out.stderr[-3000:]
  report = json.loads((tmp_path / "rand.json").read_text())
  acc = report["accuracy"]
  assert set(acc) == {"clean", "aa-rand"} and report["n_examples"] == 8
  assert 0.0 <= acc["aa-rand"] <= acc["clean"]
  aa = report["autoattack"]
  assert set(aa["robust_accuracy"]) == {"clean", "apgd_ce", "apgd_dlr"}
  assert not any("randomized defense" in w for w in aa["warnings"])
  # An unknown name fails before anything runs and lists every valid name.
  bad = _run(["jaxrobust.evaluate", "--workdir", str(noisy_workdir), "--attacks", "aa-fast"])
  assert bad.returncode == 2 and "aa-standard" in bad.stderr and "pgd20" in bad.stderr


@pytest.mark.slow
def test_autoattack_other_than_rand_on_a_stochastic_model_prints_the_randomised_defence_warning(
    noisy_workdir, tmp_path):
  # The check runs before the cascade for every version but 'rand' (the reference's
  # checks.py); a one-attack custom cascade keeps the run short.
  std = _run(["jaxrobust.evaluate", "--workdir", str(noisy_workdir), "--attacks", "aa_custom",
              "--aa_attacks", "apgd-ce", "--n-examples", "4", "--out", str(tmp_path / "std.json")],
             devices=AA_DEVICES)
  assert std.returncode == 0, std.stderr[-3000:]
  assert "randomized defense" in std.stderr + std.stdout
  assert any("randomized defense" in w for w in
             json.loads((tmp_path / "std.json").read_text())["autoattack"]["warnings"])
