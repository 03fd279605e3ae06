"""TFDS's download-and-prepare path, end to end and offline.

Archives in each dataset's official download format, built from the bundled ``.npz`` data,
are served from 127.0.0.1; a child process runs the user's command
(``python -m jaxrobust.train ... --config.data.source=tfds --config.data.data_dir=DIR`` on an
empty DIR) with only TFDS's download URLs pointed at that server
(``tests/data/tfds_mirror_run.py``) and the archives' sha256 registered with
``tfds.core.download.add_checksums_dir``. TFDS downloads, verifies, extracts and prepares
(``array_record``); the run trains; the prepared data must hold exactly the images and labels
the archives were built from.
"""
from __future__ import annotations

import hashlib
import json
import os
import pathlib
import subprocess
import sys
import tarfile

import numpy as np
import pytest

from jaxrobust.data import load_split
from jaxrobust.errors import DataError

from . import tfds_archives

tfds = pytest.importorskip("tensorflow_datasets")
REPO = pathlib.Path(__file__).resolve().parents[2]
RUNNER = REPO / "tests" / "data" / "tfds_mirror_run.py"
MNIST_EXAMPLES = (300, 100)  # (train, test) images served to TFDS's mnist builder.


def _need_tensorflow():
  """TFDS's builders read the archives with TensorFlow (the `tfds` extra, in `test` too)."""
  try:
    import tensorflow  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    if os.environ.get("CI"):
      pytest.fail("tensorflow is missing: pip install -e '.[test]' installs it (tfds extra)")
    pytest.skip("tensorflow not installed (pip install -e '.[tfds]')")


