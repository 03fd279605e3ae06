"""Out-of-distribution test sets: CIFAR-10-C / ImageNet-C style common corruptions.

Two ways to get a corrupted test set, behind :func:`load_corrupted`:

* ``source='tfds'``: the official CIFAR-10-C files (Hendrycks & Dietterich, 2019) through
  TFDS ``cifar10_corrupted/<corruption>_<severity>``, test split. TFDS is never asked to
  download (``download=False``, ``try_gcs=False``): the data must be prepared beforehand with
  ``tfds build cifar10_corrupted --file_format=array_record`` on a machine with internet.
  The returned dataset is named ``"cifar10_corrupted/<tfds config>"``.
* ``source='generated'``: :func:`corrupt_images` applied to the caller's images and cached as
  ``.npz``. These are NOT the official CIFAR-10-C files and are named
  ``"<dataset>c-generated/<corruption>_<severity>"`` (see :func:`is_generated`), with
  ``exact`` all False.

Corruption library: ``imagecorruptions-imaug`` (PyPI, import name ``imagecorruptions``), the
maintained fork of bethgelab's ``imagecorruptions``, which packages the ImageNet-C reference
code of Hendrycks & Dietterich. The original ``imagecorruptions`` 1.1.2 (last release 2020) no
longer imports on current stacks: it needs ``pkg_resources`` (gone from setuptools >= 81) and
calls APIs removed from NumPy 2 (``np.float_``), scikit-image >= 0.19 (``multichannel=``) and
SciPy (``scipy.ndimage.interpolation``). The fork fixes those, keeps the same corruption code
and parameters, and adds explicit ``seed`` arguments to the two corruptions that do not use the
global NumPy RNG (``impulse_noise``: scikit-image's own generator; ``glass_blur``: numba's).
Nothing here reimplements a corruption. The shims: :func:`corrupt_images` calls the library's
corruption functions the way ``imagecorruptions.corrupt`` does but fixes NaN output before the
uint8 cast (:func:`_fix_nan`, a ``spatter`` 0/0 bug), and :func:`_library` makes the fork's
scikit-image version check (``minor >= 19``) also pass on scikit-image 1.x.

Caveat on generated data: the library uses the ImageNet-C severity constants (tuned for
224 px images); the official CIFAR-10-C files were made with CIFAR-specific, mostly milder
constants. Accuracy on generated sets is therefore a CIFAR-10-C *style* OOD measure and is not
numerically comparable to published CIFAR-10-C numbers; use ``source='tfds'`` for those.

Determinism: image ``i`` is corrupted after seeding the global NumPy RNG with a value derived
from ``(seed, i)`` (and passing that value as ``seed`` to the corruptions that take one), so
the output is a pure function of ``(image, i, corruption, severity, seed)`` and the images of a
prefix of a dataset get the same corruption as in the full dataset. The global NumPy RNG state
is restored afterwards. (``glass_blur`` reseeds numba's separate internal RNG; that state is
not restored.)

Cost at 32x32 on one CPU core (ms per image, measured): 0.05-0.9 for most corruptions, 0.3-1.5
for ``glass_blur`` (plus ~2.5 s one-off numba compilation per process), 1.7 for ``zoom_blur``
and 5.7 for ``frost`` (reads and resizes a frost photo per image): about 12 s per 1,000 images
for all 15 at one severity, so the 15 x 5 sets of the 10,000 CIFAR-10 test images take about
10 minutes once; later calls read the cache.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import inspect
import io
import json
import logging
import os
import pathlib
import tempfile
import zipfile
import zlib
from collections.abc import Iterable

import numpy as np
import tqdm
from PIL import Image

from jaxrobust.data.sources import ArrayDataset, read_records
from jaxrobust.errors import ConfigError, DataError

log = logging.getLogger("jaxrobust")

CORRUPTIONS = (
    "gaussian_noise", "shot_noise", "impulse_noise",
    "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog",
    "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression",
)
"""The 15 benchmark corruptions of CIFAR-10-C / ImageNet-C, in the canonical order."""

EXTRA_CORRUPTIONS = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
"""The 4 extra (held-out "validation") corruptions."""

ALL_CORRUPTIONS = CORRUPTIONS + EXTRA_CORRUPTIONS
SEVERITIES = (1, 2, 3, 4, 5)
SOURCES = ("auto", "tfds", "generated")

ENV_CACHE_DIR = "JAXROBUST_CACHE_DIR"
LIBRARY = "imagecorruptions-imaug"
GENERATED_TAG = "c-generated/"
TFDS_NAME = "cifar10_corrupted"
CIFAR10_TEST_SIZE = 10_000
MIN_SIDE = 32  # the library rejects smaller images
INSTALL_HINT = "pip install 'jaxrobust[ood]'"
# Our (library) names -> TFDS cifar10_corrupted config names, where they differ.
_TFDS_NAMES = {"glass_blur": "frosted_glass_blur", "elastic_transform": "elastic"}
_PROGRESS_MIN_IMAGES = 256
_CACHE_FORMAT = 1  # bump when this module's output for the same inputs changes (e.g. a shim)


def _check_corruption(corruption, severity) -> None:
  if corruption not in ALL_CORRUPTIONS:
    raise ConfigError(
        f"unknown corruption {corruption!r}; use one of {', '.join(ALL_CORRUPTIONS)}")
  if (isinstance(severity, bool) or not isinstance(severity, (int, np.integer))
      or severity not in SEVERITIES):
    raise ConfigError(f"corruption severity must be one of {SEVERITIES}, got {severity!r}")


def _check_seed(seed) -> None:
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
    raise ConfigError(f"corruption seed must be a non-negative integer, got {seed!r}")


@functools.lru_cache(maxsize=None)
def _library():
  """Imports the corruption library (with the scikit-image 1.x shim)."""
  try:
    import imagecorruptions  # pylint: disable=g-import-not-at-top
    import imagecorruptions.corruptions  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise DataError(
        f"generating corrupted images needs the {LIBRARY} package ({e}); install it with "
        f"`{INSTALL_HINT}`, or use source='tfds' with the official CIFAR-10-C data") from e
  sk_version = getattr(imagecorruptions.corruptions, "SK_VERSION", None)
  if isinstance(sk_version, dict) and sk_version.get("major", 0) >= 1:
    # The fork tests `minor >= 19` to choose channel_axis= over the removed multichannel=.
    sk_version["minor"] = max(sk_version.get("minor", 0), 19)
  return imagecorruptions


@functools.lru_cache(maxsize=None)
def _takes_seed(corruption: str) -> bool:
  fn = _library().corruption_dict[corruption]
  return "seed" in inspect.signature(fn).parameters


def library_versions() -> dict[str, str]:
  """Versions of the corruption library and the packages its output depends on."""
  out = {}
  for dist in (LIBRARY, "scikit-image", "scipy", "opencv-python", "Pillow", "numba"):
    try:
      out[dist] = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
      out[dist] = "absent"
  return out


@contextlib.contextmanager
def _preserved_global_rng():
  """Restores the global ``np.random`` state on exit."""
  state = np.random.get_state()
  try:
    yield
  finally:
    np.random.set_state(state)


def _image_seed(seed: int, index: int) -> int:
  return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def _to_gray(rgb: np.ndarray) -> np.ndarray:
  """RGB uint8 ``[H, W, 3]`` -> ``[H, W, 1]`` with Pillow's ITU-R 601 luma ('L' mode)."""
  return np.asarray(Image.fromarray(rgb).convert("L"))[..., None]


