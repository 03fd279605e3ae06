r"""Train-mode BatchNorm on the CPU: flax ``nnx.BatchNorm``, jaxrobust's ``BatchNorm``, torch.

One BatchNorm layer at each PreAct-ResNet-18 stage shape (batch 128, NHWC), forward and
forward + input gradient, in train mode (batch statistics, running averages updated) and,
for reference, eval mode; milliseconds, median of ``--repeats`` calls after one warm-up.
``--torch_python PATH`` also times ``torch.nn.BatchNorm2d`` (NCHW and channels_last) in a
child process under PATH (an interpreter with torch and numpy), with the same threads.

Usage::

    python benchmarks/bench_bn.py --torch_python /path/to/torch-venv/bin/python --out bn.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

SHAPES = [(128, 32, 32, 64), (128, 16, 16, 128), (128, 8, 8, 256), (128, 4, 4, 512)]
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _machine import call_times  # noqa: E402


def _median_ms(fn, repeats):
  return round(1e3 * statistics.median(call_times(fn, repeats)), 2)


def run_jax(repeats):
  sys.path.insert(0, REPO_ROOT)
  import jaxrobust  # noqa: F401  (XLA:CPU defaults)
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from jaxrobust.models import layers  # pylint: disable=g-import-not-at-top

  def programs(cls, c, train):
    bn = cls(c, momentum=layers.BN_MOMENTUM, epsilon=layers.BN_EPS, rngs=nnx.Rngs(0))
    bn.train() if train else bn.eval()
    g, p, st = nnx.split(bn, nnx.Param, nnx.BatchStat)

    def fwd(x, p, st):
      m = nnx.merge(g, p, st, copy=True)
      return m(x), nnx.state(m, nnx.BatchStat)

    def fwd_dx(x, gy, p, st):
      return jax.grad(lambda z: jnp.sum(fwd(z, p, st)[0] * gy))(x)
    return jax.jit(fwd), jax.jit(fwd_dx), p, st

  rows = []
  for shape in SHAPES:
    x = jax.random.normal(jax.random.key(0), shape)
    gy = jax.random.normal(jax.random.key(1), shape)
    for impl, cls, train in (("flax train", nnx.BatchNorm, True),
                             ("jaxrobust train", layers.BatchNorm, True),
                             ("jaxrobust eval", layers.BatchNorm, False)):
      f, fdx, p, st = programs(cls, shape[-1], train)
      rows.append(dict(shape=shape, impl=impl,
                       fwd_ms=_median_ms(lambda: jax.block_until_ready(f(x, p, st)), repeats),
                       fwd_dx_ms=_median_ms(
                           lambda: jax.block_until_ready(fdx(x, gy, p, st)), repeats)))
      print(rows[-1], flush=True)
  return rows


def run_torch(repeats, threads):
  import torch  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(threads)
  rows = []
  for n, h, w, c in SHAPES:
    for layout in ("nchw", "channels_last"):
      x = torch.randn(n, c, h, w)
      if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
      gy = torch.randn_like(x)
      for mode in ("train", "eval"):
        bn = torch.nn.BatchNorm2d(c)
        bn.train(mode == "train")

        def fwd_dx():
          xr = x.detach().requires_grad_(True)
          bn(xr).backward(gy)
          return xr.grad
        with torch.no_grad():
          f = _median_ms(lambda: bn(x), repeats)
        rows.append(dict(shape=(n, h, w, c), impl=f"torch {layout} {mode}", fwd_ms=f,
                         fwd_dx_ms=_median_ms(fwd_dx, repeats)))
        print(rows[-1], flush=True)
  return rows


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads")
  p.add_argument("--torch_python", "--torch-python", dest="torch_python", default="",
                 help="interpreter with torch (a separate virtualenv); default: no torch rows")
  p.add_argument("--child_torch", action="store_true", help=argparse.SUPPRESS)
  p.add_argument("--out", default="")
  args = p.parse_args(argv)
  if args.child_torch:
    print("@@RESULT " + json.dumps(run_torch(args.repeats, args.threads)), flush=True)
    return 0
  rows = run_jax(args.repeats)
  if args.torch_python:
    proc = subprocess.run([args.torch_python, os.path.abspath(__file__), "--child_torch",
                           "--repeats", str(args.repeats), "--threads", str(args.threads)],
                          capture_output=True, text=True, check=False)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("@@RESULT ")]
    if not lines:
      print(f"torch child failed: {proc.stderr.strip()[-500:]}", file=sys.stderr)
      return 1
    rows += json.loads(lines[-1][len("@@RESULT "):])
  print("| shape | implementation | fwd ms | fwd+dx ms |\n| --- | --- | ---: | ---: |")
  for r in rows:
    print(f"| {'x'.join(map(str, r['shape']))} | {r['impl']} | {r['fwd_ms']} | {r['fwd_dx_ms']} |")
  if args.out:
    with open(args.out, "w", encoding="utf-8") as f:
      json.dump(dict(rows=rows, argv=sys.argv), f, indent=2)
  return 0


if __name__ == "__main__":
  sys.exit(main())
