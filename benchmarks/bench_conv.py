r"""How close do the convolutions of PreAct-ResNet-18 run to this CPU's peak?

A 1.5x lead over PyTorch for PGD-10 / PGD-AT throughput on the
same CPU needs faster convolutions. Both frameworks spend nearly all of that time in 3x3 convolutions, so
this script measures, per distinct 3x3 stride-1 convolution of the network (at
the attack's batch size):

* the FP32 matrix-multiply peak each framework reaches on this machine
  (square SGEMM, 2048 and 4096): the practical ceiling of direct convolution;
* forward, forward + input gradient (what an attack step needs) and forward +
  input + weight gradient (a training step) for
  - ``jax``: ``jaxrobust.models.layers.conv_general_dilated`` (the library's
    CPU convolution, NHWC/HWIO, custom input-gradient VJP), jitted;
  - ``torch``: ``torch.nn.functional.conv2d``, NCHW and channels_last;
  - ``winograd2`` / ``winograd4``: a pure-JAX Winograd F(2x2,3x3) / F(4x4,3x3)
    convolution (Lavin & Gray 2016) differentiated by JAX -- the one way to
    need fewer FLOPs than direct convolution, tried here as a prototype, not
    used by the library;
* achieved GFLOP/s = direct-convolution FLOPs / time (so for Winograd it is an
  *effective* rate) and its fraction of the measured JAX SGEMM peak.

Each framework runs in its own process with the same thread count. Usage::

    python benchmarks/bench_conv.py --batch 128 --out conv.json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
  sys.path.insert(0, REPO_ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _machine import call_times  # noqa: E402

# (spatial size, channels) of PreAct-ResNet-18's 3x3 stride-1 convolutions on
# 32x32 inputs; each occurs 3-4 times in the network.
LAYERS = ((32, 64), (16, 128), (8, 256), (4, 512))
IMPLS = ("jax", "torch_nchw", "torch_channels_last", "winograd2", "winograd4")


def _best(fn, repeats):
  return min(call_times(fn, repeats))


# --- Winograd prototype (Lavin & Gray, "Fast Algorithms for Convolutional
# Neural Networks", CVPR 2016, eqs. 7-8 and the F(4,3) matrices of their
# Section 4.2). Y = A^T [(G g G^T) * (B^T d B)] A per tile.

def _winograd_matrices(m):
  import numpy as np
  if m == 2:
    bt = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]
    g = [[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]]
    at = [[1, 1, 1, 0], [0, 1, -1, -1]]
  elif m == 4:
    bt = [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
          [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]]
    g = [[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
         [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]]
    at = [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]
  else:
    raise ValueError(f"Winograd output tile m must be 2 or 4, got {m}")
  return (np.asarray(bt, np.float32), np.asarray(g, np.float32), np.asarray(at, np.float32))


def _combine(mat, parts):
  """Rows of ``mat @ parts`` as sums of the parts (coefficients are constants)."""
  out = []
  for row in mat:
    acc = None
    for coef, part in zip(row, parts):
      if coef == 0:
        continue
      term = part if coef == 1 else (-part if coef == -1 else float(coef) * part)
      acc = term if acc is None else acc + term
    out.append(acc)
  return out


def winograd_conv(x, w, m):
  """3x3, stride 1, SAME convolution of NHWC ``x`` with HWIO ``w`` by Winograd F(m, 3)."""
  import jax.numpy as jnp
  from jax import lax
  bt, g, at = _winograd_matrices(m)
  a = m + 2
  n, h, wd, _ = x.shape
  th, tw = -(-h // m), -(-wd // m)
  xp = jnp.pad(x, ((0, 0), (1, th * m + 1 - h), (1, tw * m + 1 - wd), (0, 0)))
  rows = _combine(bt, [xp[:, i:i + m * th:m] for i in range(a)])
  v = [t for r in rows for t in _combine(bt, [r[:, :, j:j + m * tw:m] for j in range(a)])]
  v = jnp.stack(v).reshape(a * a, n * th * tw, x.shape[-1])
  u = jnp.einsum("pi,ijco,qj->pqco", g, w, g).reshape(a * a, w.shape[2], w.shape[3])
  prod = lax.dot_general(v, u, (((2,), (1,)), ((0,), (0,)))).reshape(a, a, n, th, tw, -1)
  y_rows = _combine(at, [prod[p] for p in range(a)])
  y = [_combine(at, [yr[q] for q in range(a)]) for yr in y_rows]
  y = jnp.stack([jnp.stack(r, axis=3) for r in y], axis=2)
  return y.reshape(n, th * m, tw * m, -1)[:, :h, :wd]


def run_jax(args):
  import jax
  import jax.numpy as jnp
  import jaxrobust  # noqa: F401  (applies the library's XLA:CPU defaults)
  from jax import lax
  from jaxrobust.models.layers import conv_general_dilated

  def library(x, w):
    return conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)),
                                dimension_numbers=("NHWC", "HWIO", "NHWC"))

  def block(fn):
    return lambda *a: jax.block_until_ready(fn(*a))

  res = {"sgemm": {}}
  for s in (2048, 4096):
    a = jnp.ones((s, s), jnp.float32)
    mm = jax.jit(lambda p, q: p @ q)
    res["sgemm"][s] = 2 * s**3 / _best(lambda: block(mm)(a, a), args.repeats) / 1e9
  rows = []
  key = jax.random.PRNGKey(0)
  for hw, c in LAYERS:
    x = jax.random.uniform(key, (args.batch, hw, hw, c), jnp.float32)
    w = 0.05 * jax.random.normal(key, (3, 3, c, c), jnp.float32)
    ref = lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
    impls = {"jax": library, "winograd2": lambda x, w: winograd_conv(x, w, 2),
             "winograd4": lambda x, w: winograd_conv(x, w, 4)}
    for name in args.impls:
      if name not in impls:
        continue
      f = impls[name]
      fwd = jax.jit(f)
      dx = jax.jit(jax.grad(lambda x, w: jnp.sum(f(x, w) ** 2)))
      dxdw = jax.jit(jax.grad(lambda x, w: jnp.sum(f(x, w) ** 2), argnums=(0, 1)))
      err = float(jnp.max(jnp.abs(fwd(x, w) - ref)) / jnp.max(jnp.abs(ref)))
      rows.append(dict(impl=name, hw=hw, c=c, rel_err=err,
                       fwd=_best(lambda: block(fwd)(x, w), args.repeats),
                       fwd_dx=_best(lambda: block(dx)(x, w), args.repeats),
                       fwd_dx_dw=_best(lambda: block(dxdw)(x, w), args.repeats)))
      print(rows[-1], flush=True)
  res["rows"] = rows
  return res


def run_torch(args):
  import torch
  torch.set_num_threads(args.threads)
  res = {"sgemm": {}}
  for s in (2048, 4096):
    a = torch.ones(s, s)
    res["sgemm"][s] = 2 * s**3 / _best(lambda: a @ a, args.repeats) / 1e9
  rows = []
  gen = torch.Generator().manual_seed(0)
  for layout in ("nchw", "channels_last"):
    name = f"torch_{layout}"
    if name not in args.impls:
      continue
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    for hw, c in LAYERS:
      x = torch.rand(args.batch, c, hw, hw, generator=gen).to(memory_format=fmt)
      w = (0.05 * torch.randn(c, c, 3, 3, generator=gen)).to(memory_format=fmt)

      def fwd():
        with torch.no_grad():
          torch.nn.functional.conv2d(x, w, padding=1)

      def grad(wrt_w):
        xx = x.detach().requires_grad_(True)
        ww = w.detach().requires_grad_(wrt_w)
        (torch.nn.functional.conv2d(xx, ww, padding=1) ** 2).sum().backward()

      rows.append(dict(impl=name, hw=hw, c=c, rel_err=0.0,
                       fwd=_best(fwd, args.repeats),
                       fwd_dx=_best(lambda: grad(False), args.repeats),
                       fwd_dx_dw=_best(lambda: grad(True), args.repeats)))
      print(rows[-1], flush=True)
  res["rows"] = rows
  return res


def _child(framework, args):
  cmd = [sys.executable, os.path.abspath(__file__), "--child", framework,
         "--batch", str(args.batch), "--repeats", str(args.repeats),
         "--threads", str(args.threads), "--impls", ",".join(args.impls)]
  out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
  return json.loads(out.strip().splitlines()[-1])


def table(results, batch):
  peak = results["jax"]["sgemm"]["4096"] if "jax" in results else None
  lines = ["SGEMM peak (4096^2, GFLOP/s): " + ", ".join(
      f"{k} {v['sgemm']['4096']:.0f}" for k, v in results.items()), "",
           "| layer (HxW, C) | impl | fwd ms | fwd+dx ms | fwd+dx+dw ms | fwd GFLOP/s | "
           "fwd+dx GFLOP/s | fwd+dx+dw GFLOP/s | fwd+dx % of peak | rel. err |",
           "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
  rows = [r for v in results.values() for r in v["rows"]]
  rows.sort(key=lambda r: (-r["hw"], IMPLS.index(r["impl"])))
  for r in rows:
    flop = 2 * batch * r["hw"] ** 2 * r["c"] ** 2 * 9 / 1e9  # one direct conv
    g = [flop * k / r[t] for k, t in ((1, "fwd"), (2, "fwd_dx"), (3, "fwd_dx_dw"))]
    pct = f"{100 * g[1] / peak:.0f}" if peak else "-"
    lines.append(f"| {r['hw']}x{r['hw']}, {r['c']} | {r['impl']} | {1e3 * r['fwd']:.1f} | "
                 f"{1e3 * r['fwd_dx']:.1f} | {1e3 * r['fwd_dx_dw']:.1f} | {g[0]:.0f} | "
                 f"{g[1]:.0f} | {g[2]:.0f} | {pct} | {r['rel_err']:.1e} |")
  return "\n".join(lines)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
  p.add_argument("--impls", default=",".join(IMPLS))
  p.add_argument("--out", default="")
  p.add_argument("--child", default="", help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  args.impls = [s for s in args.impls.split(",") if s]
  bad = [s for s in args.impls if s not in IMPLS]
  if bad:
    p.error(f"unknown impl(s) {bad}; choose from {IMPLS}")
  if args.child:
    res = run_jax(args) if args.child == "jax" else run_torch(args)
    print(json.dumps(res))
    return 0
  results = {}
  if any(not i.startswith("torch") for i in args.impls):
    results["jax"] = _child("jax", args)
  if any(i.startswith("torch") for i in args.impls):
    results["torch"] = _child("torch", args)
  print(table(results, args.batch))
  if args.out:
    with open(args.out, "w", encoding="utf-8") as f:
      json.dump({"batch": args.batch, "threads": args.threads, "results": results}, f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
