"""Data: splits, augmentation, resumable iterators, eval batches, .npz loading."""
import io
import json

import numpy as np
import pytest

from jaxrobust.data import (ENV_DATA_DIR, ArrayDataset, TrainIterator, default_data_dir,
                            eval_batches, load_numpy, load_split, random_crop_flip, to_float,
                            train_val_split)
from jaxrobust.errors import ConfigError, DataError


def _images(n, h=6, w=5, c=2, seed=0, low=1):
  # pixels >= 1 so zero padding is recognisable
  return np.random.default_rng(seed).integers(low, 256, (n, h, w, c), dtype=np.uint8)


def _indexed_dataset(n, h=6, w=6):
  """Labels are the example indices: a batch's labels say which examples it holds."""
  return ArrayDataset(_images(n, h, w, 1), np.arange(n, dtype=np.int32), np.ones(n, bool), "t")


# --- train_val_split ---------------------------------------------------------------------


def test_train_val_split_balanced_disjoint_covering():
  labels = np.repeat(np.arange(5), 40)
  np.random.default_rng(0).shuffle(labels)
  train, val = train_val_split(labels, num_val=23, seed=3)
  assert len(val) == 23 and len(train) == 200 - 23
  assert np.intersect1d(train, val).size == 0
  np.testing.assert_array_equal(np.union1d(train, val), np.arange(200))
  assert np.all(np.diff(train) > 0) and np.all(np.diff(val) > 0)  # sorted
  # 23 = 5 * 4 + 3: four per class, the first three classes one more.
  np.testing.assert_array_equal(np.bincount(labels[val], minlength=5), [5, 5, 5, 4, 4])


def test_train_val_split_seeded():
  labels = np.repeat(np.arange(4), 25)
  a = train_val_split(labels, 20, seed=1)
  b = train_val_split(labels, 20, seed=1)
  c = train_val_split(labels, 20, seed=2)
  np.testing.assert_array_equal(a[1], b[1])
  np.testing.assert_array_equal(a[0], b[0])
  assert not np.array_equal(a[1], c[1])


def test_train_val_split_edge_cases():
  labels = np.repeat(np.arange(3), 4)
  train, val = train_val_split(labels, 0, seed=0)
  assert val.size == 0
  np.testing.assert_array_equal(train, np.arange(12))
  with pytest.raises(DataError, match="validation size"):
    train_val_split(labels, 12, seed=0)
  with pytest.raises(DataError, match="class 1 has 1 examples"):
    train_val_split(np.array([0, 0, 0, 0, 1, 2, 2, 2]), 6, seed=0)


# --- random_crop_flip -------------------------------------------------------------------


def test_crop_flip_shape_dtype():
  x = _images(8, 32, 32, 3)
  out = random_crop_flip(x, np.random.default_rng(0))
  assert out.shape == x.shape and out.dtype == np.uint8
  assert out.flags["C_CONTIGUOUS"]


def test_no_pad_no_flip_is_identity():
  x = _images(5)
  np.testing.assert_array_equal(random_crop_flip(x, np.random.default_rng(0), pad=0,
                                                 flip=False), x)


def test_flip_only_mirrors():
  x = _images(16)
  out = random_crop_flip(x, np.random.default_rng(7), pad=0, flip=True)
  # with pad=0 the generator's only draw is one uniform per image: flip where < 0.5
  do_flip = np.random.default_rng(7).random(16) < 0.5
  assert do_flip.any() and (~do_flip).any()
  for i in range(16):
    expected = np.flip(x[i], axis=1) if do_flip[i] else x[i]  # left-right: the W axis
    np.testing.assert_array_equal(out[i], expected)


def _windows(padded, h, w):
  """All (dy, dx) -> window of ``padded``."""
  ph, pw = padded.shape[:2]
  return {(dy, dx): padded[dy:dy + h, dx:dx + w]
          for dy in range(ph - h + 1) for dx in range(pw - w + 1)}


@pytest.mark.parametrize("pad_mode", ["constant", "reflect"])
def test_crop_is_window_of_padded_image(pad_mode):
  n, h, w, pad = 24, 6, 5, 2
  x = _images(n, h, w)
  out = random_crop_flip(x, np.random.default_rng(1), pad=pad, flip=False, pad_mode=pad_mode)
  offsets = []
  for i in range(n):
    padded = np.pad(x[i], ((pad, pad), (pad, pad), (0, 0)), mode=pad_mode)
    if pad_mode == "constant":
      assert padded[0, 0, 0] == 0  # zero padding
    found = [k for k, v in _windows(padded, h, w).items() if np.array_equal(v, out[i])]
    assert found, i
    offsets.append(found[0])
  assert len(set(offsets)) > 5  # offsets vary across the batch
  assert {dy for dy, _ in offsets} <= set(range(2 * pad + 1))
  # some crop shows padding: zeros appear only via padding (pixels are >= 1)
  if pad_mode == "constant":
    assert (out == 0).any() and not (x == 0).any()


