"""Every config file builds, validates, and its small variant trains on real data."""
import json
import pathlib

import jax
import numpy as np
import pytest

from jaxrobust.errors import ConfigError
from jaxrobust.methods import num_teachers
from jaxrobust.train import train_and_evaluate, validate_config

from .helpers import REPO, load_config

# Training configs; cifar10_rift.py configures python -m jaxrobust.rift (tests/rift).
CONFIGS = sorted(p.stem for p in (REPO / "configs").glob("*.py")
                 if p.stem not in ("__init__", "cifar10_rift"))


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("arg", [None, "local", "smoke"])
def test_config_validates(name, arg):
  config = load_config(name, arg)
  if arg is None and config.model.get("scratch") is False:
    # A published setting that starts from pretrained weights needs their path (or
    # scratch=True): one ConfigError naming both, then it validates.
    with pytest.raises(ConfigError, match="init_from_pretrained"):
      validate_config(config)
    config.model.scratch = True
  validate_config(config)


@pytest.fixture(scope="module")
def teacher_workdir(tmp_path_factory, data_dir):
  """A tiny teacher for the distillation configs: ``cifar10_pgd_at.py:smoke``, trained here."""
  del data_dir
  workdir = tmp_path_factory.mktemp("teacher")
  train_and_evaluate(load_config("cifar10_pgd_at", "smoke"), str(workdir))
  return str(workdir)


# The generalisation tricks' configs (PGD-AT with EMA / SWA, RegMixup, rotation SSL, RST, UAT)
# reuse the training paths above; to keep the suite short only robust self-training's smoke runs,
# end to end with its pseudo-labelling teacher (tests/train/test_semisup.py).
GENERALISATION = ("cifar10_ema", "cifar10_swa", "cifar10_regmixup", "cifar10_rotation_ssl",
                  "cifar10_rst", "cifar10_uat")


@pytest.mark.slow
def _bundled(name):
  """Whether the config's :smoke variant trains on the bundled .npz data (nothing to download)."""
  return load_config(name, "smoke").data.source == "numpy"


# Configs on TFDS-only data (Imagenette, ImageNet) need a prepared dataset; tests never
# download, so their absence is tested as one DataError (test_vit_recipe_configs.py).
@pytest.mark.parametrize("name", [c for c in CONFIGS if c not in GENERALISATION and _bundled(c)])
def test_smoke_variant_trains_on_real_data(name, tmp_path, data_dir, request):
  del data_dir
  config = load_config(name, "smoke")
  n = num_teachers(config.method)
  if n:
    config.method.teacher_workdir = request.getfixturevalue("teacher_workdir")
  report = train_and_evaluate(config, str(tmp_path))
  assert report["last"]["step"] == config.train.num_steps
  assert 0.0 <= report["last"]["robust"] <= 1.0 and report["last"]["count"] == 100
  saved = json.loads(pathlib.Path(tmp_path, "report.json").read_text())
  assert saved["last"]["clean"] == report["last"]["clean"]
  lines = pathlib.Path(tmp_path, "logs", "metrics.jsonl").read_text().splitlines()
  assert any("val/robust" in ln for ln in lines) and any("train/loss" in ln for ln in lines)
  assert list(pathlib.Path(tmp_path, "logs").glob("events.out.tfevents.*"))


@pytest.mark.slow
def test_teachers_load_from_workdirs_with_an_optional_bf16_forward(teacher_workdir):
  from jaxrobust import parallel  # pylint: disable=g-import-not-at-top
  from jaxrobust.errors import ConfigError  # pylint: disable=g-import-not-at-top
  from jaxrobust.train.loop import load_teachers  # pylint: disable=g-import-not-at-top
  mesh = parallel.make_mesh(1)
  config = load_config("cifar10_iad", "smoke,iad2")
  with pytest.raises(ConfigError, match="teacher_workdir"):
    load_teachers(config, mesh)
  config.method.teacher_workdir = teacher_workdir
  config.method.teacher2_workdir = teacher_workdir
  fns, frozen = load_teachers(config, mesh)
  assert len(fns) == 2 and set(frozen) == {"params", "batch_stats", "natural"}
  x = np.random.default_rng(0).random((4, 32, 32, 3)).astype(np.float32)
  want = fns[0].apply(frozen["params"], frozen["batch_stats"], x, train=False)[0]
  config.method.teacher_dtype = "bfloat16"
  fns16, frozen16 = load_teachers(config, mesh)
  got = fns16[0].apply(frozen16["params"], frozen16["batch_stats"], x, train=False)[0]
  assert got.dtype == np.float32
  np.testing.assert_allclose(got, want, rtol=0.1, atol=0.05)
  assert not np.array_equal(np.asarray(got), np.asarray(want))  # really ran in bf16
  for a, b in zip(jax.tree.leaves(frozen), jax.tree.leaves(frozen16)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_trades_teacher_variant_is_the_local_run_wider_and_longer():
  """``cifar10_trades.py:teacher``: the :local TRADES objective, 2x the widths, 3x the epochs."""
  local, teacher = load_config("cifar10_trades", "local"), load_config("cifar10_trades", "teacher")
  validate_config(teacher)
  assert teacher.model.name == local.model.name == "simple_cnn"
  assert tuple(teacher.model.kwargs["widths"]) == (64, 128, 256)
  assert teacher.train.num_epochs == 3 * local.train.num_epochs == 15
  assert teacher.method.to_dict() == local.method.to_dict()
  assert load_config("cifar10_trades", "local,teacher").to_dict() == teacher.to_dict()
