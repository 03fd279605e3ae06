"""Runs a module as ``__main__`` with TFDS's download URLs pointed at a local mirror.

    python tests/data/tfds_mirror_run.py BASE_URL CHECKSUMS_DIR MODULE [ARGS...]
    python tests/data/tfds_mirror_run.py BASE_URL CHECKSUMS_DIR -c CODE

Changes nothing in TFDS but where its cifar10, mnist and imagenette builders download from
(``BASE_URL/cifar-10-binary.tar.gz``, ``BASE_URL/mnist/<idx file>.gz``,
``BASE_URL/imagenette2.tgz``, ...); the mirror's
checksums are registered from ``CHECKSUMS_DIR`` with ``tfds.core.download.add_checksums_dir``
(TFDS's way for datasets whose URLs are not in its own checksum files), before any download
manager exists. Everything else -- download, checksum verification, extraction, preparation,
reading -- is TFDS's own code, driven by ``MODULE`` (e.g. ``jaxrobust.train``).

``MIRROR_MNIST_EXAMPLES=TRAIN,TEST`` sets how many images TFDS's mnist builder reads from
the archives (its module constants, 60,000 and 10,000 by default), so a test can serve the
first images only.
"""
import os
import runpy
import sys


def main():
  base, checksums_dir, module = sys.argv[1:4]
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.datasets.imagenette import imagenette_dataset_builder
  from tensorflow_datasets.image_classification import cifar, mnist

  tfds.core.download.add_checksums_dir(checksums_dir)
  mnist.MNIST.URL = f"{base}/mnist/"
  if os.environ.get("MIRROR_MNIST_EXAMPLES"):
    n_train, n_test = (int(n) for n in os.environ["MIRROR_MNIST_EXAMPLES"].split(","))
    mnist._TRAIN_EXAMPLES, mnist._TEST_EXAMPLES = n_train, n_test  # pylint: disable=protected-access
  imagenette_dataset_builder._URL_PREFIX = f"{base}/"  # pylint: disable=protected-access
  official = cifar.Cifar10._cifar_info  # pylint: disable=protected-access
  cifar.Cifar10._cifar_info = property(  # pylint: disable=protected-access
      lambda self: official.fget(self)._replace(url=f"{base}/cifar-10-binary.tar.gz"))
  if module == "-c":
    code = compile(sys.argv[4], "<tfds_mirror_run -c>", "exec")
    exec(code, {"__name__": "__main__"})  # pylint: disable=exec-used
    return
  sys.argv = [module] + sys.argv[4:]
  runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
  main()
