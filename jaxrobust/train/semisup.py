"""The data of a semi-supervised run: the unlabeled set, its pseudo-labels, the mixed iterator.

A method is semi-supervised when its settings have ``unlabeled``
(:data:`jaxrobust.methods.semisup.SEMISUP_SETTINGS`: ``rst``, ``uat_ot``,
``uat_ft``); the trainer then draws its batches from :func:`train_iterator`.
A method that also has ``teacher_workdir`` (``rst``, ``uat_ft``) gets
pseudo-labels: the eval-mode argmax of that standard run's
``teacher_which`` checkpoint on every unlabeled image
(``yaircarmon/semisup-adv:generate_pseudolabels.py`` l. 77-97), computed in
jitted batches over the device mesh and cached as
``<workdir>/pseudo_labels.npz`` with the teacher's fingerprint (a digest of
its weights and running averages) and the unlabeled images' digest; the cache
is reused only when both match.

The same computation as a command (it writes the cache the run will read)::

    python -m jaxrobust.train.pseudo_label --config configs/cifar10_rst.py:local \\
        --config.method.teacher_workdir=runs/rst_teacher --workdir runs/rst

The true labels of the unlabeled examples are never read: ``'rest'`` takes
only the images of the training examples outside ``config.data.train_size``
(:func:`jaxrobust.train.builders.train_split_indices`), an ``.npz`` only its
``images`` / ``x`` array. (Which examples are held out for validation is
drawn class-balanced from the training file's labels before the split, as in
every run; once split, the unlabeled examples' labels are dropped.)
"""
from __future__ import annotations

import hashlib
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np

from jaxrobust import parallel
from jaxrobust.checkpoint import array_digest, host_leaves
from jaxrobust.data import TrainIterator, load_split, to_float
from jaxrobust.data.unlabeled import (SemiSupervisedIterator, UnlabeledSet,
                                      load_unlabeled_npz)
from jaxrobust.errors import ConfigError
from jaxrobust.methods import method_settings

log = logging.getLogger("jaxrobust")
CACHE_NAME = "pseudo_labels.npz"


def semisup_settings(config) -> dict | None:
  """The semi-supervised settings of ``config.method`` (None for a supervised method).

  Returns:
    ``{'unlabeled', 'unlabeled_size', 'unsup_fraction', 'teacher_workdir',
    'teacher_which'}``; ``teacher_workdir`` is None for a method that takes no
    pseudo-labels (``uat_ot``).
  """
  _, s = method_settings(config.method)
  if "unlabeled" not in s:
    return None
  teacher = s.get("teacher_workdir") if "teacher_workdir" in s else None
  return dict(unlabeled=s["unlabeled"], unlabeled_size=int(s["unlabeled_size"]),
              unsup_fraction=float(s["unsup_fraction"]), teacher_workdir=teacher,
              teacher_which=s.get("teacher_which", "best"))


def unlabeled_set(config) -> UnlabeledSet:
  """The unlabeled images of ``config.method.unlabeled`` (then ``unlabeled_size`` of them).

  ``'rest'``: the images of the training examples outside the labeled subset
  (``config.data.train_size``; the validation split excluded); a path: the
  images of that ``.npz``. A seeded subset (``config.data.split_seed``) of
  ``unlabeled_size`` when > 0.

  Raises:
    ConfigError: ``'rest'`` without a labeled subset (``config.data.train_size`` 0).
    DataError: unreadable data.
  """
  from jaxrobust.train.builders import train_split_indices  # pylint: disable=g-import-not-at-top
  s = semisup_settings(config)
  d = config.data
  if s["unlabeled"] == "rest":
    if not d.train_size:
      raise ConfigError("config.method.unlabeled='rest' takes the training examples outside "
                        "the labeled subset: set config.data.train_size (e.g. 4000), or give "
                        "an .npz of images")
    full = load_split(d.name, "train", d.source, d.data_dir or None, d.get("image_size", 0))
    _, _, rest = train_split_indices(config, full.labels)
    out = UnlabeledSet(full.images[rest], f"{d.name}:rest")  # images only.
    del full
  else:
    out = load_unlabeled_npz(s["unlabeled"])
  return out.subsample(s["unlabeled_size"], d.split_seed)


