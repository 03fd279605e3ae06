"""SWA as a trainer option: the average is the hand mean of the epoch snapshots, its count
resumes with the checkpoint, its BatchNorm statistics are recomputed, and it is written as a
workdir of its own."""
import json
import os
import shutil

import jax
import numpy as np
import pytest

from jaxrobust.checkpoint import Checkpointer
from jaxrobust.data import TrainIterator
from jaxrobust.errors import ConfigError
from jaxrobust.train.builders import build_model, build_splits, image_shape_of
from jaxrobust.train.defaults import resolve_config, validate_config
from jaxrobust.train.loop import train_and_evaluate
from jaxrobust.train.optim import make_optimizer, make_schedule
from jaxrobust.train.restore import load_config, load_trained
from jaxrobust.train.state import create_train_state
from jaxrobust.weights import recompute_batch_stats, swa_learning_rate
from tests.train.helpers import load_config as load_config_file

pytestmark = pytest.mark.slow
STEPS_PER_EPOCH = 8  # smoke: 256 training images, batch 32.


def _np(tree):
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def _config():
  cfg = load_config_file("cifar10_pgd_at", "smoke")
  cfg.train.num_steps, cfg.train.num_epochs = 0, 3
  cfg.train.swa_start = 2  # averages the weights after epochs 2 and 3 (1-based).
  cfg.train.keep_checkpoints = 3
  return cfg


@pytest.fixture(scope="module")
def swa_run(tmp_path_factory, data_dir):
  del data_dir
  workdir = str(tmp_path_factory.mktemp("swa_run"))
  report = train_and_evaluate(_config(), workdir)
  return workdir, report


def _swa_of(workdir, step):
  """The raw train state of ``latest/<step>`` (with its SWA average and count)."""
  config = load_config(workdir)
  _, target = create_train_state(build_model(config, image_shape_of(config)),
                                 make_optimizer(config.train, 1, 1), 0, swa=True)
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
  try:
    state, _ = ckpt.restore(target, "latest", step)
  finally:
    ckpt.close()
  return state


def test_swa_is_the_mean_of_the_epoch_snapshots(swa_run):
  workdir, report = swa_run
  p16 = load_trained(workdir, "latest", step=2 * STEPS_PER_EPOCH).params
  p24 = load_trained(workdir, "latest", step=3 * STEPS_PER_EPOCH).params
  s8, s16, s24 = (_swa_of(workdir, k * STEPS_PER_EPOCH) for k in (1, 2, 3))
  assert [int(s.swa.count) for s in (s8, s16, s24)] == [0, 1, 2]
  for a, b in zip(_np(s16.swa.params), _np(p16)):  # the first collection is the weights.
    np.testing.assert_array_equal(a, b)
  hand = [(a + b) / 2 for a, b in zip(_np(p16), _np(p24))]
  for a, b in zip(_np(s24.swa.params), hand):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  assert not all(np.array_equal(a, b) for a, b in zip(_np(p16), _np(p24)))

  # The SWA model is a trained-run workdir of its own: the average, BN recomputed (clean).
  assert report["swa"]["count"] == 2 and report["swa"]["bn"] == "recompute_clean"
  swa = load_trained(report["swa"]["workdir"], "best")
  assert swa.workdir == os.path.join(workdir, "swa") and not swa.uses_ema
  for a, b in zip(_np(swa.params), hand):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  config = resolve_config(load_config(workdir))
  splits = build_splits(config, with_test=False)
  it = TrainIterator(splits.train, config.train.batch_size, config.seed + 3,
                     augment=config.data.augment, pad=config.data.pad,
                     pad_mode=config.data.pad_mode, flip=config.data.flip)
  want = recompute_batch_stats(swa.model_fns, s24.swa.params, s24.batch_stats,
                               (next(it) for _ in range(it.steps_per_epoch)))
  for a, b in zip(_np(swa.batch_stats), _np(want)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  raw = _np(s24.batch_stats)
  assert not any(np.allclose(a, b) for a, b in zip(_np(swa.batch_stats), raw))
  recipe = json.loads(open(os.path.join(workdir, "swa", "weights.json")).read())
  assert recipe["recipe"] == "swa" and recipe["count"] == 2
  for k in ("clean", "robust"):
    assert 0.0 <= report["swa"][k] <= 1.0


def test_swa_resumes_exactly_from_a_checkpoint(swa_run, tmp_path):
  workdir, report = swa_run
  copy = tmp_path / "resumed"
  shutil.copytree(workdir, copy)
  shutil.rmtree(copy / "swa")
  for which in ("latest", "best"):  # back to the checkpoint after epoch 2 (count 1).
    for d in (copy / "checkpoints" / which).iterdir():
      if d.name.isdigit() and int(d.name) > 2 * STEPS_PER_EPOCH:
        shutil.rmtree(d)
  resumed = train_and_evaluate(_config(), str(copy))
  assert resumed["swa"]["count"] == 2
  a = load_trained(report["swa"]["workdir"], "best")
  b = load_trained(resumed["swa"]["workdir"], "best")
  for x, y in zip(_np((a.params, a.batch_stats)), _np((b.params, b.batch_stats))):
    np.testing.assert_array_equal(x, y)


def test_swa_schedule_and_config_errors():
  cfg = _config()
  cfg.train.schedule, cfg.train.lr, cfg.train.swa_lr = "swa", 0.1, 0.05
  validate_config(cfg)
  sched = make_schedule(cfg.train, 10 * STEPS_PER_EPOCH, STEPS_PER_EPOCH)
  for epoch in range(6):
    want = swa_learning_rate(epoch, 0.1, 0.05, cfg.train.swa_start)
    for s in (0, STEPS_PER_EPOCH - 1):
      assert float(sched(epoch * STEPS_PER_EPOCH + s)) == pytest.approx(want, rel=1e-6)
  # 0.5 * swa_start = 1: lr_init through epoch 1, swa_lr from 0.9 * 2 on.
  assert float(sched(0)) == pytest.approx(0.1) and float(sched(2 * 8)) == pytest.approx(0.05)
  for key, value, match in [("swa_start", 9, "after the last epoch"),
                            ("swa_start", -1, "swa_start must be"),
                            ("swa_c_epochs", 0, "swa_c_epochs must be"),
                            ("swa_bn", "average", "swa_bn='average'"),
                            ("swa_lr", -0.1, "swa_lr must be")]:
    bad = _config()
    bad.train[key] = value
    with pytest.raises(ConfigError, match=match):
      validate_config(bad)
  bad = _config()
  bad.train.swa_start, bad.train.schedule = 0, "swa"
  with pytest.raises(ConfigError, match="schedule='swa' needs"):
    validate_config(bad)