def _fix_nan(res: np.ndarray, clean: np.ndarray) -> np.ndarray:
  """Shim for a library bug: NaN pixels become the clean pixels.

  ``spatter`` at severities 1-3 divides its liquid mask by the mask's maximum; when no liquid
  passes the threshold (about 1.5% of 32x32 images at severity 1) that is 0/0 and the whole
  image is NaN, which the library's uint8 cast turns into black. An empty mask means no
  spatter, i.e. the clean image, which is what this returns.
  """
  if res.dtype.kind != "f" or np.isfinite(res).all():
    return res
  return np.where(np.isfinite(res), res, clean.astype(res.dtype))


def corrupt_images(images: np.ndarray, corruption: str, severity: int, seed: int = 0, *,
                   progress: bool | None = None) -> np.ndarray:
  """Applies one common corruption to every image, deterministically.

  Args:
    images: uint8 ``[N, H, W, C]`` with ``C`` 1 (grayscale: corrupted as RGB, converted back
      with Pillow's luma) or 3, and ``H, W >= 32``.
    corruption: a name from :data:`CORRUPTIONS` or :data:`EXTRA_CORRUPTIONS`.
    severity: 1..5.
    seed: non-negative int; image ``i`` uses a seed derived from ``(seed, i)``.
    progress: show a tqdm bar; None shows one from 256 images on.

  Returns:
    uint8 ``[N, H, W, C]``, the same shape as ``images``. The global ``np.random`` state is
    unchanged.

  Raises:
    ConfigError: unknown corruption, severity outside 1..5, or a bad seed.
    DataError: images that are not uint8 ``[N, H, W, 1|3]`` with sides >= 32, or the
      corruption library is not installed.
  """
  _check_corruption(corruption, severity)
  _check_seed(seed)
  images = np.asarray(images)
  if images.ndim != 4 or images.dtype != np.uint8:
    raise DataError(f"images to corrupt must be uint8 [N, H, W, C], got {images.dtype} "
                    f"{images.shape}; convert them with np.asarray(x, np.uint8)")
  n, h, w, c = images.shape
  if c not in (1, 3):
    raise DataError(f"images to corrupt must have 1 or 3 channels, got {c} (shape "
                    f"{images.shape}); drop the extra channels first")
  if h < MIN_SIDE or w < MIN_SIDE:
    raise DataError(
        f"the corruption library needs images of at least {MIN_SIDE}x{MIN_SIDE} pixels, got "
        f"{h}x{w}; pad or resize them first (e.g. MNIST: np.pad(images, ((0, 0), (2, 2), "
        f"(2, 2), (0, 0))))")
  fn = _library().corruption_dict[corruption]
  seeded = _takes_seed(corruption)
  out = np.empty_like(images)
  show = n >= _PROGRESS_MIN_IMAGES if progress is None else progress
  with _preserved_global_rng():
    for i in tqdm.tqdm(range(n), desc=f"{corruption}_{severity}", disable=not show,
                       leave=False, unit="img"):
      s = _image_seed(seed, i)
      np.random.seed(s)
      kwargs = {"seed": s} if seeded else {}
      rgb = np.ascontiguousarray(images[i] if c == 3 else np.repeat(images[i], 3, axis=-1))
      # What imagecorruptions.corrupt() does after its checks, minus the final np.uint8 cast,
      # so that NaNs can be fixed first (see _fix_nan).
      with np.errstate(invalid="ignore", divide="ignore"):
        res = np.asarray(fn(Image.fromarray(rgb), int(severity), **kwargs))
      res = np.uint8(_fix_nan(res, rgb))
      if res.shape != (h, w, 3):
        raise DataError(f"{LIBRARY} returned shape {res.shape} for a {(h, w, 3)} image with "
                        f"{corruption}; report this with the library versions "
                        f"{library_versions()}")
      out[i] = res if c == 3 else _to_gray(res)
  return out


