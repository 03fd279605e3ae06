"""A method registered from outside the package trains; one ``eps`` reaches every attack branch."""
import dataclasses
import json
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxrobust.errors import ConfigError
from jaxrobust.methods import accuracy_sum, cross_entropy, method_config, register_method
from jaxrobust.train import effective_attacks, resolve_config, train_and_evaluate

from .helpers import REPO, load_config


@dataclasses.dataclass(frozen=True)
class ScaledCE:
  """Toy objective: ``scale`` x mean CE on the clean batch, train-mode BN."""
  scale: float = 1.0

  def perturb(self, model, params, batch_stats, x, y, rng, frozen=None, step=None):
    del model, params, batch_stats, y, rng, frozen, step
    return x

  def loss(self, params, batch_stats, model, x, y, x_train, rng, frozen=None, step=None):
    logits, new_bs = model.apply(params, batch_stats, x_train, train=True,
                                 key=jax.random.fold_in(rng, 1))
    loss = self.scale * cross_entropy(logits, y)
    return loss, (new_bs, {"loss": loss * y.shape[0], "accuracy": accuracy_sum(logits, y)})


# The one object a new objective needs: its name, settings with defaults, constructor.
register_method("toy_scaled_ce", settings=dict(scale=1.0), replace=True,
                build=lambda s, ctx: ScaledCE(scale=float(s["scale"])))


def _one_step_config(method):
  c = load_config("cifar10_pgd_at", "smoke")
  c.method = method
  c.train.num_steps, c.train.log_every_steps = 1, 1
  c.eval.every_epochs = 0
  c.data.test_size = 40
  return c


def _train_loss(workdir):
  lines = pathlib.Path(workdir, "logs", "metrics.jsonl").read_text().splitlines()
  return [json.loads(ln)["train/loss"] for ln in lines if "train/loss" in ln]


def test_a_method_registered_by_a_test_module_trains_like_its_builtin_twin(tmp_path, data_dir):
  del data_dir
  c = method_config("toy_scaled_ce")
  assert c.to_dict() == {"name": "toy_scaled_ce", "scale": 1.0}
  with pytest.raises(ConfigError, match=r"valid keys: \['name', 'scale'\]"):
    method_config("toy_scaled_ce", beta=1.0)
  toy = train_and_evaluate(_one_step_config(c), str(tmp_path / "toy"))
  std = train_and_evaluate(_one_step_config(method_config("standard")), str(tmp_path / "std"))
  # scale 1: the same loss as standard training, so the same step, loss and test accuracy.
  assert _train_loss(tmp_path / "toy") == _train_loss(tmp_path / "std")
  assert toy["last"] == std["last"] and toy["last"]["step"] == 1
  assert "train" not in toy["attacks"]  # no training attack; val / test still reported
  # scale 2 doubles the reported loss of the same first step.
  c.scale = 2.0
  train_and_evaluate(_one_step_config(c), str(tmp_path / "toy2"))
  np.testing.assert_allclose(_train_loss(tmp_path / "toy2"),
                             2 * np.asarray(_train_loss(tmp_path / "std")), rtol=1e-6)


def test_one_eps_fills_every_branch_and_a_branch_override_stays_local():
  c = load_config("cifar10_trades", None)
  assert c.eps == 0.031 and c.method.attack.eps is None  # set once, at the top
  att = effective_attacks(c)
  assert {a["eps"] for a in att.values()} == {0.031} and att["train"]["step_size"] == 0.007
  c.eps = 0.02
  assert {a["eps"] for a in effective_attacks(c).values()} == {0.02}
  c.eval.test_attack.eps = 0.03
  att = effective_attacks(c)
  assert (att["train"]["eps"], att["val"]["eps"], att["test"]["eps"]) == (0.02, 0.02, 0.03)
  assert c.method.attack.eps is None and c.eval.val_attack.eps is None  # not shared
  c.norm = "l2"
  assert {a["norm"] for a in effective_attacks(c).values()} == {"l2"}
  assert resolve_config(c).method.attack.eps == 0.02 and c.method.attack.eps is None
  c.eps = -1.0
  with pytest.raises(ConfigError, match="config.eps"):
    resolve_config(c)


_PARSE = """
import sys
from absl import app
from jaxrobust.cli import define_config_and_workdir
from jaxrobust.train import effective_attacks
import json
cfg, _ = define_config_and_workdir("", "")
app.run(lambda argv: print(json.dumps(effective_attacks(cfg.value))))
"""


def test_command_line_overrides_of_the_threat_model():
  """``config_flags`` (the trainer's flags): the top-level key vs a branch key."""
  def parse(*flags):
    proc = subprocess.run([sys.executable, "-c", _PARSE,
                           f"--config={REPO}/configs/cifar10_pgd_at.py:smoke", *flags],
                          capture_output=True, text=True, check=True, timeout=300)
    return json.loads(proc.stdout.strip().splitlines()[-1])
  att = parse("--config.eps=0.02")
  assert {b: a["eps"] for b, a in att.items()} == {"train": 0.02, "val": 0.02, "test": 0.02}
  att = parse("--config.eval.test_attack.eps=0.03")
  assert {b: a["eps"] for b, a in att.items()} == {"train": 8 / 255, "val": 8 / 255,
                                                   "test": 0.03}


@pytest.mark.slow
def test_cli_eps_reaches_training_validation_and_test(tmp_path, data_dir):
  del data_dir
  out = tmp_path / "run"
  proc = subprocess.run([sys.executable, "-m", "jaxrobust.train",
                         f"--config={REPO}/configs/cifar10_pgd_at.py:smoke", "--config.eps=0.02",
                         "--config.train.num_steps=2", f"--workdir={out}"],
                        capture_output=True, text=True, timeout=900, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads((out / "report.json").read_text())
  assert {b: a["eps"] for b, a in report["attacks"].items()} == {
      "train": 0.02, "val": 0.02, "test": 0.02}
  assert report["test_attack"]["eps"] == 0.02
  assert "attack (val): eps=0.02, " in proc.stdout and "attack (test): eps=0.02, " in proc.stdout


def test_runs_saved_with_the_shared_method_schema_still_load(tmp_path):
  """A config.json of earlier versions: every method's keys, -1 / '' for "official"."""
  from jaxrobust.train.restore import load_config as load_saved  # pylint: disable=g-import-not-at-top
  legacy = dict(name="awp", attack=dict(name="pgd", eps=8 / 255, step_size=2 / 255, num_steps=10,
                                        norm="linf", loss="kl", random_start="normal"),
                attack_bn="eval", clean_bn="train", beta=-1.0, alpha=-1.0, temperature=-1.0,
                kl_reduction="", bn_updates="official", awp_base="trades", awp_gamma=-1.0,
                awp_warmup_epochs=9.0, teacher_workdir="", teacher_which="best",
                teacher_dtype="", teacher2_workdir="", iad_begin_epochs=-1.0,
                iad_alpha1=-1.0, iad_alpha2=-1.0)
  (tmp_path / "config.json").write_text(json.dumps({"method": legacy, "seed": 3}))
  c = load_saved(str(tmp_path))
  assert c.seed == 3 and c.eps == 8 / 255
  assert c.method.to_dict() == dict(method_config("awp", awp_base="trades").to_dict(),
                                    attack=legacy["attack"])