def test_crop_and_flip_together():
  n, h, w, pad = 16, 6, 5, 3
  x = _images(n, h, w)
  out = random_crop_flip(x, np.random.default_rng(2), pad=pad, flip=True)
  flipped = 0
  for i in range(n):
    padded = np.pad(x[i], ((pad, pad), (pad, pad), (0, 0)))
    wins = list(_windows(padded, h, w).values())
    plain = any(np.array_equal(v, out[i]) for v in wins)
    mirrored = any(np.array_equal(np.flip(v, 1), out[i]) for v in wins)
    assert plain or mirrored
    flipped += mirrored and not plain
  assert flipped > 0


def test_crop_flip_deterministic_in_rng():
  x = _images(8)
  a = random_crop_flip(x, np.random.default_rng(5))
  b = random_crop_flip(x, np.random.default_rng(5))
  c = random_crop_flip(x, np.random.default_rng(6))
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)


# --- TrainIterator ---------------------------------------------------------------------


def _take(it, k):
  return [next(it) for _ in range(k)]


def _assert_batches_equal(xs, ys):
  assert len(xs) == len(ys)
  for a, b in zip(xs, ys):
    np.testing.assert_array_equal(a["label"], b["label"])
    np.testing.assert_array_equal(a["image"], b["image"])


def test_train_iterator_deterministic_and_seeded():
  ds = _indexed_dataset(20)
  a = _take(TrainIterator(ds, 4, seed=0), 7)
  b = _take(TrainIterator(ds, 4, seed=0), 7)
  c = _take(TrainIterator(ds, 4, seed=1), 7)
  _assert_batches_equal(a, b)
  assert not all(np.array_equal(u["label"], v["label"]) for u, v in zip(a, c))
  for batch in a:
    assert batch["image"].shape == (4, 6, 6, 1) and batch["image"].dtype == np.uint8
    assert batch["label"].dtype == np.int32


def test_train_iterator_epoch_covers_distinct_examples():
  ds = _indexed_dataset(22)  # 5 batches of 4 per epoch, 2 examples dropped
  it = TrainIterator(ds, 4, seed=3, augment=False)
  assert it.steps_per_epoch == 5
  epoch0 = np.concatenate([b["label"] for b in _take(it, 5)])
  assert len(np.unique(epoch0)) == 20
  epoch1 = np.concatenate([b["label"] for b in _take(it, 5)])
  assert len(np.unique(epoch1)) == 20
  assert it.epoch == 1 and it.index == 5
  assert not np.array_equal(epoch0, epoch1)  # a new permutation each epoch
  # without augmentation the images are exactly the indexed examples
  b = next(it)
  np.testing.assert_array_equal(b["image"], ds.images[b["label"]])


@pytest.mark.parametrize("k", [0, 1, 2, 3, 4, 7])
def test_train_iterator_resume(k):
  # 3 steps per epoch: k = 2, 3, 4 straddle the first epoch boundary.
  ds = _indexed_dataset(10)
  ref = TrainIterator(ds, 3, seed=11)
  _take(ref, k)
  state = ref.state()
  assert state["seed"] == 11
  expected = _take(ref, 5)
  resumed = TrainIterator(ds, 3, seed=11)
  resumed.restore(dict(state))
  _assert_batches_equal(_take(resumed, 5), expected)


def test_train_iterator_state_is_json_and_restore_checks_seed():
  ds = _indexed_dataset(10)
  it = TrainIterator(ds, 3, seed=11)
  _take(it, 4)
  state = json.loads(json.dumps(it.state()))
  assert state == {"epoch": 1, "index": 1, "seed": 11}
  other = TrainIterator(ds, 3, seed=12)
  with pytest.raises(ConfigError, match="data seed 11"):
    other.restore(state)


def test_train_iterator_process_slices():
  ds = _indexed_dataset(24)
  whole = TrainIterator(ds, 8, seed=5, augment=False)
  p0 = TrainIterator(ds, 8, seed=5, augment=False, process_index=0, process_count=2)
  p1 = TrainIterator(ds, 8, seed=5, augment=False, process_index=1, process_count=2)
  for _ in range(7):  # crosses epoch boundaries (3 steps per epoch)
    w, a, b = next(whole), next(p0), next(p1)
    assert len(a["label"]) == len(b["label"]) == 4
    assert np.intersect1d(a["label"], b["label"]).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([a["label"], b["label"]])),
                                  np.sort(w["label"]))
  # the halves are the two contiguous chunks of the sorted global batch
  perm = np.random.default_rng([5, 0]).permutation(24)
  p0, p1 = (TrainIterator(ds, 8, seed=5, augment=False, process_index=i, process_count=2)
            for i in range(2))
  np.testing.assert_array_equal(next(p0)["label"], np.sort(perm[:8])[:4])
  np.testing.assert_array_equal(next(p1)["label"], np.sort(perm[:8])[4:])