def default_cache_dir() -> pathlib.Path:
  """``$JAXROBUST_CACHE_DIR/corruptions`` if set, else ``~/.cache/jaxrobust/corruptions``."""
  root = os.environ.get(ENV_CACHE_DIR)
  base = pathlib.Path(root) if root else pathlib.Path.home() / ".cache" / "jaxrobust"
  return base / "corruptions"


def _cache_key(images: np.ndarray, corruption: str, severity: int, seed: int) -> str:
  h = hashlib.sha256()
  meta = {"shape": list(images.shape), "dtype": str(images.dtype), "corruption": corruption,
          "severity": int(severity), "seed": int(seed), "versions": library_versions(),
          "format": _CACHE_FORMAT}
  h.update(json.dumps(meta, sort_keys=True).encode())
  h.update(np.ascontiguousarray(images).data)
  return h.hexdigest()


def _read_cache(path: pathlib.Path, shape: tuple[int, ...]) -> np.ndarray | None:
  if not path.is_file():
    return None
  try:
    with np.load(path) as f:
      images = np.asarray(f["images"])
  except (KeyError, ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
    log.warning("ignoring unreadable corruption cache %s (%s); regenerating", path, e)
    return None
  if images.shape != shape or images.dtype != np.uint8:
    log.warning("ignoring corruption cache %s with %s %s (expected uint8 %s); regenerating",
                path, images.dtype, images.shape, shape)
    return None
  return images


def _write_cache(path: pathlib.Path, images: np.ndarray) -> None:
  """Writes ``images`` to ``path`` atomically (temp file in the same folder + os.replace)."""
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      buf = io.BytesIO()
      np.savez(buf, images=images)
      f.write(buf.getbuffer())
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(OSError):
      os.unlink(tmp)
    raise


def _generated(base: ArrayDataset, corruption: str, severity: int, seed: int,
               cache_dir: str | os.PathLike | None, dataset_name: str,
               progress: bool | None) -> ArrayDataset:
  folder = pathlib.Path(cache_dir) if cache_dir is not None else default_cache_dir()
  try:
    folder.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise DataError(
        f"cannot create the corruption cache folder {folder} ({e}); pass cache_dir= or set "
        f"{ENV_CACHE_DIR} to a writable folder") from e
  key = _cache_key(base.images, corruption, severity, seed)
  path = folder / f"{dataset_name}-{corruption}_{severity}-seed{seed}-{key[:20]}.npz"
  images = _read_cache(path, base.images.shape)
  if images is None:
    images = corrupt_images(base.images, corruption, severity, seed, progress=progress)
    try:
      _write_cache(path, images)
    except OSError as e:
      log.warning("could not write the corruption cache %s (%s); the next call will "
                  "regenerate it", path, e)
  return ArrayDataset(images, base.labels.copy(), np.zeros(len(base), bool),
                      f"{dataset_name}{GENERATED_TAG}{corruption}_{severity}")


def tfds_config_name(corruption: str, severity: int) -> str:
  """The TFDS ``cifar10_corrupted`` config, e.g. ``'frosted_glass_blur_3'``."""
  _check_corruption(corruption, severity)
  return f"{_TFDS_NAMES.get(corruption, corruption)}_{int(severity)}"


def _from_tfds(base: ArrayDataset, corruption: str, severity: int,
               tfds_data_dir: str | os.PathLike | None) -> ArrayDataset:
  name = f"{TFDS_NAME}/{tfds_config_name(corruption, severity)}"
  if base.image_shape != (32, 32, 3) or len(base) > CIFAR10_TEST_SIZE:
    raise DataError(
        f"{name} holds {CIFAR10_TEST_SIZE} CIFAR-10 test images of 32x32x3; the base set has "
        f"{len(base)} images of {base.image_shape}. Use source='generated' for other data")
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    builder = tfds.builder(name, data_dir=tfds_data_dir, try_gcs=False)
    if not builder.is_prepared():
      raise FileNotFoundError(f"not prepared in {builder.data_dir}")
    src = tfds.data_source(name, split="test", data_dir=tfds_data_dir, download=False,
                           try_gcs=False)
    n = len(base)
    if len(src) < n:
      raise ValueError(f"it has {len(src)} images, fewer than the {n} asked for")
    images, labels = read_records(src, n)
  except Exception as e:  # tfds raises many different types offline.
    raise DataError(
        f"TFDS could not provide the official CIFAR-10-C set {name} ({type(e).__name__}: "
        f"{e}). Prepare it where it can be downloaded with `tfds build {TFDS_NAME} "
        f"--file_format=array_record` and pass tfds_data_dir= (or set TFDS_DATA_DIR), or use "
        f"source='generated'") from e
  return ArrayDataset(images, labels, np.ones(n, bool), name)


def load_corrupted(base: ArrayDataset, corruption: str, severity: int, *, source: str = "auto",
                   cache_dir: str | os.PathLike | None = None, seed: int = 0,
                   dataset_name: str = "cifar10",
                   tfds_data_dir: str | os.PathLike | None = None,
                   progress: bool | None = None) -> ArrayDataset:
  """Returns the corrupted version of ``base`` (an OOD test set).

  Always evaluate with the returned dataset's own ``labels``: they equal ``base.labels`` for
  generated data but come from TFDS for the official files.

  Args:
    base: the clean test set, uint8 ``[N, H, W, C]``.
    corruption: a name from :data:`CORRUPTIONS` or :data:`EXTRA_CORRUPTIONS`.
    severity: 1..5.
    source: ``'tfds'``: the official CIFAR-10-C images, the first ``len(base)`` records of
      TFDS ``cifar10_corrupted/<config>`` (test split) in TFDS's stored order with TFDS's
      labels; that order is a fixed shuffle of the official test order, so for
      ``len(base) < 10000`` they are NOT the corrupted versions of ``base``'s images; only the
      count and image shape of ``base`` are used. Never downloads. ``'generated'``:
      :func:`corrupt_images` on ``base.images`` (same labels and order as ``base``), cached.
      ``'auto'``: ``'tfds'`` when ``dataset_name == 'cifar10'``, ``base`` is the full
      10,000-image 32x32x3 test set and TFDS has the data prepared; else ``'generated'``.
    cache_dir: folder of the generated ``.npz`` cache; None for :func:`default_cache_dir`.
      Files are keyed by a hash of ``base.images``, corruption, severity, seed and the
      library versions, and written atomically.
    seed: corruption seed for generated data (see :func:`corrupt_images`).
    dataset_name: the base dataset's name, used in the result's name and cache file name.
    tfds_data_dir: TFDS data dir; None for TFDS's default (``$TFDS_DATA_DIR`` or
      ``~/tensorflow_datasets``).
    progress: tqdm bar while generating; None shows one from 256 images on.

  Returns:
    An :class:`ArrayDataset` named ``'cifar10_corrupted/<tfds config>'`` (official files,
    ``exact`` all True) or ``'<dataset_name>c-generated/<corruption>_<severity>'`` (generated,
    ``exact`` all False).

  Raises:
    ConfigError: unknown corruption/source, severity outside 1..5, bad seed, or
      ``source='tfds'`` for a dataset other than CIFAR-10.
    DataError: TFDS data not available (source='tfds'), base images unsuitable, corruption
      library missing, or the cache folder cannot be created.
  """
  _check_corruption(corruption, severity)
  _check_seed(seed)
  severity = int(severity)
  if source not in SOURCES:
    raise ConfigError(f"unknown corruption source {source!r}; use one of {', '.join(SOURCES)}")
  if not isinstance(base, ArrayDataset):
    raise DataError(f"base must be an ArrayDataset, got {type(base).__name__}; load it with "
                    f"jaxrobust.data.load_split")
  if source == "tfds" and dataset_name != "cifar10":
    raise ConfigError(f"TFDS has official corrupted files only for cifar10, not "
                      f"{dataset_name!r}; use source='generated'")
  if source == "tfds":
    return _from_tfds(base, corruption, severity, tfds_data_dir)
  if (source == "auto" and dataset_name == "cifar10" and len(base) == CIFAR10_TEST_SIZE
      and base.image_shape == (32, 32, 3)):
    try:
      return _from_tfds(base, corruption, severity, tfds_data_dir)
    except DataError as e:
      log.info("official CIFAR-10-C not available, generating %s_%d instead: %s",
               corruption, severity, e)
  return _generated(base, corruption, severity, seed, cache_dir, dataset_name, progress)


def corruption_suite(base: ArrayDataset, corruptions: Iterable[str] = CORRUPTIONS,
                     severities: Iterable[int] = SEVERITIES, **kwargs
                     ) -> dict[str, ArrayDataset]:
  """:func:`load_corrupted` for every corruption x severity, keyed ``'<name>_<severity>'``.

  Args:
    base: the clean test set.
    corruptions: corruption names (default: the 15 benchmark ones).
    severities: severities in 1..5.
    **kwargs: forwarded to :func:`load_corrupted` (``source``, ``cache_dir``, ``seed``, ...).

  Raises:
    ConfigError: an unknown name or bad severity, before anything is generated.
  """
  corruptions, severities = tuple(corruptions), tuple(severities)
  if not corruptions or not severities:
    raise ConfigError("corruption_suite needs at least one corruption and one severity")
  for c in corruptions:
    for s in severities:
      _check_corruption(c, s)
  return {f"{c}_{int(s)}": load_corrupted(base, c, s, **kwargs)
          for c in corruptions for s in severities}


def is_generated(ds: ArrayDataset | str) -> bool:
  """True for a set made by :func:`corrupt_images` (not the official CIFAR-10-C files)."""
  name = ds if isinstance(ds, str) else ds.name
  return GENERATED_TAG in name

