"""Every bad input and fault: one ``error:`` line, a non-zero exit, saved work intact.

Runs the real command lines (``python -m jaxrobust.train`` / ``.evaluate`` /
``.rift``) in subprocesses on tiny synthetic CIFAR-10-shaped data, against one
small training run made once per module (each case works on its own copy).
Each case asserts: exit status 2, no traceback, the last stderr line starts
with ``error:`` and names the cause, and every file of the copied run (and of
the data) is byte-identical afterwards (a damaged checkpoint is refused, never
deleted or rewritten).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SMOKE = str(REPO / "configs" / "cifar10_pgd_at.py") + ":smoke"
RIFT_SMOKE = str(REPO / "configs" / "cifar10_rift.py") + ":smoke"
N_TRAIN, N_TEST = 400, 100  # smoke: 256 train + 100 validation, test[:100]

pytestmark = pytest.mark.slow


def _write_data(root: pathlib.Path) -> None:
  rng = np.random.default_rng(0)
  for split, n in (("train", N_TRAIN), ("test", N_TEST)):
    np.savez(root / f"cifar10_{split}.npz",
             images=rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
             labels=np.arange(n) % 10)


def _run(module: str, args, data_dir) -> subprocess.CompletedProcess:
  """``python -m jaxrobust.<module> args`` on one CPU device (fast start) with this checkout."""
  env = dict(os.environ, JAXROBUST_DATA_DIR=str(data_dir),
             PYTHONPATH=os.pathsep.join([str(REPO)] + [p for p in [
                 os.environ.get("PYTHONPATH")] if p]),
             XLA_FLAGS=re.sub(r"--xla_force_host_platform_device_count=\d+", "",
                              os.environ.get("XLA_FLAGS", "")))
  return subprocess.run([sys.executable, "-m", f"jaxrobust.{module}", *map(str, args)],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def _file_digests(root: pathlib.Path) -> dict[str, str]:
  """``{relative path: sha256}`` of every file under ``root``."""
  return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(root.rglob("*")) if p.is_file()}


@dataclasses.dataclass
class World:
  data: pathlib.Path  # good tiny data
  run: pathlib.Path  # a finished smoke run: latest/{2,4}, best/4


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
  root = tmp_path_factory.mktemp("bad_inputs")
  data = root / "data"
  data.mkdir()
  _write_data(data)
  run = root / "run"
  out = _run("train", ["--config", SMOKE, "--workdir", run,
                       "--config.train.checkpoint_every_steps=2"], data)
  assert out.returncode == 0, out.stderr[-3000:]
  return World(data, run)


class Case:
  """One case's sandbox: a copy of the run, the data dir, extra expectations."""

  def __init__(self, world: World, tmp: pathlib.Path):
    self.tmp = tmp
    self.run = tmp / "run"
    shutil.copytree(world.run, self.run)
    self.data = world.data
    self.expect: list[str] = []
    self.after = None  # optional check on the CompletedProcess

  def step_dir(self, which: str) -> pathlib.Path:
    """The newest ``checkpoints/<which>/<step>`` of the copied run."""
    steps = [p for p in (self.run / "checkpoints" / which).iterdir() if p.name.isdigit()]
    return max(steps, key=lambda p: int(p.name))

  def bad_data(self, split: str, **arrays) -> None:
    """Uses a copy of the data whose ``split`` file has ``arrays`` replaced."""
    if self.data != self.tmp / "data":
      shutil.copytree(self.data, self.tmp / "data")
      self.data = self.tmp / "data"
    path = self.data / f"cifar10_{split}.npz"
    with np.load(path) as f:
      saved = dict(f)
    saved.update(arrays)
    np.savez(path, **saved)


def _array_files(step_dir: pathlib.Path) -> list[pathlib.Path]:
  """The array-data files of a checkpoint (Orbax OCDBT layout)."""
  return [p for p in (step_dir / "state").rglob("*") if p.is_file() and "/d/" in str(p)]


def _raw_manager(which_dir: pathlib.Path):
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  return ocp.CheckpointManager(str(which_dir), item_names=("state", "meta"),
                               options=ocp.CheckpointManagerOptions(
                                   create=True, enable_async_checkpointing=False))