def predict_labels(model_fns, params, batch_stats, images: np.ndarray, batch_size: int,
                   mesh=None) -> np.ndarray:
  """The eval-mode argmax of a model on every image, in jitted batches.

  Args:
    model_fns: the model's :class:`~jaxrobust.models.ModelFns`.
    params, batch_stats: its weights and running averages.
    images: uint8 ``[N, H, W, C]`` (the whole set, held by every process).
    batch_size: images per jitted call (the last batch is padded).
    mesh: the device mesh the batch is sharded over (None: all devices).

  Returns:
    int32 ``[N]`` predicted classes.
  """
  mesh = mesh or parallel.make_mesh()
  n_dev = mesh.devices.size
  batch_size = max(n_dev, batch_size // n_dev * n_dev)
  rep, dat = parallel.replicated(mesh), parallel.data_sharding(mesh)

  def predict(p, bs, x):
    return jnp.argmax(model_fns.apply(p, bs, to_float(x), train=False)[0], -1).astype(jnp.int32)

  predict = jax.jit(predict, in_shardings=(rep, rep, dat), out_shardings=dat)
  params, batch_stats = parallel.replicate((params, batch_stats), mesh)
  out = []
  for lo in range(0, len(images), batch_size):
    chunk = images[lo:lo + batch_size]
    pad = batch_size - len(chunk)
    if pad:
      chunk = np.concatenate([chunk, np.repeat(chunk[:1], pad, 0)])
    pred = parallel.host_array(predict(params, batch_stats, parallel.shard_rows(chunk, mesh)))
    out.append(pred[:batch_size - pad])
  return np.concatenate(out) if out else np.zeros(0, np.int32)


def teacher_fingerprint(teacher) -> str:
  """A digest of a restored run's weights and running averages (a :class:`TrainedModel`)."""
  h = hashlib.sha256()
  for name, a in host_leaves({"params": teacher.params, "batch_stats": teacher.batch_stats}):
    h.update(f"{name}={array_digest(a)};".encode())
  return h.hexdigest()


def images_digest(images: np.ndarray) -> str:
  return array_digest(np.asarray(images))


def pseudo_labels(config, unlabeled: UnlabeledSet, workdir: str | None, mesh=None
                  ) -> np.ndarray:
  """The pseudo-labels of ``unlabeled`` from ``config.method.teacher_workdir``, cached.

  Reads ``<workdir>/pseudo_labels.npz`` when it was written for the same
  teacher (fingerprint of its weights) and the same images, else predicts
  them (:func:`predict_labels`) and writes it (process 0; ``workdir`` None:
  no cache).

  Returns:
    int32 ``[N]``.

  Raises:
    ConfigError: no ``teacher_workdir``, or a teacher trained on another dataset.
    CheckpointError: an unreadable teacher run.
  """
  from jaxrobust.train.restore import load_trained  # pylint: disable=g-import-not-at-top
  s = semisup_settings(config)
  if not s["teacher_workdir"]:
    raise ConfigError(f"method {config.method.name!r} pseudo-labels its unlabeled data with a "
                      f"standard model: set --config.method.teacher_workdir=DIR, the --workdir "
                      f"of a finished python -m jaxrobust.train run (e.g. configs/"
                      f"cifar10_rst.py:teacher)")
  teacher = load_trained(s["teacher_workdir"], s["teacher_which"], mesh=mesh)
  if teacher.config.data.name != config.data.name:
    raise ConfigError(f"the teacher in {s['teacher_workdir']} was trained on "
                      f"{teacher.config.data.name!r}, this run uses {config.data.name!r}")
  fingerprint, digest = teacher_fingerprint(teacher), images_digest(unlabeled.images)
  path = os.path.join(workdir, CACHE_NAME) if workdir else None
  if path and os.path.isfile(path):
    try:
      with np.load(path) as f:
        if str(f["teacher_fingerprint"]) == fingerprint and str(f["images_digest"]) == digest:
          log.info("pseudo-labels from %s (teacher %s)", path, teacher.workdir)
          return np.asarray(f["labels"], np.int32)
    except (KeyError, ValueError, OSError) as e:
      log.warning("ignoring the unreadable %s (%s)", path, e)
    log.info("%s was written for another teacher or unlabeled set; recomputing", path)
  labels = predict_labels(teacher.model_fns, teacher.params, teacher.batch_stats,
                          unlabeled.images, config.eval.batch_size, mesh)
  log.info("pseudo-labelled %d images with %s (step %d); class counts %s", len(labels),
           teacher.workdir, teacher.step, np.bincount(labels).tolist())
  if path and jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    tmp = path + ".tmp.npz"
    np.savez(tmp, labels=labels, teacher_fingerprint=fingerprint, images_digest=digest,
             teacher_workdir=teacher.workdir, teacher_which=teacher.which,
             teacher_step=teacher.step, source=unlabeled.source)
    os.replace(tmp, path)
  return labels


def train_iterator(config, splits, workdir: str | None = None, mesh=None):
  """The trainer's iterator: :class:`TrainIterator`, or for a semi-supervised method a
  :class:`SemiSupervisedIterator` over ``splits.train`` (labeled) and
  :func:`unlabeled_set` (with :func:`pseudo_labels` when the method takes them and
  ``unsup_fraction > 0``; with ``unsup_fraction = 0`` every row is labeled, and the unlabeled
  set only sets the epoch length: the supervised baselines of ``configs/cifar10_rst.py``).

  Raises:
    ConfigError, DataError: see :func:`unlabeled_set` and :func:`pseudo_labels`.
  """
  c = config
  common = dict(augment=c.data.augment, pad=c.data.pad, pad_mode=c.data.pad_mode,
                flip=c.data.flip, process_index=jax.process_index(),
                process_count=jax.process_count())
  s = semisup_settings(config)
  if s is None:
    return TrainIterator(splits.train, c.train.batch_size, c.seed, **common)
  unlabeled = unlabeled_set(config)
  labels = None
  if s["teacher_workdir"] is not None and s["unsup_fraction"] > 0:
    labels = pseudo_labels(config, unlabeled, workdir, mesh)
  log.info("semi-supervised batches: %d labeled (%s) + %d unlabeled (%s), fraction %.3g",
           len(splits.train), config.data.name, len(unlabeled), unlabeled.source,
           s["unsup_fraction"])
  return SemiSupervisedIterator(splits.train, unlabeled, c.train.batch_size, c.seed,
                                s["unsup_fraction"], labels, **common)
