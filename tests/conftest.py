"""Test setup: 8 fake CPU devices (multi-device code paths), fast compilation."""
import os
import pathlib

os.environ.setdefault("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in os.environ["XLA_FLAGS"]:
  os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=8"

import jax  # noqa: E402  pylint: disable=g-import-not-at-top
import pytest  # noqa: E402  pylint: disable=g-import-not-at-top

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
