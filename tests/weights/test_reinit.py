"""Layer re-initialisation: the chosen parameters equal a fresh init of the same seed, the
others are bit-identical; the CLI writes a run that loads like a trained one."""
import json
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxrobust.errors import ConfigError
from jaxrobust.train.builders import build_model
from jaxrobust.train.defaults import default_config
from jaxrobust.train.state import split_model
from jaxrobust.utils.paths import named_leaves
from jaxrobust.weights import (fresh_weights, list_modules, reinit_analysis, reinit_leaves,
                               reinit_table, reinit_weights)
from tests.train.helpers import REPO, load_config

SHAPE = (32, 32, 3)


def _config(seed=0):
  cfg = default_config()
  cfg.model.name, cfg.seed, cfg.data.image_shape = "simple_cnn_tiny", seed, SHAPE
  return cfg


def _trained(seed=0):
  """Stand-in for trained weights: the seed's init moved by +1 everywhere."""
  _, params, stats = split_model(build_model(_config(seed), SHAPE))
  return (jax.tree.map(lambda a: a + 1.0, params), jax.tree.map(lambda a: a + 0.5, stats))


def _named(tree):
  return {n: np.asarray(x) for n, x in named_leaves(tree)}


@pytest.mark.parametrize("mode,seed,want_seed", [("reinit", None, 0), ("rerandom", None, 1),
                                                 ("rerandom", 5, 5)])
def test_chosen_leaves_match_a_fresh_init_and_the_rest_is_bit_identical(mode, seed, want_seed):
  params, stats = _trained()
  new, new_stats, record = reinit_weights(params, stats, _config(), r"^convs\.0\.|^linear\.",
                                          mode, seed)
  assert record["seed"] == want_seed
  assert record["replaced"] == ["convs.0.kernel", "linear.bias", "linear.kernel"]
  fresh = _named(split_model(build_model(_config(), SHAPE, seed=want_seed))[1])
  before, after = _named(params), _named(new)
  for name in before:
    if name in record["replaced"]:
      np.testing.assert_array_equal(after[name], fresh[name])
      assert not np.array_equal(after[name], before[name])
    else:
      np.testing.assert_array_equal(after[name], before[name])
  for a, b in zip(jax.tree.leaves(new_stats), jax.tree.leaves(stats)):  # statistics kept.
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_same_seed_same_weights_and_batch_stats_reset_on_request():
  a, _ = fresh_weights(_config(), 3)
  b, _ = fresh_weights(_config(), 3)
  c, _ = fresh_weights(_config(), 4)
  assert all(np.array_equal(x, y) for x, y in zip(_named(a).values(), _named(b).values()))
  assert not all(np.array_equal(x, y) for x, y in zip(_named(a).values(), _named(c).values()))
  params, stats = _trained()
  _, new_stats, record = reinit_weights(params, stats, _config(), r"^bns\.1\.",
                                        reset_batch_stats=True)
  assert record["replaced"] == ["bns.1.bias", "bns.1.scale"]
  assert record["reset_batch_stats"] == ["bns.1.mean", "bns.1.var"]
  got, old = _named(new_stats), _named(stats)
  np.testing.assert_array_equal(got["bns.1.mean"], np.zeros(16, np.float32))
  np.testing.assert_array_equal(got["bns.1.var"], np.ones(16, np.float32))
  np.testing.assert_array_equal(got["bns.0.mean"], old["bns.0.mean"])


def test_bad_selections_are_clear_errors():
  params, stats = _trained()
  with pytest.raises(ConfigError, match="matches no parameter; names are"):
    reinit_weights(params, stats, _config(), "^nothing")
  with pytest.raises(ConfigError, match="not a valid regular expression"):
    reinit_weights(params, stats, _config(), "convs[")
  with pytest.raises(ConfigError, match="unknown re-initialisation mode"):
    reinit_weights(params, stats, _config(), "convs", mode="zero")
  other = split_model(build_model(_config(), SHAPE))[1]
  with pytest.raises(ConfigError, match="structure"):
    reinit_leaves(params, {"x": other}, "convs")


