"""RiFT protocols: official settings, worst-of-runs accuracy, whole splits, OOD data."""
import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrobust.accuracy import evaluate_accuracy, make_eval_step
from jaxrobust.attacks import attack_from_config
from jaxrobust.data import ArrayDataset
from jaxrobust.data import corruptions as corr
from jaxrobust.errors import ConfigError, DataError
from jaxrobust.parallel import make_mesh
from jaxrobust.rift import ood
from jaxrobust.rift.config import (default_rift_config, resolve_rift_config,
                                   validate_rift_config)
from jaxrobust.rift.evaluation import evaluate_runs, make_runs_eval_step
from jaxrobust.rift.pipeline import _check_exact, _check_ood, finetune_config, mrc_base
from jaxrobust.train.builders import build_splits
from jaxrobust.train.defaults import validate_config
from tests.numpy_models import numpy_initialised
from tests.train.helpers import load_config


def _rift(arg=None):
  c = load_config("cifar10_rift", arg)
  c.at_workdir = "/nonexistent"  # only checked for being set.
  return c


# --- the official protocol's settings -----------------------------------------------------


def test_official_settings_resolve_as_the_paper_and_code():
  c = _rift("official")
  validate_rift_config(c)
  r = resolve_rift_config(c)
  assert r.protocol == "official"
  pgd10 = {"name": "pgd", "num_steps": 10, "eps": 8 / 255, "norm": "linf", "loss": "ce",
           "random_start": "uniform"}
  for branch in (r.mrc.attack, r.eval.val_attack, r.eval.test_attack):
    assert {k: branch[k] for k in pgd10} == pgd10
    assert branch["step_size"] == 2 / 255 != 2 / 225  # the official 2/225 is a typo.
  assert (r.eval.test_runs, r.eval.test_reduce) == (3, "run")  # worst of 3 runs.
  assert r.eval.test_size == 0 and r.mrc.split == "test" and r.mrc.num_examples == 0  # whole.
  assert r.eval.ood.source == "official" and r.eval.ood.test_examples == 10_000
  assert tuple(r.eval.ood.severities) == (1, 2, 3, 4, 5) and r.eval.ood.val_examples == 0
  # RiFT's utils.py list: the 15 without glass_blur, plus the 4 extra corruptions.
  assert set(r.eval.ood.corruptions) == (set(corr.CORRUPTIONS) - {"glass_blur"}
                                         | set(corr.EXTRA_CORRUPTIONS))
  assert len(r.eval.ood.corruptions) == 18 and tuple(r.reinit.modes) == ()
  # The default keeps the validation protocol and its figures' settings.
  d = resolve_rift_config(_rift())
  assert (d.protocol, d.mrc.split, d.eval.test_size, d.eval.test_runs) == ("validation", "val",
                                                                           1000, 1)
  assert d.eval.test_attack["num_steps"] == 20


def test_official_finetuning_uses_every_training_image(data_dir, tmp_path):
  del data_dir
  at = load_config("cifar10_pgd_at")
  c = _rift("official")
  c.at_workdir = str(tmp_path)  # init_from must be a directory.
  ft = finetune_config(c, at, "convs.0")
  validate_config(ft)
  assert (ft.data.val_size, ft.data.train_size, ft.eval.every_epochs) == (0, 0, 0)
  assert ft.train.keep_checkpoints >= 11  # every epoch stays for the choice on test.
  assert len(build_splits(ft, with_test=False).train) == 50_000
  val = finetune_config(_rift(), at, "convs.0")
  assert (val.data.val_size, val.eval.every_epochs, val.eval.select) == (1000, 1, "val_clean")


def test_protocol_errors_name_the_fix():
  c = _rift()
  c.protocol = "official"  # alone, without the official settings.
  with pytest.raises(ConfigError, match=r"cifar10_rift.py:official"):
    validate_rift_config(c)
  bad = [(lambda c: setattr(c, "protocol", "paper"), "config.protocol"),
         (lambda c: setattr(c.eval, "test_runs", 0), "config.eval.test_runs"),
         (lambda c: setattr(c.eval, "test_reduce", "mean"), "config.eval.test_reduce"),
         (lambda c: setattr(c.eval.ood, "source", "zenodo"), "config.eval.ood.source"),
         (lambda c: setattr(c.eval, "test_size", -1), "config.eval.test_size")]
  for edit, match in bad:
    c = _rift()
    edit(c)
    with pytest.raises(ConfigError, match=match):
      validate_rift_config(c)
  with pytest.raises(ConfigError, match="protocol"):
    default_rift_config("paper")


