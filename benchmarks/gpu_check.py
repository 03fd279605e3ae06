"""GPU check: PGD-10 attack and PGD-AT train step throughput and model FLOP utilisation.

Runs ``bench_pgd.py``'s jaxrobust parts (PreAct-ResNet-18, CIFAR-10 shapes, PGD-10, the
library's own train step) on the default JAX backend, then prints images/s, achieved
TFLOP/s (XLA's cost analysis of the compiled programs) and the fraction of the device's
peak (MFU), so a first run on real hardware needs no preparation::

  benchmarks/gpu_check.sh                       # wraps this with a GPU check and a timeout
  python benchmarks/gpu_check.py --batch 512 --out gpu_check.json

Peaks are the vendors' dense figures for one device (fp32 and TF32/bf16 tensor cores; JAX
runs fp32 convolutions and matmuls on GPUs at its default precision, which uses TF32 where
the GPU has it). ``--peak-tflops`` overrides the table (e.g. for an unlisted device).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

# device_kind substring -> (fp32 dense TFLOP/s, TF32 tensor-core dense TFLOP/s) per device.
PEAK_TFLOPS = {
    "H200": (67.0, 494.7),
    "H100 PCIe": (51.2, 378.0),
    "H100": (67.0, 494.7),  # SXM
    "A100": (19.5, 156.0),
    "L40S": (91.6, 183.0),
    "L4": (30.3, 60.0),
    "A10G": (31.2, 62.5),
    "V100": (15.7, 15.7),  # no TF32: tensor cores need fp16
    "T4": (8.1, 8.1),
}


def peak_for(device_kind: str) -> tuple[float, float] | None:
  """``(fp32, tf32)`` peak TFLOP/s of a device named ``device_kind`` (first match wins)."""
  for name, peak in PEAK_TFLOPS.items():
    if name.lower() in device_kind.lower():
      return peak
  return None


def summarise(results: list[dict], batch: int, steps: int,
              peak: tuple[float, float] | None) -> list[dict]:
  """Per part: images/s (attack or train images), TFLOP/s and MFU against ``peak``.

  ``results`` are ``bench_pgd.py --out`` rows (``part``, ``s_per_call``, ``flops``). The
  train step processes ``batch`` images per call (each with ``steps`` attack steps).
  """
  rows = []
  for r in results:
    if "s_per_call" not in r:
      rows.append({"part": r["part"], "error": r.get("error", "no timing")})
      continue
    tflops = r.get("flops", 0.0) / 1e12 / r["s_per_call"] if r.get("flops") else None
    row = {"part": r["part"], "s_per_call": r["s_per_call"],
           "images_per_s": batch / r["s_per_call"], "compile_s": r.get("compile_s"),
           "tflop_per_s": tflops, "batch": batch, "attack_steps": steps}
    if tflops is not None and peak:
      row["mfu_fp32"], row["mfu_tf32"] = tflops / peak[0], tflops / peak[1]
    rows.append(row)
  return rows


def _fmt(rows: list[dict], device: str) -> str:
  lines = [f"device: {device}", "",
           "| part | s/call | images/s | compile s | TFLOP/s | MFU vs fp32 | MFU vs TF32 |",
           "|---|---:|---:|---:|---:|---:|---:|"]
  for r in rows:
    if "error" in r:
      lines.append(f"| {r['part']} | error: {r['error'][:60]} | | | | | |")
      continue
    f = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    lines.append(f"| {r['part']} | {r['s_per_call']:.4f} | {r['images_per_s']:.0f} | "
                 f"{f(r['compile_s'], '.1f')} | {f(r['tflop_per_s'], '.1f')} | "
                 f"{f(r.get('mfu_fp32'), '.0%')} | {f(r.get('mfu_tf32'), '.0%')} |")
  return "\n".join(lines)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--batch", type=int, default=512)
  p.add_argument("--steps", type=int, default=10, help="PGD steps (default 10)")
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--peak-tflops", default="",
                 help="'FP32,TF32' peak TFLOP/s of one device (default: from the table)")
  p.add_argument("--allow-cpu", action="store_true", help="run even without a GPU")
  p.add_argument("--out", default="", help="write the summary as JSON here")
  args = p.parse_args(argv)

  import jax  # pylint: disable=g-import-not-at-top
  dev = jax.devices()[0]
  if dev.platform != "gpu" and not args.allow_cpu:
    print(f"error: JAX sees no GPU (default device: {dev.platform}); install the GPU build "
          f"(pip install -e '.[gpu]') or pass --allow-cpu", file=sys.stderr)
    return 2
  device = f"{jax.device_count()} x {dev.device_kind} ({dev.platform})"
  peak = (tuple(float(v) for v in args.peak_tflops.split(",")) if args.peak_tflops
          else peak_for(dev.device_kind))

  here = os.path.dirname(os.path.abspath(__file__))
  with tempfile.TemporaryDirectory() as tmp:
    raw = os.path.join(tmp, "bench.json")
    cmd = [sys.executable, os.path.join(here, "bench_pgd.py"), "--parts", "jax_pgd,jax_train",
           "--batch", str(args.batch), "--steps", str(args.steps), "--repeats",
           str(args.repeats), "--max-load", "1.0", "--out", raw]
    print("+", " ".join(cmd), flush=True)
    done = subprocess.run(cmd, check=False)
    if done.returncode or not os.path.exists(raw):
      print(f"error: bench_pgd.py failed (exit {done.returncode})", file=sys.stderr)
      return 1
    with open(raw, encoding="utf-8") as f:
      results = json.load(f)["results"]
  rows = summarise(results, args.batch, args.steps, peak)
  print()
  print(_fmt(rows, device))
  if peak is None:
    print(f"(no peak known for {dev.device_kind!r}: pass --peak-tflops FP32,TF32 for MFU)")
  if args.out:
    with open(args.out, "w", encoding="utf-8") as f:
      json.dump({"device": device, "peak_tflops": peak, "rows": rows}, f, indent=2)
  return 0


if __name__ == "__main__":
  sys.exit(main())