@pytest.mark.parametrize("process_count", [2, 4])
def test_any_process_count_gives_the_single_process_global_batch(process_count):
  # Images, order and augmentation (crops, flips) alike: the trained parameters can then
  # match a single-process run with the same global batch and seed.
  ds = _indexed_dataset(40, h=8, w=8)
  whole = TrainIterator(ds, 8, seed=3, pad=2)
  parts = [TrainIterator(ds, 8, seed=3, pad=2, process_index=i, process_count=process_count)
           for i in range(process_count)]
  for _ in range(11):  # crosses epoch boundaries (5 steps per epoch)
    w = next(whole)
    got = [next(p) for p in parts]
    for k in ("image", "label"):
      np.testing.assert_array_equal(np.concatenate([g[k] for g in got]), w[k])


def test_augmentation_of_a_slice_equals_the_slice_of_the_augmentation():
  x = np.random.default_rng(0).integers(0, 256, (6, 5, 5, 3), dtype=np.uint8)
  full = random_crop_flip(x, np.random.default_rng(4), pad=2, pad_mode="reflect")
  part = random_crop_flip(x[2:5], np.random.default_rng(4), pad=2, pad_mode="reflect",
                          draws=6, offset=2)
  np.testing.assert_array_equal(part, full[2:5])
  with pytest.raises(ValueError, match="rows 4..7 of 6"):
    random_crop_flip(x[:3], np.random.default_rng(4), draws=6, offset=4)


def test_train_iterator_augmentation_preserves_labels():
  ds = _indexed_dataset(12, h=8, w=8)
  plain = _take(TrainIterator(ds, 4, seed=9, augment=False), 3)
  aug = _take(TrainIterator(ds, 4, seed=9, pad=2), 3)
  for p, a in zip(plain, aug):
    np.testing.assert_array_equal(p["label"], a["label"])
  assert any(not np.array_equal(p["image"], a["image"]) for p, a in zip(plain, aug))


def test_train_iterator_config_errors():
  ds = _indexed_dataset(10)
  with pytest.raises(ConfigError, match="not divisible by the process count"):
    TrainIterator(ds, 5, seed=0, process_count=2)
  with pytest.raises(ConfigError, match="exceeds the training set size 10"):
    TrainIterator(ds, 11, seed=0)


# --- eval_batches -------------------------------------------------------------------------