# --- worst of several runs ----------------------------------------------------------------


class _PixelModel:
  """Predicts the class written in pixel (0, 0, 0) as ``20 * class`` (uint8 units)."""

  def logits_fn(self, params, batch_stats, bn="eval"):
    del params, batch_stats, bn
    return lambda x: -jnp.square(x[:, 0, 0, 0:1] * 255 / 20 - jnp.arange(10.0))


def _breaks(indices):
  """An attack that turns the points whose index pixel is in ``indices`` to the next class."""

  def attack(logits_fn, key, x, y):
    del logits_fn, key
    idx = jnp.round(x[:, 0, 1, 0] * 255).astype(jnp.int32)
    hit = jnp.isin(idx, jnp.asarray(indices))
    wrong = ((y + 1) % 10) * 20 / 255
    return x.at[:, 0, 0, 0].set(jnp.where(hit, wrong, x[:, 0, 0, 0]))

  return attack


def test_worst_of_runs_is_per_point_across_runs_and_min_over_runs():
  n = 13  # two batches of 8, the second padded.
  labels = np.arange(n) % 10
  images = np.zeros((n, 2, 2, 3), np.uint8)
  images[:, 0, 0, 0] = labels * 20
  images[:, 0, 1, 0] = np.arange(n)  # the index, read by the hand-built attacks.
  images[5, 0, 0, 0] = ((labels[5] + 3) % 10) * 20  # point 5 is wrong even when clean.
  ds = ArrayDataset(images, labels.astype(np.int32), np.ones(n, bool), "hand")
  runs = [_breaks([0, 1, 8]), _breaks([2, 8]), _breaks([3, 9, 10])]
  mesh = make_mesh()
  step = make_runs_eval_step(_PixelModel(), runs, mesh)
  key = jax.random.PRNGKey(0)
  r = evaluate_runs(step, {}, {}, ds, 8, mesh, key, reduce="run")
  assert r["clean"] == pytest.approx(12 / n) and r["count"] == n
  # Correct after each run: all but {5} and the run's own points.
  assert r["robust_runs"] == pytest.approx([9 / n, 10 / n, 9 / n])
  assert r["robust"] == r["robust_worst_run"] == pytest.approx(9 / n)
  # Per point: robust only if no run broke it, i.e. all but {0, 1, 2, 3, 5, 8, 9, 10}.
  assert r["robust_pointwise"] == pytest.approx(5 / n)
  p = evaluate_runs(step, {}, {}, ds, 8, mesh, key, reduce="point")
  assert p["robust"] == pytest.approx(5 / n) and p["robust_runs"] == r["robust_runs"]
  with pytest.raises(ConfigError, match="reduce"):
    evaluate_runs(step, {}, {}, ds, 8, mesh, key, reduce="mean")


def test_one_run_reproduces_the_plain_evaluation():
  model, params, bs = numpy_initialised("simple_cnn_tiny")
  gen = np.random.default_rng(0)
  ds = ArrayDataset(gen.integers(0, 256, (24, 8, 8, 3), dtype=np.uint8),
                    gen.integers(0, 10, 24).astype(np.int32), np.ones(24, bool), "rand")
  cfg = {"name": "pgd", "eps": 8 / 255, "step_size": 2 / 255, "num_steps": 2,
         "random_start": "uniform"}
  attack = attack_from_config(cfg)
  mesh, key = make_mesh(), jax.random.PRNGKey(3)
  plain = evaluate_accuracy(make_eval_step(model, {"clean": None, "robust": attack}, mesh),
                            params, bs, ds, 8, mesh, key)
  one = evaluate_runs(make_runs_eval_step(model, [attack], mesh), params, bs, ds, 8, mesh, key)
  assert (one["clean"], one["robust"]) == (plain["clean"], plain["robust"])
  three = evaluate_runs(make_runs_eval_step(model, [attack] * 3, mesh), params, bs, ds, 8, mesh,
                        key)
  assert three["robust_runs"][0] == plain["robust"]  # run 0 draws the same keys.
  assert three["robust_pointwise"] <= min(three["robust_runs"]) == three["robust"]


# --- whole splits, exact images -----------------------------------------------------------

_Splits = collections.namedtuple("_Splits", "train val test")


def _ds(n, name, lossy_from=None):
  exact = np.ones(n, bool)
  if lossy_from is not None:
    exact[lossy_from:] = False
  return ArrayDataset(np.full((n, 4, 4, 3), 7, np.uint8), np.arange(n, dtype=np.int32) % 10,
                      exact, name)


