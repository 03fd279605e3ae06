"""benchmarks/gpu_check.py: the summary arithmetic and the refusals without a GPU."""
import os
import subprocess
import sys

import pytest

from benchmarks.gpu_check import peak_for, summarise

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_summary_gives_images_per_second_tflops_and_mfu():
  results = [{"part": "jax_pgd", "s_per_call": 0.5, "flops": 2.0e14, "compile_s": 12.0},
             {"part": "jax_train", "s_per_call": 0.25, "flops": 5.0e13},
             {"part": "jax_train", "error": "out of memory"}]
  rows = summarise(results, batch=512, steps=10, peak=(50.0, 400.0))
  assert rows[0]["images_per_s"] == pytest.approx(1024.0)
  assert rows[0]["tflop_per_s"] == pytest.approx(400.0)
  assert rows[0]["mfu_fp32"] == pytest.approx(8.0) and rows[0]["mfu_tf32"] == pytest.approx(1.0)
  assert rows[1]["images_per_s"] == pytest.approx(2048.0)
  assert rows[1]["tflop_per_s"] == pytest.approx(200.0) and rows[1]["mfu_tf32"] == 0.5
  assert rows[2] == {"part": "jax_train", "error": "out of memory"}
  assert "mfu_fp32" not in summarise(results[:1], 512, 10, None)[0]


def test_peaks_are_matched_by_device_kind():
  assert peak_for("NVIDIA H100 80GB HBM3") == (67.0, 494.7)
  assert peak_for("NVIDIA H100 PCIe") == (51.2, 378.0)
  assert peak_for("NVIDIA A100-SXM4-40GB") == (19.5, 156.0)
  assert peak_for("cpu") is None


def test_without_a_gpu_both_entry_points_refuse_with_one_message(tmp_path):
  env = dict(os.environ, PATH=f"{tmp_path}{os.pathsep}/usr/bin:/bin", JAX_PLATFORMS="cpu")
  sh = subprocess.run(["bash", os.path.join(REPO, "benchmarks", "gpu_check.sh")], env=env,
                      capture_output=True, text=True, timeout=60)
  assert sh.returncode == 2 and "no NVIDIA GPU found" in sh.stderr
  py = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "gpu_check.py")],
                      env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True,
                      text=True, timeout=120)
  assert py.returncode == 2 and "JAX sees no GPU" in py.stderr