def _raw_restore(step_dir: pathlib.Path) -> tuple[dict, dict]:
  """``(state, meta)`` of a checkpoint as saved, without the library (no checks)."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  mgr = _raw_manager(step_dir.parent)
  r = mgr.restore(int(step_dir.name), args=ocp.args.Composite(
      state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()))
  mgr.close()
  return r["state"], dict(r["meta"])


def _damage(step_dir: pathlib.Path) -> None:
  """Overwrites up to 4 KiB in the middle of every array file, keeping their sizes.

  A disk or copy fault: the bytes still decompress or fail to; either way the
  checkpoint must be refused. Every file is hit because which file holds which
  array varies between runs, and a restore may read only some of them.
  """
  for path in _array_files(step_dir):
    raw = bytearray(path.read_bytes())
    start = max(0, len(raw) // 2 - 2048)
    stop = min(len(raw), start + 4096)
    raw[start:stop] = bytes((b * 7 + 13) % 256 for b in raw[start:stop])
    path.write_bytes(bytes(raw))


def _alter_values(c: Case, step_dir: pathlib.Path) -> None:
  """Rewrites ``step_dir``'s arrays with one kernel changed but the saved digests kept.

  The files parse and decode; only the content differs from what was saved
  (as after a silent bit flip), which only the digests can tell.
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  state, meta = _raw_restore(step_dir)
  leaves, treedef = jax.tree.flatten(state)
  big = max(range(len(leaves)), key=lambda k: leaves[k].size)
  kernel = np.array(leaves[big])
  kernel.reshape(-1)[: kernel.size // 4] *= -0.5  # finite, plausible, wrong
  leaves[big] = kernel
  alt = c.tmp / "altered"
  mgr = _raw_manager(alt)
  mgr.save(int(step_dir.name), args=ocp.args.Composite(
      state=ocp.args.StandardSave(jax.tree.unflatten(treedef, leaves)),
      meta=ocp.args.JsonSave(meta)), force=True)
  mgr.close()
  shutil.rmtree(step_dir)
  shutil.copytree(alt / step_dir.name, step_dir)


def _save_old_format_nonfinite(run: pathlib.Path, src_step: int, new_step: int) -> None:
  """Writes ``latest/<new_step>`` as an older jaxrobust did (no digests), holding inf."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  state, meta = _raw_restore(run / "checkpoints" / "latest" / str(src_step))
  meta.pop("integrity")
  mgr = _raw_manager(run / "checkpoints" / "latest")
  state["params"] = jax.tree.map(lambda a: np.full(a.shape, np.inf, a.dtype), state["params"])
  mgr.save(new_step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                             meta=ocp.args.JsonSave(meta)), force=True)
  mgr.close()


CASES = []


def case(*expect):
  """Registers ``fn(c: Case) -> (module, args)``; ``expect``: substrings of the error line."""
  def deco(fn):
    CASES.append(pytest.param(fn, expect, id=fn.__name__))
    return fn
  return deco


def _eval(c, *args):
  return "evaluate", ["--workdir", c.run, "--attacks", "clean", "--n-examples", "40", *args]


def _train(c, *args, workdir=None):
  return "train", ["--config", SMOKE, "--workdir", workdir or c.run, *args]


# --- evaluation: checkpoints -----------------------------------------------------------


@case("is damaged", "refusing to use it", "--which latest")
def damaged_best_checkpoint(c):
  d = c.step_dir("best")
  _damage(d)
  c.expect.append(str(d))
  return _eval(c)


@case("is damaged", "differs from the SHA-256 digest recorded when it was saved",
      "refusing to use it")
def checkpoint_values_changed_after_saving(c):
  d = c.step_dir("best")
  _alter_values(c, d)
  c.expect.append(str(d))
  return _eval(c)


@case("is damaged", "NaN/inf", "--which best")
def nonfinite_checkpoint_from_older_version(c):
  _save_old_format_nonfinite(c.run, int(c.step_dir("latest").name), 6)
  c.expect.append(str(c.run / "checkpoints" / "latest" / "6"))
  return _eval(c, "--which", "latest")


@case("is damaged", "unreadable or corrupt")
def corrupt_checkpoint_metadata(c):
  d = c.step_dir("best")
  (d / "meta" / "metadata").write_text('{"data": {"epoch": 0, "ind')
  c.expect.append(str(d))
  return _eval(c)


@case("is damaged")
def truncated_array_file(c):
  # Every data file is cut: which file holds which array varies between runs,
  # and evaluation restores only the model's arrays.
  d = c.step_dir("best")
  for path in _array_files(d):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
  c.expect.append(str(d))
  return _eval(c)


@case("config.json is not valid JSON", "restore it")
def corrupt_saved_config(c):
  (c.run / "config.json").write_text('{"model": {"name": ')
  return _eval(c)


@case("no checkpoint", "best/99", "saved best steps are")
def missing_checkpoint_step(c):
  return _eval(c, "--checkpoint", c.run / "checkpoints" / "best" / "99")


@case("config.json not found", "--workdir must be a directory written by")
def missing_workdir(c):
  return "evaluate", ["--workdir", c.tmp / "nope", "--attacks", "clean"]


# --- evaluation: data ------------------------------------------------------------------


@case("labels must be in 0..9", "got 5..14")
def eval_labels_shifted_by_5(c):
  c.bad_data("test", labels=np.arange(N_TEST) % 10 + 5)
  return _eval(c)


@case("cifar10 images must be 32x32x3", "got 28x28x1")
def eval_images_of_the_wrong_shape(c):
  c.bad_data("test", images=np.zeros((N_TEST, 28, 28, 1), np.uint8))
  return _eval(c)


@case("images must be uint8", "float32")
def eval_images_as_floats(c):
  c.bad_data("test", images=np.zeros((N_TEST, 32, 32, 3), np.float32))
  return _eval(c)


@case("labels must be integer class indices", "float64")
def eval_labels_as_floats(c):
  c.bad_data("test", labels=np.arange(N_TEST) % 10 + 0.5)
  return _eval(c)


# --- evaluation: flags -----------------------------------------------------------------


@case("--n_examples must be >= 1", "got 0")
def n_examples_zero(c):
  return _eval(c, "--n-examples", "0")


@case("--n_examples must be >= 1", "got -5")
def n_examples_negative(c):
  return _eval(c, "--n-examples=-5")


@case("unknown evaluation 'nonsense'", "pgd20", "aa-standard", "aa-plus", "aa-rand", "aa-custom")
def unknown_attack_name(c):
  return "evaluate", ["--workdir", c.run, "--attacks", "clean,nonsense"]


@case("--eps must be > 0")
def negative_eps(c):
  return _eval(c, "--eps=-0.1")


@case("--curve_eps takes numbers", "'abc'")
def curve_eps_not_a_number(c):
  return _eval(c, "--curve_eps", "0,abc")


@case("/proc/x", "cannot be created")
def unwritable_report_path(c):
  return _eval(c, "--out", "/proc/x/report.json")


@case("Unknown command line flag 'n_exampels'")
def misspelt_flag(c):
  return _eval(c, "--n_exampels", "3")


# --- training --------------------------------------------------------------------------


@case("unknown config key 'train.nope'")
def unknown_config_key(c):
  return _train(c, "--config.train.nope=1")


@case("could not convert string to float")
def config_value_of_the_wrong_type(c):
  return _train(c, "--config.train.lr=abc")


@case("eps must be > 0")
def negative_attack_eps(c):
  return _train(c, "--config.method.attack.eps=-1")


@case("outside the [0, 1] pixel scale", "8/255")
def eps_in_255_units(c):
  return _train(c, "--config.method.attack.eps=8")


@case("dataset file not found", "/nonexistent", "JAXROBUST_DATA_DIR")
def missing_data(c):
  return _train(c, "--config.data.data_dir=/nonexistent")


@case("is not a valid dataset archive", "cifar10_train.npz")
def truncated_training_data(c):
  c.bad_data("train")
  path = c.data / "cifar10_train.npz"
  path.write_bytes(path.read_bytes()[:5000])
  return _train(c)


@case("labels must be in 0..9", "got 0..15")
def training_labels_beyond_the_classes(c):
  c.bad_data("train", labels=np.arange(N_TRAIN) % 16)
  return _train(c)


@case("cifar10 images must be 32x32x3", "got 28x28x1")
def training_images_of_the_wrong_shape(c):
  c.bad_data("train", images=np.zeros((N_TRAIN, 28, 28, 1), np.uint8))
  return _train(c)


@case("unknown config argument 'locl'")
def unknown_config_variant(c):
  return "train", ["--config", SMOKE.replace(":smoke", ":locl"), "--workdir", c.run]


@case("could not load the --config file", "No such file or directory", "nope.py")
def missing_config_file(c):
  return "train", ["--config", REPO / "configs" / "nope.py", "--workdir", c.run]


@case("could not load the --config file", "nope.py")
def missing_config_file_with_override(c):
  return "train", ["--config", REPO / "configs" / "nope.py", "--workdir", c.run,
                   "--config.train.lr=0.1"]


@case("the --config file failed to load", "ZeroDivisionError", "broken.py:2")
def config_file_that_raises(c):
  path = c.tmp / "broken.py"
  path.write_text("def get_config(arg=None):\n  return 1 / 0\n")
  return "train", ["--config", path, "--workdir", c.run]


@case("--workdir=DIR are required")
def missing_workdir_flag(c):
  del c
  return "train", ["--config", SMOKE]


@case("--workdir /proc/x cannot be created")
def impossible_workdir(c):
  return _train(c, workdir="/proc/x")


@case("cannot be created", "File exists")
def workdir_is_a_file(c):
  path = c.tmp / "a_file"
  path.write_text("not a directory")
  return _train(c, workdir=path)


@case("does not match this run", "use the original config or a fresh --workdir")
def resume_with_another_model(c):
  return _train(c, "--config.model.name=simple_cnn")


def _check_nan_run(out, workdir: pathlib.Path):
  """The named 'last good checkpoint' exists, is finite and passes its digests."""
  from jaxrobust.train.restore import load_trained  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  m = re.search(r"last good checkpoint \(step (\d+), finite\)", out.stderr)
  if m is None:  # diverged before the first save: nothing may have been saved.
    assert "no checkpoint was saved" in out.stderr
    assert not list((workdir / "checkpoints" / "latest").glob("[0-9]*"))
    return
  steps = sorted(int(p.name) for p in (workdir / "checkpoints" / "latest").iterdir()
                 if p.name.isdigit())
  assert steps and steps[-1] == int(m.group(1))
  for step in steps:  # load_trained refuses NaN/inf and digest mismatches
    t = load_trained(str(workdir), "latest", step)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(t.params))


@case("NaN/inf", "lower config.train.lr", "was not saved")
def exploding_learning_rate(c):
  workdir = c.tmp / "nan"
  c.after = lambda out: _check_nan_run(out, workdir)
  return _train(c, "--config.train.lr=1e6", "--config.train.checkpoint_every_steps=1",
                workdir=workdir)


# --- RiFT ------------------------------------------------------------------------------


@case("is damaged", "refusing to use it")
def rift_from_a_damaged_run(c):
  _damage(c.step_dir("best"))
  return "rift", ["--config", RIFT_SMOKE, "--workdir", c.tmp / "rift",
                  f"--config.at_workdir={c.run}"]


@case("could not load the --config file")
def rift_missing_config_file(c):
  return "rift", ["--config", REPO / "configs" / "nope.py", "--workdir", c.tmp / "rift"]


@pytest.mark.parametrize("setup,expect", CASES)
def test_bad_input_gives_one_error_line(world, tmp_path, setup, expect):
  c = Case(world, tmp_path)
  module, args = setup(c)
  before = _file_digests(c.run), _file_digests(c.data)
  out = _run(module, args, c.data)
  lines = out.stderr.strip().splitlines()
  assert out.returncode == 2, out.stderr[-3000:]
  assert "Traceback" not in out.stderr, out.stderr[-3000:]
  assert lines and lines[-1].startswith("error: "), out.stderr[-3000:]
  assert out.stderr.count("error: ") == 1, out.stderr[-3000:]
  for s in list(expect) + c.expect:
    assert s in lines[-1], f"{s!r} not in {lines[-1]!r}"
  assert (_file_digests(c.run), _file_digests(c.data)) == before  # nothing lost or altered
  if c.after is not None:
    c.after(out)


def test_enough_cases():
  assert len(CASES) >= 20


def test_world_run_is_intact_and_evaluates(world, tmp_path):
  """The shared run itself is sound: its checkpoints carry digests and evaluate."""
  meta = json.loads((max((world.run / "checkpoints" / "best").iterdir(),
                         key=lambda p: p.name) / "meta" / "metadata").read_text())
  assert meta["integrity"]["algorithm"] == "sha256" and meta["integrity"]["arrays"]
  out = _run("evaluate", ["--workdir", world.run, "--attacks", "clean", "--n-examples", "40",
                          "--out", tmp_path / "r.json"], world.data)
  assert out.returncode == 0, out.stderr[-3000:]
  assert 0.0 <= json.loads((tmp_path / "r.json").read_text())["accuracy"]["clean"] <= 1.0