def test_mrc_split_test_is_the_whole_split_not_the_evaluated_prefix():
  splits = _Splits(None, _ds(30, "val"), _ds(50, "test"))
  c = _rift()
  c.mrc.split, c.eval.test_size = "test", 10
  base = mrc_base(c, splits)
  assert len(base) == 50 and np.array_equal(base.labels, splits.test.labels)
  c.mrc.num_examples = 7  # a prefix, named explicitly.
  assert np.array_equal(mrc_base(c, splits).labels, splits.test.labels[:7])
  c.mrc.num_examples = 51
  with pytest.raises(ConfigError, match="num_examples=51"):
    mrc_base(c, splits)
  c.mrc.split, c.mrc.num_examples = "val", 0
  assert len(mrc_base(c, splits)) == 30


def test_lossy_test_images_are_refused_unless_allowed():
  c = _rift()
  mixed = _ds(20, "cifar10", lossy_from=5)
  with pytest.raises(DataError, match="15 JPEG-derived"):
    _check_exact(c, mixed, "the test set", "use a prefix")
  _check_exact(c, mixed.take(slice(0, 5)), "the test set", "use a prefix")  # exact prefix.
  c.eval.allow_lossy_test = True
  _check_exact(c, mixed, "the test set", "use a prefix")


# --- official CIFAR-10-C ------------------------------------------------------------------


def _fake_cifar10c(folder, names, k=4):
  """A CIFAR-10-C-shaped folder: 5 severities of ``k`` images; pixel = 10 * severity + index."""
  folder.mkdir(parents=True, exist_ok=True)
  sev = np.repeat(np.arange(1, 6), k)
  idx = np.tile(np.arange(k), 5)
  images = np.broadcast_to((10 * sev + idx).astype(np.uint8)[:, None, None, None],
                           (5 * k, 32, 32, 3))
  for name in names:
    np.save(folder / f"{name}.npy", np.ascontiguousarray(images))
  np.save(folder / "labels.npy", np.tile(np.arange(k) % 10, 5).astype(np.int64))


def test_official_files_are_read_per_severity(tmp_path):
  names = ("gaussian_noise", "fog")
  _fake_cifar10c(tmp_path / "c10c", names)
  assert ood.check_official_ood(names, (1, 3), str(tmp_path / "c10c")) == "folder"
  sets = ood.official_ood_sets(names, (1, 3), 2, str(tmp_path / "c10c"))
  assert sorted(sets) == ["fog_1", "fog_3", "gaussian_noise_1", "gaussian_noise_3"]
  s3 = sets["fog_3"]
  assert s3.name == "CIFAR-10-C/fog_3" and s3.exact.all() and len(s3) == 2
  assert s3.images[:, 0, 0, 0].tolist() == [30, 31] and s3.labels.tolist() == [0, 1]
  np.save(tmp_path / "c10c" / "fog.npy", np.zeros((7, 32, 32, 3), np.uint8))
  with pytest.raises(DataError, match="5 severities stacked"):
    ood.load_cifar10c_folder(tmp_path / "c10c", "fog", 1)


def test_missing_cifar10c_is_one_clear_error(tmp_path, monkeypatch):
  monkeypatch.setattr(ood, "_tfds_problem", lambda *a: "TFDS has not prepared it")
  c = _rift("official")
  c.eval.ood.data_dir = str(tmp_path / "nothing")
  with pytest.raises(DataError) as e:
    _check_ood(c, "cifar10")
  msg = str(e.value)
  for part in (str(tmp_path / "nothing"), "labels.npy", "zenodo.org/record/2535967",
               "tfds build cifar10_corrupted", "--config.eval.ood.data_dir",
               "--config.eval.ood.source=none"):
    assert part in msg, part
  c.eval.ood.source = "none"  # an explicit choice, not a silent fallback.
  assert _check_ood(c, "cifar10") is None


def test_missing_cifar10c_without_monkeypatching(tmp_path):
  if ood._tfds_problem(("fog",), (1,)) is None:  # pylint: disable=protected-access
    pytest.skip("TFDS has cifar10_corrupted prepared on this machine")
  with pytest.raises(DataError, match="the official CIFAR-10-C data is missing"):
    ood.check_official_ood(("fog",), (1,), str(tmp_path))


def test_test_derived_ood_never_reaches_the_validation_grid():
  c = _rift()
  c.eval.ood.source = "official"
  with pytest.raises(ConfigError, match="val_examples=0"):
    _check_ood(c, "cifar10")
  c = _rift("official")
  with pytest.raises(ConfigError, match="trained on 'mnist'"):
    _check_ood(c, "mnist")
