"""Small archives in the official download formats TFDS's builders read, and a local server.

* CIFAR-10: ``cifar-10-binary.tar.gz`` holding ``cifar-10-batches-bin/data_batch_{1..5}.bin``,
  ``test_batch.bin`` and ``batches.meta.txt``; a record is one label byte followed by the
  3072 bytes of a 32x32 image, channel planes R, G, B, each row-major
  (https://www.cs.toronto.edu/~kriz/cifar.html; TFDS ``image_classification/cifar.py``).
* MNIST: the four idx files ``{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz``: big-endian
  header (magic 2051 / 2049, counts, rows, cols) then uint8 pixels / labels
  (http://yann.lecun.com/exdb/mnist/; TFDS ``image_classification/mnist.py``).

:func:`serve` serves a folder on ``127.0.0.1`` from a daemon thread that stops itself after
``timeout_s``. :func:`write_checksums` writes the ``url<TAB>size<TAB>sha256<TAB>filename``
file that ``tfds.core.download.add_checksums_dir`` registers.
"""
from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import http.server
import io
import pathlib
import struct
import tarfile
import threading

import numpy as np

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")
MNIST_FILES = {
    ("train", "images"): "train-images-idx3-ubyte.gz",
    ("train", "labels"): "train-labels-idx1-ubyte.gz",
    ("test", "images"): "t10k-images-idx3-ubyte.gz",
    ("test", "labels"): "t10k-labels-idx1-ubyte.gz",
}


def _cifar_records(images: np.ndarray, labels: np.ndarray) -> bytes:
  """uint8 [N, 32, 32, 3], int [N] -> N records of 1 + 3072 bytes (label, R, G, B planes)."""
  planes = np.ascontiguousarray(images.transpose(0, 3, 1, 2)).reshape(len(images), -1)
  return np.concatenate([labels.astype(np.uint8)[:, None], planes], axis=1).tobytes()


def write_cifar10_archive(path: pathlib.Path, train: tuple, test: tuple) -> pathlib.Path:
  """Writes ``cifar-10-binary.tar.gz`` with ``train`` split over the five data batches."""
  members = {"batches.meta.txt": ("\n".join(CIFAR10_CLASSES) + "\n").encode()}
  for i, idx in enumerate(np.array_split(np.arange(len(train[1])), 5)):
    members[f"data_batch_{i + 1}.bin"] = _cifar_records(train[0][idx], train[1][idx])
  members["test_batch.bin"] = _cifar_records(*test)
  with tarfile.open(path, "w:gz") as tar:
    for name, data in members.items():
      info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))
  return path


def write_mnist_archives(folder: pathlib.Path, train: tuple, test: tuple) -> list[pathlib.Path]:
  """Writes the four idx ``.gz`` files of MNIST (images uint8 [N, 28, 28, 1])."""
  paths = []
  for split, (images, labels) in (("train", train), ("test", test)):
    n = len(labels)
    blobs = {"images": struct.pack(">IIII", 2051, n, 28, 28) + images.astype(np.uint8).tobytes(),
             "labels": struct.pack(">II", 2049, n) + labels.astype(np.uint8).tobytes()}
    for kind, blob in blobs.items():
      path = folder / MNIST_FILES[(split, kind)]
      path.write_bytes(gzip.compress(blob, compresslevel=1, mtime=0))
      paths.append(path)
  return paths


def write_checksums(path: pathlib.Path, base_url: str, files) -> pathlib.Path:
  """``<base_url>/<relative name>  size  sha256  filename`` lines for ``files`` in TFDS's format.

  ``files`` maps a URL path relative to ``base_url`` to the local file served there.
  """
  lines = []
  for rel, f in files.items():
    data = pathlib.Path(f).read_bytes()
    lines.append(f"{base_url}/{rel}\t{len(data)}\t{hashlib.sha256(data).hexdigest()}\t"
                 f"{pathlib.Path(f).name}")
  path.write_text("\n".join(lines) + "\n")
  return path


class _QuietHandler(http.server.SimpleHTTPRequestHandler):

  def log_message(self, format, *args):  # pylint: disable=redefined-builtin
    del format, args


@contextlib.contextmanager
def serve(folder: pathlib.Path, timeout_s: float = 600.0):
  """Serves ``folder`` over HTTP on 127.0.0.1; yields ``(base_url, request_log)``.

  ``request_log`` lists the paths requested. The server runs in a daemon thread, is shut
  down on exit, and shuts itself down after ``timeout_s`` whatever happens.
  """
  log = []

  class Handler(_QuietHandler):

    def do_GET(self):
      log.append(self.path)
      super().do_GET()

  handler = functools.partial(Handler, directory=str(folder))
  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
  server.daemon_threads = True
  thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                            daemon=True)
  thread.start()
  timer = threading.Timer(timeout_s, server.shutdown)
  timer.daemon = True
  timer.start()
  try:
    yield f"http://127.0.0.1:{server.server_address[1]}", log
  finally:
    timer.cancel()
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)
