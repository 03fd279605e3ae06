"""OOD corrupted test sets: corrupt_images, load_corrupted (generated + TFDS), cache, errors."""
import sys
import warnings

import numpy as np
import pytest

from jaxrobust.data import ArrayDataset, load_split
from jaxrobust.data import corruptions as C
from jaxrobust.errors import ConfigError, DataError

imagecorruptions = pytest.importorskip("imagecorruptions", reason="needs jaxrobust[ood]")

# Severity 5 is farther from the clean image than severity 1 (mean |diff|), measured on CIFAR-10
# test images: monotone over all five severities for these. Not for glass_blur, frost, saturate.
GROWS_WITH_SEVERITY = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur",
                       "motion_blur", "zoom_blur", "brightness", "contrast", "pixelate",
                       "jpeg_compression")
NOISE = ("gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise")


@pytest.fixture(scope="module")
def cifar(data_dir) -> ArrayDataset:
  """6 real CIFAR-10 test images (exact part of the bundled set)."""
  return load_split("cifar10", "test", data_dir=data_dir).take(slice(0, 6))


def _random_ds(n=4, h=32, w=32, c=3, seed=0) -> ArrayDataset:
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (n, h, w, c), dtype=np.uint8)
  labels = rng.integers(0, 10, n).astype(np.int32)
  return ArrayDataset(images, labels, np.ones(n, bool), "rand")


def _mad(a, b) -> float:
  return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


def test_corruption_names():
  assert len(C.CORRUPTIONS) == 15 and len(C.EXTRA_CORRUPTIONS) == 4
  assert C.CORRUPTIONS[:4] == ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur")
  assert C.CORRUPTIONS[-1] == "jpeg_compression"
  assert C.EXTRA_CORRUPTIONS == ("speckle_noise", "gaussian_blur", "spatter", "saturate")
  assert list(C.CORRUPTIONS) == imagecorruptions.get_corruption_names("common")
  assert set(C.EXTRA_CORRUPTIONS) == set(imagecorruptions.get_corruption_names("validation"))


@pytest.mark.parametrize("name", C.CORRUPTIONS)
def test_every_corruption_severity_1_and_5(cifar, name):
  x = cifar.images
  s1 = C.corrupt_images(x, name, 1, seed=0)
  s5 = C.corrupt_images(x, name, 5, seed=0)
  for out in (s1, s5):
    assert out.dtype == np.uint8 and out.shape == x.shape
    assert all(not np.array_equal(o, i) for o, i in zip(out, x))  # every image changed
  if name in GROWS_WITH_SEVERITY:
    assert _mad(s5, x) > _mad(s1, x) + 1.0, name


@pytest.mark.parametrize("name", ["gaussian_noise", "impulse_noise", "glass_blur", "frost", "fog",
                                  "elastic_transform", "spatter"])
def test_deterministic_given_seed(cifar, name):
  x = cifar.images[:3]
  a = C.corrupt_images(x, name, 3, seed=7)
  np.random.seed(999)  # the global RNG state must not matter
  b = C.corrupt_images(x, name, 3, seed=7)
  np.testing.assert_array_equal(a, b)
  # Image i depends only on (seed, i): a prefix gets the same corruption as the full set.
  np.testing.assert_array_equal(C.corrupt_images(x[:2], name, 3, seed=7), a[:2])


@pytest.mark.parametrize("name", NOISE + ("glass_blur",))
def test_different_seed_different_noise(cifar, name):
  x = cifar.images[:2]
  a = C.corrupt_images(x, name, 3, seed=0)
  b = C.corrupt_images(x, name, 3, seed=1)
  assert all(not np.array_equal(p, q) for p, q in zip(a, b))


def test_spatter_nan_is_clean_image_not_black():
  # With seed 0, image 39's spatter mask at severity 1 is empty: the library computes 0/0 there.
  x = _random_ds(40, seed=2).images
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    out = C.corrupt_images(x, "spatter", 1, seed=0)
  assert np.abs(out[39].astype(int) - x[39]).max() <= 1  # no spatter, not a black image
  assert out[39].mean() > 100 and not np.array_equal(out[0], x[0])


def test_global_numpy_rng_untouched():
  x = _random_ds(2).images
  np.random.seed(1234)
  before = np.random.get_state()
  expected = np.random.rand(3)
  np.random.set_state(before)
  for name in ("gaussian_noise", "impulse_noise", "glass_blur", "frost"):
    C.corrupt_images(x, name, 2, seed=5)
  after = np.random.get_state()
  assert after[0] == before[0] and after[2:] == before[2:]
  np.testing.assert_array_equal(after[1], before[1])
  np.testing.assert_array_equal(np.random.rand(3), expected)


