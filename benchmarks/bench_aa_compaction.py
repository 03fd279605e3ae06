r"""AutoAttack with and without compaction, in one process, same model and points.

``run_autoattack(compact=False)`` attacks every still-robust point of a chunk to
an attack's last iteration, as the reference does; ``compact=True`` drops the
points an APGD pass has fooled at each of its step-size checkpoints and those a
Square pass has fooled every 250 queries (padded to a few fixed batch sizes). The
two must give identical robust flags and adversarial examples; the script checks it
and reports the wall time of each
(XLA compilation included, and reported separately: compaction compiles one
program per padded size).

Models:

* ``--model checkpoint --workdir DIR``: a trained jaxrobust run (e.g. the
  ``:local`` SimpleCNN, ``runs/local1``) on the first ``--n`` CIFAR-10 test
  points, as ``bench_autoattack.py``;
* ``--model linear_mnist`` (default): a linear MNIST classifier trained here in
  a few seconds (the cascade tests' model) on the first ``--n`` MNIST test points.

Usage::

    # small scale (a minute on 2 CPU cores)
    python benchmarks/bench_aa_compaction.py --model linear_mnist --n 256 --bs 128 \
        --eps 0.05 --attacks apgd_ce,apgd_t
    # the reference-scale comparison: :local model, 500 points, AA-standard
    python benchmarks/bench_aa_compaction.py --model checkpoint --workdir runs/local1 \
        --n 500 --bs 250 --attacks standard --out aa_compaction.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
  sys.path.insert(0, REPO_ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def linear_mnist(n: int):
  """``(logits_fn, x, y)``: a linear classifier, 60 full-batch GD steps on 2,000 MNIST
  training images; the first ``n`` test images."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jaxrobust.data import default_data_dir  # pylint: disable=g-import-not-at-top
  d = default_data_dir()
  with np.load(d / "mnist_train.npz") as f:
    xs = f["images"][:2000].astype(np.float32) / 255.0
    ys = f["labels"][:2000].astype(np.int32)

  def loss(wb):
    logits = xs.reshape(-1, 784) @ wb[0] + wb[1]
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), ys[:, None], -1))

  grad = jax.jit(jax.grad(loss))
  wb = (jnp.zeros((784, 10)), jnp.zeros(10))
  for _ in range(60):
    g = grad(wb)
    wb = (wb[0] - 0.5 * g[0], wb[1] - 0.5 * g[1])
  w, b = wb
  with np.load(d / "mnist_test.npz") as f:
    x = f["images"][:n].astype(np.float32) / 255.0
    y = f["labels"][:n].astype(np.int32)
  return (lambda z: z.reshape(z.shape[0], -1) @ w + b), x, y


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  p.add_argument("--model", choices=("linear_mnist", "checkpoint"), default="linear_mnist")
  p.add_argument("--workdir", default=os.path.join(REPO_ROOT, "runs", "local1"))
  p.add_argument("--which", default="best")
  p.add_argument("--n", type=int, default=256)
  p.add_argument("--bs", type=int, default=128)
  p.add_argument("--eps", type=float, default=None, help="default 8/255 (checkpoint), 0.05")
  p.add_argument("--attacks", default="apgd_ce,apgd_t",
                 help="'standard' (AA-standard) or a comma list of cascade attacks")
  p.add_argument("--apgd_steps", type=int, default=100)
  p.add_argument("--square_queries", type=int, default=5000)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--order", default="off,on", help="which runs, in order: off,on")
  p.add_argument("--out", default="")
  args = p.parse_args(argv)

  import jaxrobust  # pylint: disable=g-import-not-at-top,unused-import  (XLA:CPU defaults)
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jaxrobust.evaluate import autoattack as aa  # pylint: disable=g-import-not-at-top
  from _machine import busy_cpu_s, cpu_model, own_cpu_s  # pylint: disable=g-import-not-at-top

  if args.model == "linear_mnist":
    logits_fn, x, y = linear_mnist(args.n)
    eps = 0.05 if args.eps is None else args.eps
  else:
    import bench_autoattack as ba  # pylint: disable=g-import-not-at-top
    ns = argparse.Namespace(model="checkpoint", workdir=args.workdir, which=args.which,
                            model_seed=0, n=args.n, bs=args.bs)
    logits_fn, _, _, _ = ba.load_jax_model(ns)
    x, y, _, _ = ba.load_data(ns, logits_fn)
    y = y.astype(np.int32)
    eps = 8 / 255 if args.eps is None else args.eps
  overrides = dict(apgd_steps=args.apgd_steps, square_queries=args.square_queries)
  if args.attacks == "standard":
    s = aa.AutoAttackSettings.for_version(eps, "linf", "standard", **overrides)
  else:
    s = aa.AutoAttackSettings.for_version(eps, "linf", "custom",
                                          attacks=args.attacks.split(","), **overrides)

  compile_s = [0.0]

  def listener(event, duration, **kw):
    del kw
    if event == "/jax/core/compile/backend_compile_duration":
      compile_s[0] += duration
  jax.monitoring.register_event_duration_secs_listener(listener)

  runs = {}
  for mode in args.order.split(","):
    compile_s[0] = 0.0
    b0, o0, t0 = busy_cpu_s(), own_cpu_s(), time.time()
    res = aa.run_autoattack(logits_fn, x, y, s, batch_size=args.bs, seed=args.seed,
                            progress=False, compact=(mode == "on"))
    wall = time.time() - t0
    own = own_cpu_s() - o0
    runs[mode] = dict(seconds_total=round(wall, 2), seconds=res.seconds,
                      compile_seconds=round(compile_s[0], 2),
                      robust_accuracy=res.robust_accuracy,
                      foreign_cpu_s=round(max(0.0, busy_cpu_s() - b0 - own), 1), res=res)
  out = dict(model=args.model, n=len(x), bs=args.bs, eps=eps, attacks=list(s.attacks),
             apgd_steps=args.apgd_steps, cpu=cpu_model(), argv=sys.argv)
  if {"off", "on"} <= set(runs):
    a, b = runs["off"]["res"], runs["on"]["res"]
    out["identical_flags"] = bool(np.array_equal(a.robust, b.robust))
    out["identical_x_adv"] = bool(np.array_equal(a.x_adv, b.x_adv))
    out["speedup_total"] = round(runs["off"]["seconds_total"] / runs["on"]["seconds_total"], 2)
    out["speedup_without_compile"] = round(
        (runs["off"]["seconds_total"] - runs["off"]["compile_seconds"]) /
        (runs["on"]["seconds_total"] - runs["on"]["compile_seconds"]), 2)
  for mode, r in runs.items():
    r.pop("res")
    out[f"compact_{mode}"] = r
  text = json.dumps(out, indent=2)
  print(text)
  if args.out:
    with open(args.out, "w", encoding="utf-8") as f:
      f.write(text + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
