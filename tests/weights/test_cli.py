"""Soup / interpolate CLIs on two tiny trained runs; the output reads like a trained run."""
import json
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxrobust.errors import ConfigError
from jaxrobust.train.defaults import default_config
from jaxrobust.train.loop import train_and_evaluate
from jaxrobust.train.restore import TrainedModel, load_trained
from jaxrobust.weights.recipes import recalibrate_run, soup_runs
from jaxrobust.weights.runs import (InitialisationWarning, check_same_architecture,
                                    warn_if_different_initialisation)
from tests.numpy_models import numpy_initialised
from tests.train.helpers import REPO, load_config


def _np(tree):
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def _fake_run(model: str, seed: int = 0, init_from: str = "", **kw) -> TrainedModel:
  fns, params, stats = numpy_initialised(model, seed=seed, **kw)
  cfg = default_config()
  cfg.model.name, cfg.seed, cfg.train.init_from = model, seed, init_from
  return TrainedModel(cfg, fns, params, stats, 0, "best", f"/runs/{model}_{seed}", False)


def test_runs_of_different_architectures_are_refused_and_initialisation_is_checked():
  a, b = _fake_run("simple_cnn_tiny", 0), _fake_run("simple_cnn_tiny", 1)
  assert check_same_architecture([a, b]).startswith("simple_cnn_tiny|")
  with pytest.raises(ConfigError, match="different architectures.*small_cnn_tiny"):
    check_same_architecture([a, _fake_run("small_cnn_tiny")])
  with pytest.warns(InitialisationWarning, match="do not share an initialisation"):
    assert warn_if_different_initialisation([a, b])
  same = [_fake_run("simple_cnn_tiny", s, init_from="/runs/base") for s in (0, 1)]
  assert not warn_if_different_initialisation(same)  # fine-tuned from one run: no warning.


def _cli(module, *args):
  return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True,
                        text=True, timeout=900, check=False)


def test_cli_bad_input_gives_one_clear_error(tmp_path):
  proc = _cli("jaxrobust.weights", "stew", f"--out={tmp_path / 'o'}")
  assert proc.returncode == 2 and "give one command, soup, interpolate" in proc.stderr
  proc = _cli("jaxrobust.weights", "soup", "--workdirs", str(tmp_path), f"--out={tmp_path}/o")
  assert proc.returncode == 2 and "at least two runs" in proc.stderr
  proc = _cli("jaxrobust.weights", "interpolate", "--from", str(tmp_path), "--to",
              str(tmp_path), "--alphas", "0:1:0", f"--out={tmp_path}/o")
  assert proc.returncode == 2 and "step > 0" in proc.stderr
  assert "Traceback" not in proc.stderr


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, data_dir):
  """Two tiny PGD-AT runs (cifar10_pgd_at.py:smoke, 4 steps) with seeds 0 and 1."""
  del data_dir
  dirs = []
  for seed in (0, 1):
    workdir = str(tmp_path_factory.mktemp(f"run{seed}"))
    cfg = load_config("cifar10_pgd_at", "smoke")
    cfg.seed = seed
    train_and_evaluate(cfg, workdir)
    dirs.append(workdir)
  return dirs


def _evaluate(workdir):
  proc = _cli("jaxrobust.evaluate", "--workdir", str(workdir), "--attacks", "clean",
              "--n_examples", "40", "--batch_size", "40")
  assert proc.returncode == 0, proc.stderr[-2000:]
  report = json.loads((workdir / "eval_best.json").read_text())
  assert 0.0 <= report["accuracy"]["clean"] <= 1.0
  return report