@pytest.mark.parametrize("n, batch", [(10, 4), (8, 4), (3, 8)])
def test_eval_batches_cover_each_example_once(n, batch):
  ds = _indexed_dataset(n)
  seen = []
  for b in eval_batches(ds, batch):
    assert b["image"].shape[0] == b["label"].shape[0] == b["mask"].shape[0] == batch
    assert b["mask"].dtype == np.float32
    seen.append(b["label"][b["mask"] == 1])
    np.testing.assert_array_equal(b["label"][b["mask"] == 0], 0)  # padding repeats example 0
  seen = np.concatenate(seen)
  np.testing.assert_array_equal(seen, np.arange(n))
  assert sum(1 for _ in eval_batches(ds, batch)) == -(-n // batch)


def test_eval_batches_process_slices():
  ds = _indexed_dataset(11)
  seen = []
  for p in range(2):
    for b in eval_batches(ds, 4, process_index=p, process_count=2):
      assert b["label"].shape == (2,)
      seen.append(b["label"][b["mask"] == 1])
  np.testing.assert_array_equal(np.sort(np.concatenate(seen)), np.arange(11))
  with pytest.raises(ConfigError, match="not divisible"):
    next(eval_batches(ds, 5, process_count=2))


def test_masked_accuracy_is_exact():
  ds = _indexed_dataset(10)
  correct = total = 0.0
  for b in eval_batches(ds, 4):
    flag = (b["label"] % 2 == 0).astype(np.float32)  # "correct" on even examples
    correct += float(np.sum(flag * b["mask"]))
    total += float(np.sum(b["mask"]))
  assert total == 10 and correct == 5


# --- ArrayDataset / load_numpy ----------------------------------------------------------


def _save(path, **arrays):
  np.savez(path, **arrays)


def test_load_numpy_roundtrip(tmp_path):
  images = _images(6, 32, 32, 3, low=0)  # the dataset's real shape (validated on load)
  labels = np.array([0, 1, 2, 9, 3, 3], np.int64)
  _save(tmp_path / "cifar10_test.npz", images=images, labels=labels)
  ds = load_numpy("cifar10", "test", data_dir=tmp_path)
  np.testing.assert_array_equal(ds.images, images)
  np.testing.assert_array_equal(ds.labels, labels)
  assert ds.labels.dtype == np.int32 and ds.exact.dtype == bool and ds.exact.all()
  assert ds.name == "cifar10" and len(ds) == 6 and ds.image_shape == (32, 32, 3)
  # load_split forwards to the same loader
  np.testing.assert_array_equal(load_split("cifar10", "test", "numpy", tmp_path).images, images)
  # an explicit ``exact`` array is kept
  exact = np.array([1, 1, 0, 0, 1, 0], bool)
  _save(tmp_path / "mnist_train.npz", images=images[:, :28, :28, :1], labels=labels,
        exact=exact)
  ds = load_numpy("mnist", "train", data_dir=str(tmp_path))
  np.testing.assert_array_equal(ds.exact, exact)
  sub = ds.take(np.array([2, 4]))
  np.testing.assert_array_equal(sub.labels, [2, 3])
  np.testing.assert_array_equal(sub.exact, [False, True])


def test_load_numpy_env_var(tmp_path, monkeypatch):
  _save(tmp_path / "mnist_test.npz", images=_images(2, 28, 28, 1), labels=np.array([1, 2]))
  monkeypatch.setenv(ENV_DATA_DIR, str(tmp_path))
  assert default_data_dir() == tmp_path
  assert len(load_numpy("mnist", "test")) == 2


def test_load_numpy_missing_file(tmp_path):
  with pytest.raises(DataError) as info:
    load_numpy("cifar10", "train", data_dir=tmp_path)
  msg = str(info.value)
  assert str(tmp_path / "cifar10_train.npz") in msg
  assert "JAXROBUST_DATA_DIR" in msg
  assert isinstance(info.value, FileNotFoundError)


@pytest.mark.parametrize("content", ["random", "empty", "truncated", "no_labels"])
def test_load_numpy_corrupt_file(tmp_path, content):
  path = tmp_path / "cifar10_test.npz"
  if content == "random":
    path.write_bytes(np.random.default_rng(0).bytes(4096))
  elif content == "empty":
    path.write_bytes(b"")
  elif content == "truncated":
    buf = io.BytesIO()
    np.savez_compressed(buf, images=_images(4, 8, 8, 3), labels=np.arange(4))
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
  else:
    _save(path, images=_images(4, 8, 8, 3))
  with pytest.raises(DataError) as info:
    load_numpy("cifar10", "test", data_dir=tmp_path)
  assert str(path) in str(info.value)


def test_load_numpy_wrong_format(tmp_path):
  _save(tmp_path / "cifar10_test.npz", images=np.zeros((3, 4, 4, 3), np.float32),
        labels=np.arange(3))
  with pytest.raises(DataError, match="uint8"):
    load_numpy("cifar10", "test", data_dir=tmp_path)
  _save(tmp_path / "cifar10_test.npz", images=_images(3, 4, 4, 3), labels=np.arange(4))
  with pytest.raises(DataError, match="does not match"):
    load_numpy("cifar10", "test", data_dir=tmp_path)


def test_unknown_dataset_and_source():
  with pytest.raises(DataError, match="not bundled"):
    load_numpy("svhn_cropped", "train")
  with pytest.raises(DataError, match="unknown data source"):
    load_split("cifar10", "train", source="web")


def test_to_float():
  x = np.array([[[[0, 128, 255]]]], np.uint8)
  out = np.asarray(to_float(x))
  assert out.dtype == np.float32
  np.testing.assert_allclose(out, [[[[0.0, 128 / 255, 1.0]]]], rtol=1e-6)


# --- the bundled real data ----------------------------------------------------------------


def test_bundled_cifar10_test_set():
  path = default_data_dir() / "cifar10_test.npz"
  if not path.is_file():
    pytest.skip(f"{path} not present")
  ds = load_numpy("cifar10", "test")
  assert ds.images.shape == (10000, 32, 32, 3) and ds.images.dtype == np.uint8
  assert ds.labels.shape == (10000,) and ds.labels.dtype == np.int32
  assert ds.labels.min() == 0 and ds.labels.max() == 9
  assert ds.exact[:1000].all() and not ds.exact[1000:].any()
  np.testing.assert_array_equal(np.bincount(ds.labels, minlength=10), 1000)
