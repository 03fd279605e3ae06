"""RiFT end to end on the bundled data: fine-tuning freezes all but one module; the CLI."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxrobust.errors import ConfigError
from jaxrobust.train.restore import load_trained
from jaxrobust.rift.pipeline import finetune_config
from jaxrobust.train.loop import train_and_evaluate
from jaxrobust.utils.paths import named_leaves
from tests.train.helpers import load_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def at_run(tmp_path_factory, data_dir):
  """A tiny adversarially trained model (cifar10_pgd_at.py:smoke)."""
  del data_dir
  workdir = str(tmp_path_factory.mktemp("at"))
  train_and_evaluate(load_config("cifar10_pgd_at", "smoke"), workdir)
  return workdir


def _leaves(tree):
  return {n: np.asarray(x) for n, x in named_leaves(tree)}


@pytest.mark.parametrize("bn", ["eval", "train"])
def test_finetuning_changes_only_the_chosen_module(at_run, tmp_path, bn):
  rift = load_config("cifar10_rift", "smoke")
  rift.at_workdir = at_run
  rift.finetune.bn = bn
  rift.finetune.lr = 0.05  # large enough that the chosen kernel visibly moves in 4 steps.
  at = load_trained(at_run)
  cfg = finetune_config(rift, at.config, "convs.1")
  assert cfg.train.trainable == r"^(convs\.1)\." and cfg.method.name == "standard"
  train_and_evaluate(cfg, str(tmp_path))
  ft = load_trained(str(tmp_path), "latest")
  before, after = _leaves(at.params), _leaves(ft.params)
  for name in before:
    if name.startswith("convs.1."):
      assert not np.array_equal(before[name], after[name]), name
    else:
      np.testing.assert_array_equal(before[name], after[name], err_msg=name)
  stats_same = all(np.array_equal(a, b) for a, b in zip(_leaves(at.batch_stats).values(),
                                                        _leaves(ft.batch_stats).values()))
  assert stats_same == (bn == "eval")


def test_init_from_a_different_architecture_is_refused(at_run, tmp_path):
  cfg = load_config("cifar10_pgd_at", "smoke")
  cfg.model.name = "small_cnn_tiny"
  cfg.train.init_from = at_run
  with pytest.raises(ConfigError, match="init_from"):
    train_and_evaluate(cfg, str(tmp_path))


def _cli(*args, cwd):
  env = dict(os.environ, JAXROBUST_CACHE_DIR=str(cwd / "cache"))
  return subprocess.run([sys.executable, "-m", "jaxrobust.rift", *args], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=900, check=False)


def test_cli_runs_end_to_end_and_writes_report_and_plots(at_run, tmp_path, repo_root):
  out = tmp_path / "rift"
  proc = _cli(f"--config={repo_root}/configs/cifar10_rift.py:smoke",
              f"--config.at_workdir={at_run}", f"--workdir={out}", cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads((out / "report.json").read_text())
  mrc = json.loads((out / "mrc.json").read_text())
  lowest = min(mrc["modules"], key=lambda r: r["mrc"])["name"]
  assert report["module"] == lowest == report["mrc"]["ranking"][0]
  assert [r["alpha"] for r in report["interpolation"]["records"]] == [0.0, 0.5, 1.0]
  assert report["interpolation"]["chosen"] in report["interpolation"]["records"]
  for label in ("at", "rift", "finetuned"):
    row = report["test"][label]
    assert 0 <= row["robust"] <= row["clean"] <= 1
    assert 0 <= row["ood"] <= 1 and len(row["ood_per_set"]) == 4  # 2 corruptions x 2 severities.
  # alpha = 0 is the adversarially trained model: its test numbers match a direct evaluation.
  at = load_trained(at_run)
  from jaxrobust.accuracy import evaluate_model, exact_subset
  from jaxrobust.parallel import make_mesh
  from jaxrobust.train.builders import build_splits
  cfg = at.config.copy_and_resolve_references()
  cfg.unlock()
  cfg.data.test_size = report["test_size"]
  test = exact_subset(build_splits(cfg).test, report["test_size"])
  direct = evaluate_model(at.model_fns, at.params, at.batch_stats, test, {"clean": None}, 40,
                          make_mesh())
  assert report["test"]["at"]["clean"] == pytest.approx(direct["clean"])
  assert report["reinit"]["rows"] and {r["mode"] for r in report["reinit"]["rows"]} == {
      "reinit", "rerandom"}
  assert "generated" in report["ood_source"][0] or "cifar10_corrupted" in report["ood_source"][0]
  md = (out / "report.md").read_text()
  assert f"Fine-tuned module: `{lowest}`" in md and "| reinit |" in md
  for png in ("mrc.png", "interpolation.png"):
    assert (out / png).stat().st_size > 1000
  assert jax.device_count() == 8  # conftest's forced devices were in effect in this process.


def test_cli_bad_input_gives_one_clear_error(tmp_path, repo_root, at_run):
  cfg = f"--config={repo_root}/configs/cifar10_rift.py:smoke"
  proc = _cli(cfg, f"--workdir={tmp_path / 'w'}", cwd=tmp_path)
  assert proc.returncode == 2 and "--config.at_workdir" in proc.stderr
  proc = _cli(cfg, "--config.mrc.xii=1", f"--workdir={tmp_path / 'w'}", cwd=tmp_path)
  assert proc.returncode == 2 and "unknown config key 'mrc.xii'" in proc.stderr
  proc = _cli(cfg, f"--config.at_workdir={at_run}", "--config.finetune.module=nope",
              "--config.reinit.modes=()", f"--workdir={tmp_path / 'w'}", cwd=tmp_path)
  assert proc.returncode == 2 and "is not a conv/dense module" in proc.stderr, proc.stderr[-500:]
  assert not (tmp_path / "w" / "mrc.json").exists()  # refused before the MRC sweep ran


def test_official_protocol_end_to_end(at_run, tmp_path, monkeypatch):
  """``:official,smoke``: choices on test, all training images, worst of 3 runs, one DataError."""
  from jaxrobust.errors import DataError
  from jaxrobust.rift import ood
  from jaxrobust.rift.pipeline import run_rift

  rift = load_config("cifar10_rift", "official,smoke")
  rift.at_workdir = at_run
  rift.reinit.modes = ()
  rift.finetune.num_steps = 16  # 2 epochs of the 256 smoke images: two checkpoints to choose from.
  # The official CIFAR-10-C is not here: one DataError before any stage runs.
  monkeypatch.setattr(ood, "_tfds_problem", lambda *a: "TFDS has not prepared it")
  rift.eval.ood.source, rift.eval.ood.test_examples = "official", 40
  rift.eval.ood.data_dir = str(tmp_path / "no_c10c")
  with pytest.raises(DataError, match="official CIFAR-10-C data is missing"):
    run_rift(rift, str(tmp_path / "missing"))
  assert not (tmp_path / "missing" / "mrc.json").exists()
  rift.eval.ood.source = "none"
  report = run_rift(rift, str(tmp_path / "official"))
  assert (report["protocol"], report["selection_split"]) == ("official", "test")
  assert (report["mrc"]["split"], report["mrc"]["num_examples"]) == ("test", 64)
  assert report["test_size"] == 80 and report["test_runs"] == 3
  assert report["finetune"]["train_examples"] == 256  # the AT run's subset, no validation held out.
  for label in ("at", "rift", "finetuned"):
    row = report["test"][label]
    assert len(row["robust_runs"]) == 3 and row["robust"] == min(row["robust_runs"])
    assert row["robust_pointwise"] <= row["robust"] <= row["clean"]
  # The alpha grid is on test: its alpha = 0 clean accuracy is the test table's.
  grid = {r["alpha"]: r for r in report["interpolation"]["records"]}
  assert grid[0.0]["clean"] == report["test"]["at"]["clean"]
  # The fine-tuned epoch: the best clean test accuracy, earlier on ties (official main.py).
  sel = json.loads((tmp_path / "official" / "finetune" / "selection.json").read_text())
  accs = {int(k): v for k, v in sel["clean_by_step"].items()}
  assert sorted(accs) == [8, 16]
  assert sel["chosen_step"] == min(s for s in accs if accs[s] == max(accs.values()))
  assert report["finetune"]["best_step"] == sel["chosen_step"]
  md = (tmp_path / "official" / "report.md").read_text()
  assert "Protocol: official" in md and "worst run of 3 runs" in md


def test_a_signal_during_the_mrc_sweep_saves_its_progress_and_the_rerun_resumes(at_run,
                                                                                  tmp_path):
  from jaxrobust.errors import StatePreempted
  from jaxrobust.rift.pipeline import _prepare, stage_mrc

  rift = load_config("cifar10_rift", "smoke")
  rift.at_workdir = at_run
  full = stage_mrc(_prepare(rift, str(tmp_path / "full")))
  run = _prepare(rift, str(tmp_path / "stopped"))
  run.should_stop = lambda: "SIGTERM"
  with pytest.raises(StatePreempted, match=r"preempted \(SIGTERM\): saved the MRC sweep "
                     r"progress \(1 of \d+ modules\) in .*mrc_partial\.json"):
    stage_mrc(run)
  partial = json.loads((tmp_path / "stopped" / "mrc_partial.json").read_text())
  assert len(partial["modules"]) == 1 and not (tmp_path / "stopped" / "mrc.json").exists()
  run.should_stop = lambda: None
  resumed = stage_mrc(run)
  strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]
  assert strip(resumed["modules"]) == strip(full["modules"])
  assert resumed["least_critical"] == full["least_critical"]
  assert not (tmp_path / "stopped" / "mrc_partial.json").exists()