@pytest.mark.slow
def test_soup_cli_writes_a_run_that_evaluate_reads(two_runs, tmp_path):
  out = tmp_path / "soup"
  proc = _cli("jaxrobust.weights", "soup", "--workdirs", *two_runs, "--select", "val_robust",
              "--out", str(out))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "do not share an initialisation" in proc.stderr  # seeds 0 and 1.
  recipe = json.loads((out / "weights.json").read_text())
  assert recipe["recipe"] == "greedy_soup" and recipe["select"] == "val_robust"
  log = recipe["greedy_log"]
  assert len(log) == 2 and log[0]["kept"]
  # Greedy: the second run is kept only when it strictly improves validation robust accuracy.
  best_alone = max(s["val"]["robust"] for s in recipe["sources"])
  assert log[1]["kept"] == (log[1]["metric"] > best_alone)
  runs = [load_trained(w) for w in two_runs]
  members = [runs[two_runs.index(m)] for m in recipe["members"]]
  soup = load_trained(str(out))
  assert soup.config.model.name == runs[0].config.model.name
  for tree in ("params", "batch_stats"):
    for got, *xs in zip(_np(getattr(soup, tree)), *(_np(getattr(r, tree)) for r in members)):
      np.testing.assert_allclose(got, np.mean(np.stack(xs), 0), rtol=1e-6, atol=1e-7)
  report = _evaluate(out)
  assert report["workdir"] == str(out)


@pytest.mark.slow
def test_uniform_soup_with_recomputed_batch_stats(two_runs, tmp_path):
  with pytest.warns(InitialisationWarning):
    rec = soup_runs(two_runs, str(tmp_path / "u"), recipe="uniform", bn="recompute_clean")
  assert len(rec["members"]) == 2 and rec["bn"] == "recompute_clean"
  runs = [load_trained(w) for w in two_runs]
  soup = load_trained(str(tmp_path / "u"))
  for got, a, b in zip(_np(soup.params), _np(runs[0].params), _np(runs[1].params)):
    np.testing.assert_allclose(got, (a + b) / 2, rtol=1e-6, atol=1e-7)  # the arithmetic mean.
  averaged = [(a + b) / 2 for a, b in zip(_np(runs[0].batch_stats), _np(runs[1].batch_stats))]
  assert not all(np.allclose(g, m) for g, m in zip(_np(soup.batch_stats), averaged))
  with pytest.raises(ConfigError, match="already holds a run"):
    soup_runs(two_runs, str(tmp_path / "u"), recipe="uniform")


@pytest.mark.slow
def test_interpolate_cli_endpoints_and_evaluate(two_runs, tmp_path):
  out = tmp_path / "wise"
  proc = _cli("jaxrobust.weights", "interpolate", "--from", two_runs[0], "--to", two_runs[1],
              "--alphas", "0:1:0.5", "--robust_tolerance", "0.05", "--save_all",
              "--out", str(out))
  assert proc.returncode == 0, proc.stderr[-3000:]
  rec = json.loads((out / "interpolation.json").read_text())
  assert [r["alpha"] for r in rec["records"]] == [0.0, 0.5, 1.0]
  assert rec["chosen"] in rec["records"] and rec["select"] == "clean_within_robust_tolerance"
  assert (out / "interpolation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  a, b = (load_trained(w) for w in two_runs)
  for alpha, want in (("0", a), ("1", b)):  # endpoints exact, statistics included.
    got = load_trained(str(out / f"alpha_{alpha}"))
    for u, v in zip(_np((got.params, got.batch_stats)), _np((want.params, want.batch_stats))):
      np.testing.assert_array_equal(u, v)
  mid = load_trained(str(out / "alpha_0.5"))
  for u, v, w in zip(_np(mid.params), _np(a.params), _np(b.params)):
    np.testing.assert_allclose(u, (v + w) / 2, rtol=1e-6, atol=1e-7)
  chosen = load_trained(str(out))
  ref = load_trained(str(out / f"alpha_{rec['chosen']['alpha']:g}"))
  for u, v in zip(_np(chosen.params), _np(ref.params)):
    np.testing.assert_array_equal(u, v)
  _evaluate(out)


@pytest.mark.slow
def test_recalibrate_recomputes_only_the_batch_stats(two_runs, tmp_path):
  rec = recalibrate_run(two_runs[0], str(tmp_path / "r"), "recompute_adversarial")
  assert rec["bn"] == "recompute_adversarial" and rec["sources"][0]["workdir"] == two_runs[0]
  src, out = load_trained(two_runs[0]), load_trained(str(tmp_path / "r"))
  for u, v in zip(_np(out.params), _np(src.params)):
    np.testing.assert_array_equal(u, v)
  assert not all(np.allclose(u, v) for u, v in zip(_np(out.batch_stats), _np(src.batch_stats)))
  with pytest.raises(ConfigError, match="recalibrate needs"):
    recalibrate_run(two_runs[0], str(tmp_path / "r2"), "average")