def _run(base, checksums_dir, *args, timeout=400):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(JAX_PLATFORMS="cpu", MIRROR_MNIST_EXAMPLES=",".join(map(str, MNIST_EXAMPLES)),
             PYTHONPATH=os.pathsep.join(
      [str(REPO)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
  return subprocess.run([sys.executable, str(RUNNER), base, str(checksums_dir), *args],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def _pairs(images, labels) -> list[bytes]:
  """The (image, label) pairs as sorted byte strings: equality regardless of order."""
  return sorted(bytes([int(y)]) + np.ascontiguousarray(x).tobytes()
                for x, y in zip(images, labels))


def _slices(name, data_dir):
  """(train, test) ``(images, labels)`` the archives are built from."""
  def load(split, n):
    with np.load(data_dir / f"{name}_{split}.npz") as f:
      return f["images"][:n], f["labels"][:n]
  # 300 train (>= 10 per class for smoke's 100 validation images) and the first 100 test
  # images; TFDS's mnist builder is told to read that many (MNIST_EXAMPLES).
  return load("train", MNIST_EXAMPLES[0]), load("test", MNIST_EXAMPLES[1])


def _write_archives(name, folder, train, test) -> dict[str, pathlib.Path]:
  """Official-format archives of ``name`` in ``folder``; URL path -> file."""
  if name == "cifar10":
    path = tfds_archives.write_cifar10_archive(folder / "cifar-10-binary.tar.gz", train, test)
    return {path.name: path}
  (folder / "mnist").mkdir()
  return {f"mnist/{p.name}": p
          for p in tfds_archives.write_mnist_archives(folder / "mnist", train, test)}


def test_cifar10_archive_layout(tmp_path):
  """The CIFAR-10 binary layout read back by hand (label byte + R, G, B planes)."""
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (7, 32, 32, 3), dtype=np.uint8)
  labels = np.arange(7) % 10
  path = tfds_archives.write_cifar10_archive(tmp_path / "c.tar.gz", (images, labels),
                                             (images[:2], labels[:2]))
  with tarfile.open(path) as tar:
    names = sorted(tar.getnames())
    batch = tar.extractfile("cifar-10-batches-bin/data_batch_1.bin").read()
  assert names == sorted([f"cifar-10-batches-bin/data_batch_{i}.bin" for i in range(1, 6)]
                         + ["cifar-10-batches-bin/test_batch.bin",
                            "cifar-10-batches-bin/batches.meta.txt"])
  assert len(batch) == 2 * 3073  # array_split of 7 into 5: 2, 2, 1, 1, 1.
  assert batch[0] == labels[0] and batch[3073] == labels[1]
  red, green = np.frombuffer(batch[1:1025], np.uint8), np.frombuffer(batch[1025:2049], np.uint8)
  np.testing.assert_array_equal(red.reshape(32, 32), images[0, :, :, 0])
  np.testing.assert_array_equal(green.reshape(32, 32), images[0, :, :, 1])


_WITHOUT_TF = """
import importlib.util, runpy, sys
_find_spec = importlib.util.find_spec
def _no_tf_find_spec(name, package=None):  # as if tensorflow were not installed.
  return None if name.split(".")[0] == "tensorflow" else _find_spec(name, package)
importlib.util.find_spec = _no_tf_find_spec
class _NoTensorFlow:
  def find_spec(self, name, path=None, target=None):
    if name == "tensorflow" or name.startswith("tensorflow."):
      raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, _NoTensorFlow())
sys.argv = ["jaxrobust.train"] + sys.argv[1:]
runpy.run_module("jaxrobust.train", run_name="__main__", alter_sys=True)
"""


def test_preparing_without_tensorflow_names_the_extra(tmp_path):
  """The user's command where TensorFlow is missing: one `error:` line naming the extra."""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join(
      [str(REPO)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
  out = subprocess.run(
      [sys.executable, "-c", _WITHOUT_TF, "--config", f"{REPO}/configs/cifar10_pgd_at.py:smoke",
       "--workdir", str(tmp_path / "run"), "--config.data.source=tfds",
       f"--config.data.data_dir={tmp_path / 'tfds'}"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode != 0
  errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1, out.stderr[-3000:]
  assert "needs TensorFlow" in errors[0] and "pip install 'jaxrobust[tfds]'" in errors[0]
  assert not (tmp_path / "tfds" / "cifar10" / "3.0.2").exists()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cifar10", "mnist"])
def test_download_prepare_and_train(name, tmp_path, data_dir):
  _need_tensorflow()
  train, test = _slices(name, data_dir)
  served, checksums, tfds_dir = tmp_path / "served", tmp_path / "checksums", tmp_path / "tfds"
  served.mkdir()
  checksums.mkdir()
  files = _write_archives(name, served, train, test)
  config = REPO / "configs" / f"{name}_pgd_at.py"
  with tfds_archives.serve(served) as (base, requests):
    tfds_archives.write_checksums(checksums / "jaxrobust_mirror.txt", base, files)
    out = _run(base, checksums, "jaxrobust.train", "--config", f"{config}:smoke",
               "--workdir", str(tmp_path / "run"), "--config.data.source=tfds",
               f"--config.data.data_dir={tfds_dir}")
  assert out.returncode == 0, out.stderr[-4000:]
  assert sorted(requests) == sorted(f"/{rel}" for rel in files)  # each archive fetched once.
  prepared = tfds.builder(name, data_dir=tfds_dir, file_format="array_record")
  assert prepared.is_prepared()
  assert list(prepared.data_path.glob("*.array_record-*"))
  report = json.loads((tmp_path / "run" / "report.json").read_text())
  assert report["last"]["step"] == 4 and report["last"]["count"] == 100
  shape = (32, 32, 3) if name == "cifar10" else (28, 28, 1)
  run_config = json.loads((tmp_path / "run" / "config.json").read_text())
  assert tuple(run_config["data"]["image_shape"]) == shape
  # What TFDS prepared (read back without any mirror) is exactly the slice (TFDS shuffles).
  for split, (images, labels) in (("train", train), ("test", test)):
    ds = load_split(name, split, source="tfds", data_dir=tfds_dir)
    assert ds.images.shape == (len(labels),) + shape
    assert _pairs(ds.images, ds.labels) == _pairs(images, labels)


@pytest.mark.slow
def test_archive_with_wrong_checksum_is_refused(tmp_path, data_dir):
  _need_tensorflow()
  train, test = _slices("cifar10", data_dir)
  served, checksums = tmp_path / "served", tmp_path / "checksums"
  served.mkdir()
  checksums.mkdir()
  files = _write_archives("cifar10", served, train, test)
  code = ("from jaxrobust.data import load_split\n"
          f"load_split('cifar10', 'train', source='tfds', data_dir={str(tmp_path / 'tfds')!r})")
  with tfds_archives.serve(served) as (base, requests):
    tfds_archives.write_checksums(checksums / "jaxrobust_mirror.txt", base, files)
    # One flipped label byte after the checksums were registered.
    data = bytearray(files["cifar-10-binary.tar.gz"].read_bytes())
    data[-100] ^= 1
    files["cifar-10-binary.tar.gz"].write_bytes(bytes(data))
    out = _run(base, checksums, "-c", code)
  assert requests == ["/cifar-10-binary.tar.gz"]
  assert out.returncode != 0
  assert "DataError: TFDS could not provide cifar10:train (NonMatchingChecksumError" in out.stderr
  assert not (tmp_path / "tfds" / "cifar10" / "3.0.2").exists()


def _imagenette_archive(folder, wnids):
  """A tiny ``imagenette2.tgz`` (official layout: imagenette2/{train,val}/<wnid>/*.JPEG).

  Image k of class c is ``w x h`` with its left half one flat colour and its right half
  another, so the center crop is known: returns {(split, label): [(left_rgb, right_rgb)]}.
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top
  expected = {}
  root = folder / "src" / "imagenette2"
  sizes = [(480, 320), (400, 300), (427, 350)]  # (w, h): landscape, of varying size.
  for split, per_class in (("train", 2), ("val", 1)):
    for c, wnid in enumerate(wnids[:3]):
      (root / split / wnid).mkdir(parents=True)
      for k in range(per_class):
        w, h = sizes[(c + k) % len(sizes)]
        left = (40 * c + 20, 200 - 30 * k, 90)
        right = (230 - 40 * c, 60, 120 + 50 * k)
        img = np.empty((h, w, 3), np.uint8)
        img[:, : w // 2], img[:, w // 2:] = left, right
        Image.fromarray(img).save(root / split / wnid / f"{wnid}_{k}.JPEG", quality=95)
        expected.setdefault((split, c), []).append((left, right))
  with tarfile.open(folder / "imagenette2.tgz", "w:gz") as tar:
    tar.add(root, arcname="imagenette2")
  return folder / "imagenette2.tgz", expected


@pytest.mark.slow
def test_imagenette_prepared_and_center_cropped(tmp_path):
  """imagenette through the same path; images come out 224x224, labels by folder."""
  _need_tensorflow()
  names = (pathlib.Path(tfds.__file__).parent / "image_classification" /
           "imagenette_labels.txt").read_text().split()
  served, checksums, tfds_dir = tmp_path / "served", tmp_path / "checksums", tmp_path / "tfds"
  served.mkdir()
  checksums.mkdir()
  archive, expected = _imagenette_archive(served, names)
  code = ("import numpy as np, sys\n"
          "from jaxrobust.data import load_split\n"
          "for split in ('train', 'test'):\n"
          f"  ds = load_split('imagenette', split, 'tfds', {str(tfds_dir)!r}, 224)\n"
          f"  np.savez({str(tmp_path)!r} + f'/{{split}}.npz', images=ds.images, labels=ds.labels)\n")
  with tfds_archives.serve(served) as (base, _):
    tfds_archives.write_checksums(checksums / "jaxrobust_mirror.txt", base,
                                  {archive.name: archive})
    out = _run(base, checksums, "-c", code)
  assert out.returncode == 0, out.stderr[-4000:]
  for split, tfds_split in (("train", "train"), ("test", "val")):
    with np.load(tmp_path / f"{split}.npz") as f:
      images, labels = f["images"], f["labels"]
    want = {c: list(v) for (s, c), v in expected.items() if s == tfds_split}
    assert images.shape == (sum(map(len, want.values())), 224, 224, 3)
    assert sorted(labels.tolist()) == sorted(c for c, v in want.items() for _ in v)
    for x, c in zip(images.astype(int), labels):
      # Shorter side -> 224, center 224 columns: the left 112 columns show the left
      # colour, the right 112 the right one (JPEG and the bilinear edge: a few levels).
      got = (x[:, 4:100].mean((0, 1)), x[:, 124:220].mean((0, 1)))
      assert any(np.abs(got[0] - l).max() < 4 and np.abs(got[1] - r).max() < 4
                 for l, r in want[int(c)]), (c, got, want[int(c)])
  assert hashlib.sha256(archive.read_bytes()).hexdigest() in (
      checksums / "jaxrobust_mirror.txt").read_text()