def test_grayscale_round_trip():
  x = _random_ds(3, c=1).images
  out = C.corrupt_images(x, "gaussian_noise", 2, seed=3)
  assert out.shape == x.shape and out.dtype == np.uint8
  # Corrupted as the 3-channel image, converted back with Pillow's luma.
  rgb = C.corrupt_images(np.repeat(x, 3, axis=-1), "gaussian_noise", 2, seed=3)
  luma = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
  assert np.abs(out[..., 0] - luma).max() <= 1.0
  # A brightness change of a gray image stays gray: conversion back loses nothing.
  bright = C.corrupt_images(x, "brightness", 3, seed=0)[..., 0]
  np.testing.assert_array_equal(
      bright, C.corrupt_images(np.repeat(x, 3, axis=-1), "brightness", 3, seed=0)[..., 0])


@pytest.mark.parametrize("images, match", [
    (np.zeros((2, 28, 28, 1), np.uint8), "at least 32x32"),  # MNIST size
    (np.zeros((2, 32, 32, 4), np.uint8), "1 or 3 channels"),
    (np.zeros((2, 32, 32, 3), np.float32), "uint8"),
    (np.zeros((32, 32, 3), np.uint8), "uint8 \\[N, H, W, C\\]"),
])
def test_unsupported_images_raise_data_error(images, match):
  with pytest.raises(DataError, match=match):
    C.corrupt_images(images, "fog", 1)


@pytest.mark.parametrize("name, severity, match", [
    ("gaussian", 1, "unknown corruption 'gaussian'; use one of gaussian_noise, shot_noise"),
    ("fog", 0, r"severity must be one of \(1, 2, 3, 4, 5\), got 0"),
    ("fog", 6, r"severity must be one of \(1, 2, 3, 4, 5\)"),
    ("fog", 2.0, r"severity must be one of"),
    ("fog", True, r"severity must be one of"),
])
def test_bad_name_or_severity_is_config_error(name, severity, match, tmp_path):
  base = _random_ds(2)
  with pytest.raises(ConfigError, match=match):
    C.corrupt_images(base.images, name, severity, seed=0)
  with pytest.raises(ConfigError, match=match):
    C.load_corrupted(base, name, severity, cache_dir=tmp_path)
  with pytest.raises(ConfigError, match=match):
    C.corruption_suite(base, ["fog", name], [1, severity], cache_dir=tmp_path)
  assert not list(tmp_path.iterdir())  # validated before anything was generated


def test_bad_source_and_seed_are_config_errors(tmp_path):
  base = _random_ds(2)
  with pytest.raises(ConfigError, match="use one of auto, tfds, generated"):
    C.load_corrupted(base, "fog", 1, source="disk", cache_dir=tmp_path)
  with pytest.raises(ConfigError, match="only for cifar10"):
    C.load_corrupted(base, "fog", 1, source="tfds", dataset_name="mnist")
  with pytest.raises(ConfigError, match="non-negative integer"):
    C.corrupt_images(base.images, "fog", 1, seed=-1)


def test_generated_labels_names_and_exact(cifar, tmp_path):
  ds = C.load_corrupted(cifar, "fog", 3, source="generated", cache_dir=tmp_path, seed=2)
  assert ds.name == "cifar10c-generated/fog_3" and C.is_generated(ds)
  np.testing.assert_array_equal(ds.labels, cifar.labels)
  assert ds.labels.dtype == np.int32 and len(ds) == len(cifar)
  assert not ds.exact.any()
  np.testing.assert_array_equal(ds.images, C.corrupt_images(cifar.images, "fog", 3, seed=2))
  other = C.load_corrupted(_random_ds(2), "contrast", 1, cache_dir=tmp_path, dataset_name="svhn")
  assert other.name == "svhnc-generated/contrast_1" and C.is_generated(other.name)
  assert not C.is_generated("cifar10_corrupted/fog_3")


def test_cache_round_trip(tmp_path, monkeypatch):
  base = _random_ds(4)
  first = C.load_corrupted(base, "gaussian_noise", 2, cache_dir=tmp_path, seed=3)
  files = list(tmp_path.iterdir())
  assert len(files) == 1 and files[0].suffix == ".npz"  # no temp file left behind

  def boom(*args, **kwargs):
    raise AssertionError("corrupt_images called although the result is cached")

  monkeypatch.setattr(C, "corrupt_images", boom)
  second = C.load_corrupted(base, "gaussian_noise", 2, cache_dir=tmp_path, seed=3)
  np.testing.assert_array_equal(second.images, first.images)
  np.testing.assert_array_equal(second.labels, base.labels)
  # Any change of images, severity or seed is a different cache entry.
  for kw in ({"severity": 3}, {"seed": 4}):
    args = {"severity": 2, "seed": 3, **kw}
    with pytest.raises(AssertionError, match="called although"):
      C.load_corrupted(base, "gaussian_noise", args["severity"], cache_dir=tmp_path,
                       seed=args["seed"])
  changed = _random_ds(4, seed=1)
  with pytest.raises(AssertionError, match="called although"):
    C.load_corrupted(changed, "gaussian_noise", 2, cache_dir=tmp_path, seed=3)


