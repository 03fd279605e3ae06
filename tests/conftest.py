"""Test setup: 8 fake CPU devices (multi-device code paths), fast compilation, and one
persistent compilation cache shared by a test session's processes and their CLI subprocesses."""
import atexit
import os
import pathlib
import shutil
import tempfile

os.environ.setdefault("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in os.environ["XLA_FLAGS"]:
  os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=8"

# The CLI subprocesses the tests start (python -m jaxrobust.train / evaluate / ...) share one
# compilation cache per test session, so a program compiled by one is loaded by the next;
# never the user's own cache (~/.cache/jaxrobust/xla). The process that creates the directory
# exports it: pytest-xdist workers inherit it from the controller (or, started otherwise,
# share one keyed on the run's PYTEST_XDIST_TESTRUNUID). A user's explicit setting (a path or
# 'off') is kept.
_CACHE_ENV = "JAXROBUST_COMPILATION_CACHE"
if _CACHE_ENV not in os.environ:
  _run_id = os.environ.get("PYTEST_XDIST_TESTRUNUID")
  if _run_id:
    _cache = os.path.join(tempfile.gettempdir(), f"jaxrobust-test-xla-{_run_id}")
    os.makedirs(_cache, exist_ok=True)
  else:
    _cache = tempfile.mkdtemp(prefix="jaxrobust-test-xla-")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
  os.environ[_CACHE_ENV] = _cache
# Every program is stored, not only those compiling in >= 0.5 s (the CLIs' default): the tests
# start the same small CLI runs dozens of times, and their many small programs (data
# transforms, metrics, restore) add up to ~1/3 of a warm smoke run's CPU time.
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

# TFDS's default folder (~/tensorflow_datasets) is never written by the tests: a test that
# reaches TFDS without its own data_dir works in a per-session temporary folder instead.
if "TFDS_DATA_DIR" not in os.environ:
  os.environ["TFDS_DATA_DIR"] = tempfile.mkdtemp(prefix="jaxrobust-test-tfds-")
  atexit.register(shutil.rmtree, os.environ["TFDS_DATA_DIR"], ignore_errors=True)

import jax  # noqa: E402  pylint: disable=g-import-not-at-top
import pytest  # noqa: E402  pylint: disable=g-import-not-at-top

from jaxrobust.cli import apply_compilation_cache  # noqa: E402  pylint: disable=g-import-not-at-top

# The test processes use the same cache as their CLI subprocesses: an in-process test that
# builds a program another test (or a CLI run) already compiled (the smoke training step,
# the MRC sweep, an attack) loads it from disk. A cached program is the compiled program:
# results are bit-identical.
apply_compilation_cache()

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_root() -> pathlib.Path:
  return REPO


@pytest.fixture(scope="session")
def data_dir() -> pathlib.Path:
  """The bundled real data; tests that need it skip when it is absent."""
  from jaxrobust.data import default_data_dir  # pylint: disable=g-import-not-at-top
  d = default_data_dir()
  if not (d / "cifar10_train.npz").is_file():
    pytest.skip(f"bundled data not found in {d} (set JAXROBUST_DATA_DIR)")
  return d


def pytest_report_header(config):
  del config
  return f"jax {jax.__version__}, devices: {jax.device_count()} x {jax.devices()[0].platform}"