@pytest.mark.slow
def test_reinit_cli_writes_a_run(tmp_path, data_dir):
  del data_dir
  from jaxrobust.train.loop import train_and_evaluate  # pylint: disable=g-import-not-at-top
  from jaxrobust.train.restore import load_trained  # pylint: disable=g-import-not-at-top
  run = tmp_path / "run"
  train_and_evaluate(load_config("cifar10_pgd_at", "smoke"), str(run))
  out = tmp_path / "reinit"
  proc = subprocess.run([sys.executable, "-m", "jaxrobust.weights", "reinit", "--workdirs",
                         str(run), "--modules", r"^linear\.", "--reinit_mode", "rerandom",
                         "--seed", "9", f"--out={out}"], cwd=REPO, capture_output=True,
                        text=True, timeout=900, check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  src, new = load_trained(str(run)), load_trained(str(out))
  cfg = src.config
  fresh = _named(split_model(build_model(cfg, tuple(cfg.data.image_shape), seed=9))[1])
  for name, value in _named(new.params).items():
    want = fresh[name] if name.startswith("linear.") else _named(src.params)[name]
    np.testing.assert_array_equal(value, want)
  record = json.loads((out / "weights.json").read_text())
  assert record["recipe"] == "reinit" and record["replaced"] == ["linear.bias", "linear.kernel"]
  assert 0 <= record["val"]["robust"] <= 1
  bad = subprocess.run([sys.executable, "-m", "jaxrobust.weights", "reinit", "--workdirs",
                        str(run), f"--out={tmp_path / 'o'}"], cwd=REPO, capture_output=True,
                       text=True, timeout=900, check=False)
  assert bad.returncode == 2 and "reinit takes one run and a regex" in bad.stderr
  # The per-module analysis: every module x both modes; its (linear, rerandom) row is the
  # single re-initialisation above (rerandom = --seed + 1 = 9), computed the other way.
  table = tmp_path / "table"
  proc = subprocess.run([sys.executable, "-m", "jaxrobust.weights", "reinit_analysis",
                         "--workdirs", str(run), "--seed", "8", f"--out={table}"], cwd=REPO,
                        capture_output=True, text=True, timeout=900, check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  analysis = json.loads((table / "reinit.json").read_text())
  modules = [n[:-len(".kernel")] for n in _named(src.params) if n.endswith(".kernel")]
  assert [(r["module"], r["mode"]) for r in analysis["rows"]] == [
      (m, mode) for m in modules for mode in ("reinit", "rerandom")]
  assert analysis["seeds"] == {"reinit": 8, "rerandom": 9}
  assert analysis["baseline"] == record["sources"][0]["val"]
  (row,) = [r for r in analysis["rows"] if (r["module"], r["mode"]) == ("linear", "rerandom")]
  assert {k: row[k] for k in ("clean", "robust")} == record["val"]
  md = (table / "reinit.md").read_text()
  assert md.count("\n") == len(modules) + 3 and "`linear`" in md
  assert (table / "reinit.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  again = subprocess.run([sys.executable, "-m", "jaxrobust.weights", "reinit_analysis",
                          "--workdirs", str(run), f"--out={table}"], cwd=REPO,
                         capture_output=True, text=True, timeout=900, check=False)
  assert again.returncode == 2 and "already holds a re-initialisation analysis" in again.stderr


def test_reinit_analysis_resets_one_module_at_a_time():
  """Each evaluation sees exactly one module from the chosen source, every other leaf trained."""
  params, _ = _trained()
  init, _ = fresh_weights(_config(), 0)
  rand, _ = fresh_weights(_config(), 1)
  modules = list_modules(params)
  seen = []

  def evaluate(p):
    got, want_trained = _named(p), _named(params)
    changed = sorted({n.rsplit(".", 1)[0] for n in got
                      if not np.array_equal(got[n], want_trained[n])})
    (module,) = changed
    src = [k for k, t in (("reinit", init), ("rerandom", rand))
           if all(np.array_equal(got[n], _named(t)[n]) for n in got
                  if n.startswith(module + "."))]
    seen.append((module, src))
    return {"clean": len(seen) / 100, "robust": len(seen) / 200}

  rows = reinit_analysis(params, modules, init, rand, evaluate)
  assert [(r["module"], r["mode"]) for r in rows] == [
      (m.name, mode) for m in modules for mode in ("reinit", "rerandom")]
  assert seen == [(r["module"], [r["mode"]]) for r in rows]
  assert [r["clean"] for r in rows] == [(i + 1) / 100 for i in range(len(rows))]
  only = reinit_analysis(params, modules[:1], init, rand, evaluate, modes=("rerandom",))
  assert [(r["module"], r["mode"]) for r in only] == [(modules[0].name, "rerandom")]
  with pytest.raises(ValueError, match="unknown re-initialisation mode"):
    reinit_analysis(params, modules, init, rand, evaluate, modes=("zero",))


def test_reinit_table_lists_every_module_in_percent():
  rows = [{"module": "convs.0", "mode": "reinit", "clean": 0.5, "robust": 0.25},
          {"module": "convs.0", "mode": "rerandom", "clean": 0.1, "robust": 0.0},
          {"module": "linear", "mode": "reinit", "clean": 0.456, "robust": 0.123}]
  lines = reinit_table(rows, {"clean": 0.6, "robust": 0.3}).splitlines()
  assert lines[0] == "| module | reinit clean | reinit robust | rerandom clean | rerandom robust |"
  assert lines[2] == "| (trained, nothing reset) | 60.0 | 30.0 | 60.0 | 30.0 |"
  assert lines[3] == "| `convs.0` | 50.0 | 25.0 | 10.0 | 0.0 |"
  assert lines[4] == "| `linear` | 45.6 | 12.3 | - | - |"
