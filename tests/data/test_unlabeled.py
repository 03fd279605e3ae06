"""Unlabeled sets and the mixed labeled / unlabeled iterator: batch composition, process-count
invariance, resume, the .npz loader, and that no true label of an unlabeled point gets anywhere."""
import numpy as np
import pytest

from jaxrobust.data import ArrayDataset
from jaxrobust.data.unlabeled import (NO_LABEL, SemiSupervisedIterator, UnlabeledSet,
                                      load_unlabeled_npz)
from jaxrobust.errors import DataError
from jaxrobust.methods import method_config
from jaxrobust.train import semisup
from jaxrobust.train import builders
from jaxrobust.train.builders import build_splits
from jaxrobust.train.defaults import default_config, resolve_config


def _images(n, seed, value=None):
  rng = np.random.default_rng(seed)
  x = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
  x[:, 0, 0, 0] = np.arange(n) % 256 if value is None else value  # a row tag.
  return x


def _labeled(n=20):
  x = _images(n, 0, value=0)
  x[:, 0, 1, 0] = np.arange(n)  # index tag of a labeled image
  return ArrayDataset(x, np.arange(n, dtype=np.int32) % 10, np.ones(n, bool), "toy")


def _unlabeled(n=30):
  x = _images(n, 1, value=255)
  x[:, 0, 1, 0] = np.arange(n)
  return UnlabeledSet(x, "toy-unlabeled")


def test_batches_are_half_labeled_then_half_unlabeled_with_pseudo_labels():
  lab, unl = _labeled(), _unlabeled()
  pseudo = (np.arange(30) * 7 % 10).astype(np.int32)
  it = SemiSupervisedIterator(lab, unl, 8, seed=3, unsup_fraction=0.5, pseudo_labels=pseudo,
                              augment=False)
  assert (it.n_labeled, it.n_unlabeled, it.steps_per_epoch) == (4, 4, 50 // 8)
  seen = set()
  for _ in range(15):  # past an epoch of the labeled iterator (20 // 4 = 5 batches).
    b = next(it)
    assert b["image"].shape == (8, 8, 8, 3) and b["label"].dtype == np.int32
    assert (b["image"][:4, 0, 0, 0] == 0).all() and (b["image"][4:, 0, 0, 0] == 255).all()
    li, ui = b["image"][:4, 0, 1, 0], b["image"][4:, 0, 1, 0]
    np.testing.assert_array_equal(b["label"][:4], lab.labels[li])  # true labels
    np.testing.assert_array_equal(b["label"][4:], pseudo[ui])  # the teacher's labels
    seen.update(li.tolist())
  assert seen == set(range(20))  # the labeled permutation cycles.
  b = next(SemiSupervisedIterator(lab, unl, 10, seed=3, unsup_fraction=0.25, augment=False))
  assert (b["image"][:8, 0, 0, 0] == 0).all() and (b["label"][8:] == NO_LABEL).all()  # int(2.5)


def test_global_batch_is_the_same_for_any_process_count_and_resumes():
  lab, unl = _labeled(), _unlabeled()

  def batches(pc, start=None, n=6):
    its = [SemiSupervisedIterator(lab, unl, 8, seed=1, process_index=p, process_count=pc)
           for p in range(pc)]
    if start is not None:
      for it in its:
        it.restore(start)
    out = []
    for _ in range(n):
      parts = [next(it) for it in its]
      out.append({k: np.concatenate([p[k] for p in parts]) for k in parts[0]})
    return out, its[0].state()

  one, _ = batches(1)
  for pc in (2, 4):
    many, _ = batches(pc)
    for a, b in zip(one, many):
      for k in a:
        np.testing.assert_array_equal(a[k], b[k])
  first, state = batches(1, n=3)
  rest, _ = batches(1, start=state, n=3)
  for a, b in zip(one, first + rest):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])


def test_npz_loader_reads_images_or_x_only(tmp_path):
  x = _images(5, 2)
  np.savez(tmp_path / "u8.npz", images=x, labels=np.arange(5))
  np.savez(tmp_path / "f.npz", x=x.astype(np.float32) / 255)
  np.testing.assert_array_equal(load_unlabeled_npz(tmp_path / "u8.npz").images, x)
  np.testing.assert_array_equal(load_unlabeled_npz(tmp_path / "f.npz").images, x)  # quantised
  np.savez(tmp_path / "bad.npz", labels=np.arange(5))
  with pytest.raises(DataError, match="'images'"):
    load_unlabeled_npz(tmp_path / "bad.npz")
  np.savez(tmp_path / "range.npz", images=x.astype(np.float32))
  with pytest.raises(DataError, match=r"\[0, 1\]"):
    load_unlabeled_npz(tmp_path / "range.npz")
  assert not hasattr(UnlabeledSet(x), "labels")


def _write_cifar(root, labels):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (len(labels), 32, 32, 3), dtype=np.uint8)
  np.savez(root / "cifar10_train.npz", images=images, labels=labels)
  np.savez(root / "cifar10_test.npz", images=images[:10], labels=labels[:10])
  return images


def _config(root, name="uat_ot"):
  c = default_config()
  c.data.data_dir = str(root)
  c.data.val_size, c.data.train_size, c.data.test_size = 20, 30, 10
  c.train.batch_size = 8
  c.method = method_config(name, attack=dict(name="pgd", loss="kl"))
  return resolve_config(c)


def test_rest_is_the_unlabeled_remainder_and_carries_no_true_label(tmp_path, monkeypatch):
  a, b = tmp_path / "a", tmp_path / "b"
  a.mkdir(), b.mkdir()
  labels = np.arange(100, dtype=np.int32) % 10
  images = _write_cifar(a, labels)
  config = _config(a)
  splits = build_splits(config)
  rest = semisup.unlabeled_set(config)
  assert len(splits.train) == 30 and len(splits.val) == 20 and len(rest) == 50
  # The rest is exactly the training images outside the labeled subset and validation split.
  keys = lambda x: {r.tobytes() for r in x}  # noqa: E731
  assert keys(rest.images) == keys(images) - keys(splits.train.images) - keys(splits.val.images)
  # Relabel every unlabeled example (the same split: the class-balanced validation split is
  # drawn from the labels, as in supervised runs): nothing the pipeline produces may change.
  split = builders.train_split_indices(config, labels)
  np.testing.assert_array_equal(rest.images, images[split[2]])
  monkeypatch.setattr(builders, "train_split_indices", lambda *_: split)
  relabeled = labels.copy()
  relabeled[split[2]] = (relabeled[split[2]] + 3) % 10
  _write_cifar(b, relabeled)
  config_b = _config(b)
  rest_b = semisup.unlabeled_set(config_b)
  np.testing.assert_array_equal(rest.images, rest_b.images)
  it_a = semisup.train_iterator(config, splits)
  it_b = semisup.train_iterator(config_b, build_splits(config_b))
  for _ in range(8):
    ba, bb = next(it_a), next(it_b)
    assert set(ba) == {"image", "label"}
    for k in ba:
      np.testing.assert_array_equal(ba[k], bb[k])
    assert (ba["label"][4:] == NO_LABEL).all()  # uat_ot: no pseudo-labels either.
  assert vars(rest).keys() == {"images", "source"}