def test_corrupt_cache_file_is_regenerated(tmp_path):
  base = _random_ds(2)
  first = C.load_corrupted(base, "shot_noise", 1, cache_dir=tmp_path)
  (path,) = tmp_path.iterdir()
  path.write_bytes(b"not a zip")
  again = C.load_corrupted(base, "shot_noise", 1, cache_dir=tmp_path)
  np.testing.assert_array_equal(again.images, first.images)
  with np.load(path) as f:  # rewritten
    np.testing.assert_array_equal(f["images"], first.images)


def test_cache_dir_from_environment(tmp_path, monkeypatch):
  monkeypatch.setenv(C.ENV_CACHE_DIR, str(tmp_path))
  assert C.default_cache_dir() == tmp_path / "corruptions"
  C.load_corrupted(_random_ds(2), "pixelate", 1)
  assert len(list((tmp_path / "corruptions").glob("cifar10-pixelate_1-*.npz"))) == 1


def test_unusable_cache_dir_is_data_error(tmp_path):
  not_a_dir = tmp_path / "file"
  not_a_dir.write_text("x")
  with pytest.raises(DataError, match="cannot create the corruption cache folder"):
    C.load_corrupted(_random_ds(2), "fog", 1, cache_dir=not_a_dir / "sub")


def test_tfds_unavailable_is_data_error(tmp_path):
  base = _random_ds(4)
  with pytest.raises(DataError, match="tfds build cifar10_corrupted.*source='generated'"):
    C.load_corrupted(base, "fog", 3, source="tfds", tfds_data_dir=tmp_path)
  with pytest.raises(DataError, match="32x32x3"):
    C.load_corrupted(_random_ds(2, h=40), "fog", 3, source="tfds", tfds_data_dir=tmp_path)
  assert not (tmp_path / "downloads").exists()  # nothing was downloaded
  assert C.tfds_config_name("glass_blur", 2) == "frosted_glass_blur_2"
  assert C.tfds_config_name("elastic_transform", 5) == "elastic_5"


def test_auto_prefers_tfds_for_full_test_set_else_generates(tmp_path, monkeypatch):
  n = C.CIFAR10_TEST_SIZE
  full = ArrayDataset(np.zeros((n, 32, 32, 3), np.uint8), np.zeros(n, np.int32),
                      np.ones(n, bool), "cifar10")
  calls = []
  official = ArrayDataset(np.ones((n, 32, 32, 3), np.uint8), np.ones(n, np.int32),
                          np.ones(n, bool), "cifar10_corrupted/fog_1")

  def fake_tfds(base, corruption, severity, tfds_data_dir):
    calls.append((len(base), corruption, severity, tfds_data_dir))
    return official

  monkeypatch.setattr(C, "_from_tfds", fake_tfds)
  assert C.load_corrupted(full, "fog", 1, tfds_data_dir=tmp_path) is official
  assert calls == [(n, "fog", 1, tmp_path)]
  small = C.load_corrupted(_random_ds(2), "fog", 1, cache_dir=tmp_path)  # not the full set
  assert C.is_generated(small) and len(calls) == 1


def test_auto_falls_back_to_generated_when_tfds_missing(cifar, tmp_path, monkeypatch):
  def no_tfds(base, corruption, severity, tfds_data_dir):
    raise DataError("TFDS could not provide the official CIFAR-10-C set")

  monkeypatch.setattr(C, "_from_tfds", no_tfds)
  monkeypatch.setattr(C, "CIFAR10_TEST_SIZE", len(cifar))  # treat the 6 images as "full"
  ds = C.load_corrupted(cifar, "contrast", 2, cache_dir=tmp_path)
  assert ds.name == "cifar10c-generated/contrast_2" and not ds.exact.any()
  np.testing.assert_array_equal(ds.labels, cifar.labels)


def test_corruption_suite(cifar, tmp_path):
  base = cifar.take(slice(0, 2))
  suite = C.corruption_suite(base, ("fog", "pixelate"), (1, 4), cache_dir=tmp_path)
  assert list(suite) == ["fog_1", "fog_4", "pixelate_1", "pixelate_4"]
  assert suite["pixelate_4"].name == "cifar10c-generated/pixelate_4"
  assert all(C.is_generated(d) and np.array_equal(d.labels, base.labels) for d in suite.values())
  assert len(list(tmp_path.glob("*.npz"))) == 4


def test_missing_library_is_data_error(monkeypatch):
  monkeypatch.setitem(sys.modules, "imagecorruptions", None)
  C._library.cache_clear()  # pylint: disable=protected-access
  try:
    with pytest.raises(DataError, match=r"pip install 'jaxrobust\[ood\]'"):
      C.corrupt_images(_random_ds(1).images, "fog", 1)
  finally:
    monkeypatch.undo()
    C._library.cache_clear()  # pylint: disable=protected-access
