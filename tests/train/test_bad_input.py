"""Bad input gets one clear error naming the problem and the fix."""
import numpy as np
import pytest

from jaxrobust.checkpoint import Checkpointer
from jaxrobust.errors import ConfigError, DataError, NonFiniteLossError
from jaxrobust.train import train_and_evaluate, validate_config

from .helpers import load_config


def _smoke(**overrides):
  c = load_config("cifar10_pgd_at", "smoke")
  for path, value in overrides.items():
    node = c
    *parents, leaf = path.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


@pytest.mark.parametrize("path,value,match", [
    ("method.attack.eps", -1.0, "eps must be > 0"),
    ("method.attack.eps", 8.0, "outside the \\[0, 1\\] pixel scale"),
    ("method.attack.step_size", 0.0, "step_size must be > 0"),
    ("method.name", "madry", "unknown method"),
    ("model.name", "resnet1000", "unknown"),
    ("train.lr", -0.1, "lr must be > 0"),
    ("train.schedule", "linear", "schedule"),
    ("eval.test_attack.num_steps", 0, "num_steps must be >= 1"),
])
def test_invalid_values_are_config_errors(path, value, match):
  with pytest.raises(ConfigError, match=match):
    validate_config(_smoke(**{path: value}))


def test_unknown_key_in_config_file_fails_at_once():
  c = load_config("cifar10_pgd_at", "smoke")
  with pytest.raises(AttributeError, match="num_epoch"):
    c.train.num_epoch = 3  # typo of num_epochs: the locked schema refuses it


def test_missing_dataset_names_the_path(tmp_path):
  with pytest.raises(DataError, match=f"{tmp_path}.*cifar10_train.npz.*JAXROBUST_DATA_DIR"):
    train_and_evaluate(_smoke(**{"data.data_dir": str(tmp_path)}), str(tmp_path / "w"))


def test_batch_not_divisible_by_devices(tmp_path):
  with pytest.raises(ConfigError, match="not divisible by the 8 devices"):
    train_and_evaluate(_smoke(**{"train.batch_size": 30}), str(tmp_path))


@pytest.mark.slow
def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, data_dir):
  del data_dir
  workdir = str(tmp_path)
  good = _smoke(**{"train.num_steps": 4, "train.checkpoint_every_steps": 2})
  train_and_evaluate(good, workdir)
  ck = Checkpointer(workdir + "/checkpoints")
  assert ck.latest_step() == 4
  # Resume with an exploding learning rate: the loss overflows, training stops.
  bad = _smoke(**{"train.num_steps": 12, "train.checkpoint_every_steps": 2,
                  "train.lr": 1e30, "train.schedule": "constant"})
  with pytest.raises(NonFiniteLossError, match="NaN/inf.*last good checkpoint"):
    train_and_evaluate(bad, workdir)
  ck = Checkpointer(workdir + "/checkpoints")
  # Nothing non-finite was saved: every kept checkpoint restores to finite weights.
  from jaxrobust.models import create_model  # pylint: disable=g-import-not-at-top
  from jaxrobust.train import create_train_state, make_optimizer  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  _, target = create_train_state(create_model("simple_cnn_tiny"),
                                 make_optimizer(bad.train, 12, 8), 0)
  state, _ = ck.restore(target)
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state.params))


# The command-line cases (one `error:` line, exit 2, saved work intact) are the table in
# tests/test_bad_inputs.py.
