"""benchmarks/bench_eval_cli.py and the torch-free parts of bench_autoattack.py: the CLI command,
the points the torch side reads, per-process wall time and peak memory, the reference's log, the
summary and table row, and that the torch side never imports jax."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import types

import numpy as np
import pytest

from benchmarks import bench_autoattack as baa
from benchmarks import bench_eval_cli as bec

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _args(**kw):
  base = dict(workdir="/w", which="best", n=20, bs=250, seed=0)
  return types.SimpleNamespace(**dict(base, **kw))


def test_cli_command_uses_only_flags_and_names_the_cli_defines():
  from absl import flags
  import jaxrobust.evaluate.__main__  # noqa: F401  pylint: disable=unused-import  (defines them)
  from jaxrobust.evaluate.report import canonical_evaluation_name
  cmd = bec.cli_command(_args(), "/tmp/r.json", python="py", save_adv="/tmp/a.npz")
  assert cmd[:3] == ["py", "-m", "jaxrobust.evaluate"]
  opts = dict(zip(cmd[3::2], cmd[4::2]))
  for name in opts:
    assert name.startswith("--") and name[2:] in flags.FLAGS, name
  assert opts["--n_examples"] == "20" and opts["--batch_size"] == "250"
  assert [canonical_evaluation_name(a) for a in opts["--attacks"].split(",")] == [
      "clean", "pgd20", "aa-standard"]


def test_cli_env_turns_the_cache_off_or_points_it_and_drops_jax_s_own_variables():
  base = {"JAX_COMPILATION_CACHE_DIR": "/x", "PYTHONPATH": "/a", "HOME": "/h"}
  env = bec.cli_env("", base)
  assert env["JAXROBUST_COMPILATION_CACHE"] == "off"
  assert "JAX_COMPILATION_CACHE_DIR" not in env and env["HOME"] == "/h"
  assert env["PYTHONPATH"].split(os.pathsep) == [REPO, "/a"]
  assert bec.cli_env("rel/cache", base)["JAXROBUST_COMPILATION_CACHE"] == os.path.abspath(
      "rel/cache")
  from jaxrobust.cli import compilation_cache_dir
  assert compilation_cache_dir(bec.cli_env("", base)) is None
  assert compilation_cache_dir(bec.cli_env("/c", base)) == "/c"
  assert base["JAX_COMPILATION_CACHE_DIR"] == "/x"  # the caller's dict is not changed


def test_torch_side_reads_the_points_the_cli_evaluates():
  from jaxrobust.accuracy import exact_subset
  from jaxrobust.data import load_split
  from jaxrobust.data.sources import default_data_dir
  data_dir = str(default_data_dir())
  if not os.path.isfile(os.path.join(data_dir, "cifar10_test.npz")):
    pytest.skip("no CIFAR-10 test set here")
  x, y = bec.load_test_points(data_dir, 40)
  want = exact_subset(load_split("cifar10", "test"), 40)
  assert x.dtype == np.float32 and x.shape == (40, 3, 32, 32) and y.dtype == np.int64
  np.testing.assert_array_equal(np.rint(x * 255).astype(np.uint8).transpose(0, 2, 3, 1),
                                want.images)
  np.testing.assert_array_equal(y, want.labels)
  with pytest.raises(ValueError, match="JPEG-derived"):
    bec.load_test_points(data_dir, 1001)


def test_measure_reports_each_child_s_own_peak_memory_and_wall_time(tmp_path):
  # Linux counts the image a child was forked from in its ru_maxrss, so the driver (like
  # bench_eval_cli's) is a small process: this one, with jax imported, is not.
  def child(mib, sleep):
    return [sys.executable, "-c", f"import time; b = bytearray({mib} << 20); "
            f"b[::4096] = b'x' * len(b[::4096]); time.sleep({sleep})"]
  code = ("import json, sys; sys.path.insert(0, 'benchmarks'); import bench_eval_cli as b; "
          f"d = {str(tmp_path)!r}; cmds = json.loads(sys.argv[1]); "
          "print(json.dumps([b.measure(c, f'{d}/{i}.log') for i, c in enumerate(cmds)]))")
  proc = subprocess.run([sys.executable, "-c", code, json.dumps([child(300, 0.5), child(20, 0)])],
                        cwd=REPO, capture_output=True, text=True, check=True)
  big, small = json.loads(proc.stdout)
  assert big["returncode"] == 0 and small["returncode"] == 0
  assert big["peak_rss_mib"] >= 300 and big["wall_s"] >= 0.5
  assert small["peak_rss_mib"] < 100  # its own peak, not the largest child's so far
  failed = bec.measure([sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"],
                       str(tmp_path / "f.log"), cpus=sorted(os.sched_getaffinity(0))[:1])
  assert failed["returncode"] == 3
  assert (tmp_path / "f.log").read_text().strip() == "boom"


def test_reference_log_lines_give_counts_and_per_attack_seconds():
  # The reference's own format strings (autoattack/autoattack.py, verbose=True), n = 7.
  n = 7
  lines = ["using standard version including apgd-ce, apgd-t, fab-t, square.",
           "initial accuracy: {:.2%}".format(5 / n),
           "apgd-ce - 1/1 - 2 out of 5 successfully perturbed",
           "robust accuracy after {}: {:.2%} (total time {:.1f} s)".format("APGD-CE", 3 / n, 2.5),
           "robust accuracy after {}: {:.2%} (total time {:.1f} s)".format("APGD-T", 2 / n, 7.0),
           "robust accuracy after {}: {:.2%} (total time {:.1f} s)".format("FAB-T", 2 / n, 7.5),
           "robust accuracy after {}: {:.2%} (total time {:.1f} s)".format("SQUARE", 1 / n,
                                                                            10.0),
           "robust accuracy: {:.2%}".format(1 / n)]
  clean, ra, secs, total = baa.parse_reference_log(lines, n)
  assert clean == 5 / n
  assert ra == {"apgd_ce": 3 / n, "apgd_t": 2 / n, "fab_t": 2 / n, "square": 1 / n}
  assert secs == {"apgd_ce": 2.5, "apgd_t": 4.5, "fab_t": 0.5, "square": 2.5}
  assert total == 10.0
  assert baa.parse_reference_log([], n) == (None, {}, {}, 0.0)


def _result(jax_walls, cache_before, torch_wall=300.0):
  runs = [dict(wall_s=w, peak_rss_mib=800.0, cache_files_before=c,
               accuracy={"clean": 0.7, "pgd20": 0.3, "aa-standard": 0.25})
          for w, c in zip(jax_walls, cache_before)]
  torch = dict(wall_s=torch_wall, peak_rss_mib=400.0,
               accuracy={"clean": 0.7, "pgd20": 0.31, "aa-standard": 0.25})
  return dict(config=dict(n=1000), jax={"runs": runs}, torch=torch,
              summary=bec.summarise(runs, torch))


def test_summary_ratios_and_table_row():
  res = _result([150.0, 100.0], [0, 12])
  s = res["summary"]
  assert s["time_ratio"] == 2.0 and s["time_ratio_last"] == 3.0 and s["memory_ratio"] == 0.5
  assert s["accuracy_diff_pp"] == {"clean": 0.0, "pgd20": -1.0, "aa-standard": 0.0}
  row = bec.table_row(res)
  header = bec.TABLE_HEADER.splitlines()[0]
  assert row.count("|") == header.count("|")
  cells = [c.strip() for c in row.strip("|").split("|")]
  assert cells[:7] == ["1000", "150.0 / 100.0 (cold / warm)", "800", "300.0", "400",
                       "2.00 / 3.00", "0.50"]
  assert cells[7:] == ["70.0 / 70.0", "30.0 / 31.0", "25.0 / 25.0"]
  one = bec.table_row(_result([150.0], [0]))
  assert [c.strip() for c in one.strip("|").split("|")][1:6] == ["150.0", "800", "300.0",
                                                                 "400", "2.00"]


def test_bad_arguments_are_refused(tmp_path):
  (tmp_path / "config.json").write_text("{}")
  ok = ["--workdir", str(tmp_path), "--threads", "1"]
  assert bec.parse_args(ok).n == 1000
  for bad in (["--n", "0"], ["--jax_runs", "2"], ["--bs", "-1"], ["--threads", "0"]):
    with pytest.raises(SystemExit) as e:
      bec.parse_args(ok + bad)
    assert e.value.code == 2
  with pytest.raises(SystemExit):
    bec.parse_args(["--workdir", str(tmp_path / "missing")])
  assert bec.parse_args(ok + ["--jax_runs", "2", "--compile_cache", "/c"]).jax_runs == 2


def test_torch_side_commands_and_their_interpreters(tmp_path):
  venv_python = tmp_path / "python"
  venv_python.symlink_to(sys.executable)  # a virtualenv's python: a link to the base one
  args = baa.parse_args(["--torch_python", str(venv_python), "--n", "10"])
  assert baa._delegate_torch(args)  # pylint: disable=protected-access
  torch_cmd = baa.side_command(args, "torch", "/o.json")
  assert torch_cmd[0] == str(venv_python)
  assert torch_cmd[torch_cmd.index("--jax_python") + 1] == sys.executable
  assert baa.side_command(args, "jax", "/o.json")[0] == sys.executable
  default = baa.parse_args(["--n", "10"])
  assert not baa._delegate_torch(default)  # pylint: disable=protected-access
  assert baa.side_command(default, "torch", "/o.json")[0] == sys.executable
  both = baa.side_command(args, "torch", "/o.json")
  assert both[both.index("--n") + 1] == "10" and both[both.index("--impl") + 1] == "torch"


def test_the_torch_side_imports_neither_jax_nor_jaxrobust():
  code = ("import sys; sys.path.insert(0, 'benchmarks'); import bench_eval_cli, bench_autoattack; "
          "bench_eval_cli.parse_args(['--child', '{}']); bench_autoattack.parse_args([]); "
          "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'jaxlib', 'flax', "
          "'jaxrobust', 'optax', 'orbax')); print(bad); sys.exit(1 if bad else 0)")
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                        check=False)
  assert proc.returncode == 0, proc.stdout + proc.stderr
