"""Pseudo-labels come from the named teacher (and its cache from that teacher only), the per-layer
weight distance on a toy case, and one end-to-end robust self-training smoke run."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrobust.data import to_float
from jaxrobust.data.unlabeled import UnlabeledSet
from jaxrobust.errors import ConfigError
from jaxrobust.train import semisup
from jaxrobust.train.builders import build_model, image_shape_of
from jaxrobust.train.restore import TrainedModel, load_trained, write_workdir
from jaxrobust.train.state import split_model
from jaxrobust.train.weight_distance import layer_of, relative_distances
from tests.train.helpers import load_config


def _teacher(path, config, seed):
  """A teacher workdir holding the initial weights of ``seed``; returns the nnx model."""
  model = build_model(config, image_shape_of(config), seed=seed)
  _, params, batch_stats = split_model(model)
  source = TrainedModel(config, None, None, None, 0, "latest", str(path), False)
  write_workdir(str(path), source, params, batch_stats, {"recipe": "test"})
  return model


def test_pseudo_labels_are_the_named_teachers_argmax_and_the_cache_follows_the_teacher(
    tmp_path, monkeypatch):
  config = load_config("cifar10_rst", "smoke")
  images = np.random.default_rng(0).integers(0, 256, (50, 32, 32, 3), dtype=np.uint8)
  unlabeled = UnlabeledSet(images, "test")
  models = {s: _teacher(tmp_path / f"t{s}", config, s) for s in (5, 6)}
  want = {s: np.asarray(jnp.argmax(m(to_float(images), train=False), -1))
          for s, m in models.items()}
  assert (want[5] != want[6]).any()  # the two teachers disagree somewhere.
  run = str(tmp_path / "run")
  with pytest.raises(ConfigError, match="teacher_workdir"):
    semisup.pseudo_labels(config, unlabeled, run)
  config.method.teacher_workdir = str(tmp_path / "t5")
  np.testing.assert_array_equal(semisup.pseudo_labels(config, unlabeled, run), want[5])
  with np.load(os.path.join(run, semisup.CACHE_NAME)) as f:
    np.testing.assert_array_equal(f["labels"], want[5])
    assert str(f["teacher_workdir"]) == str(tmp_path / "t5")
  real = semisup.predict_labels
  monkeypatch.setattr(semisup, "predict_labels", lambda *a, **k: pytest.fail("not cached"))
  np.testing.assert_array_equal(semisup.pseudo_labels(config, unlabeled, run), want[5])
  monkeypatch.setattr(semisup, "predict_labels", real)
  config.method.teacher_workdir = str(tmp_path / "t6")  # another teacher: recomputed.
  np.testing.assert_array_equal(semisup.pseudo_labels(config, unlabeled, run), want[6])
  other = UnlabeledSet(images[::-1].copy(), "reversed")  # other images: recomputed.
  np.testing.assert_array_equal(semisup.pseudo_labels(config, other, run), want[6][::-1])


def test_relative_distance_per_layer_on_a_toy_tree():
  p0 = {"conv": {"kernel": jnp.array([3.0, 4.0]), "bias": jnp.array([0.0])},
        "head": {"kernel": jnp.array([[1.0, 0.0], [0.0, 0.0]])}, "zero": {"b": jnp.zeros(2)}}
  p1 = {"conv": {"kernel": jnp.array([3.0, 4.0]) * 1.1, "bias": jnp.array([0.3])},
        "head": {"kernel": jnp.array([[1.0, 0.0], [0.0, 2.0]])}, "zero": {"b": jnp.ones(2)}}
  d = jax.device_get(jax.jit(relative_distances)(p1, p0))
  # conv: ||(0.3, 0.4, 0.3)|| / ||(3, 4, 0)|| ; head: 2 / 1 ; zero: absolute sqrt(2).
  assert float(d["conv"]) == pytest.approx(np.sqrt(0.34) / 5, rel=1e-6)
  assert float(d["head"]) == pytest.approx(2.0, rel=1e-6)
  assert float(d["zero"]) == pytest.approx(np.sqrt(2.0), rel=1e-6)
  assert float(d["all"]) == pytest.approx(np.sqrt(0.34 + 4 + 2) / np.sqrt(26), rel=1e-6)
  assert float(relative_distances(p0, p0)["all"]) == 0.0
  assert (layer_of("convs.0.kernel"), layer_of("scale")) == ("convs.0", "scale")


@pytest.mark.slow
def test_rst_smoke_trains_from_a_teacher_and_logs_weight_distances(tmp_path):
  from jaxrobust.train import train_and_evaluate  # pylint: disable=g-import-not-at-top
  teacher = str(tmp_path / "teacher")
  train_and_evaluate(load_config("cifar10_rst", "teacher,smoke"), teacher)
  config = load_config("cifar10_rst", "smoke")
  config.method.teacher_workdir = teacher
  config.train.log_weight_distance = True
  run = str(tmp_path / "rst")
  report = train_and_evaluate(config, run)
  assert report["last"]["step"] == 4
  t = load_trained(teacher, "best")
  with np.load(os.path.join(run, semisup.CACHE_NAME)) as f:
    assert str(f["teacher_fingerprint"]) == semisup.teacher_fingerprint(t)
    assert f["labels"].shape == (256,)
  # theta_0 is the run's initial weights: the distance of the last weights, by NumPy.
  last = load_trained(run, "latest")
  _, p0, _ = split_model(build_model(last.config, image_shape_of(last.config)))
  a = [np.asarray(x) for x in jax.tree.leaves(last.params)]
  b = [np.asarray(x) for x in jax.tree.leaves(p0)]
  want = np.sqrt(sum(((x - y) ** 2).sum() for x, y in zip(a, b)) / sum((y ** 2).sum() for y in b))
  assert report["weight_distance"]["all"] == pytest.approx(want, rel=1e-4)
  with open(os.path.join(run, "logs", "metrics.jsonl"), encoding="utf-8") as f:
    rows = [json.loads(line) for line in f]
  assert any("weight_distance/all" in r and "weight_distance/linear" in r for r in rows)
