r"""Wall time of RiFT's MRC sweep and how it scales with the number of modules.

Runs :func:`jaxrobust.rift.mrc_sweep` on a model from the registry (random
weights; the cost does not depend on them) over a fixed set of ``--n`` images
with the official settings (xi 0.1, 10 ascent epochs, batch 512, unless
overridden), and reports per module: seconds (the first module of each
kernel shape includes compilation of the two programs of its shape group),
and in total: modules, distinct shapes, compile-inclusive and steady-state
seconds per module.

Usage::

    python benchmarks/bench_mrc.py --model preact_resnet18_w16 --n 512 --out bench_mrc.json
    python benchmarks/bench_mrc.py --model simple_cnn --n 1000
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(args):
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jaxrobust.methods import ModelFns  # pylint: disable=g-import-not-at-top
  from jaxrobust.models import create_model  # pylint: disable=g-import-not-at-top
  from jaxrobust.rift import MRCSettings, list_modules, mrc_sweep  # pylint: disable=g-import-not-at-top
  from jaxrobust.train import split_model  # pylint: disable=g-import-not-at-top

  graphdef, params, batch_stats = split_model(create_model(args.model, seed=0, num_classes=10))
  gen = np.random.default_rng(0)
  x = gen.uniform(size=(args.n, 32, 32, 3)).astype(np.float32)
  y = gen.integers(0, 10, args.n).astype(np.int32)
  modules = list_modules(params, args.include)
  settings = MRCSettings(num_epochs=args.epochs, batch_size=args.batch)
  t0 = time.perf_counter()
  rows = mrc_sweep(ModelFns(graphdef), params, batch_stats, x, y, modules, settings,
                   progress=False)
  total = time.perf_counter() - t0
  seen, first, rest = set(), [], []
  for r in rows:
    (rest if r.shape in seen else first).append(r.seconds)
    seen.add(r.shape)
  out = {"model": args.model, "n": args.n, "epochs": args.epochs, "batch": args.batch,
         "modules": len(rows), "shapes": len(seen), "total_s": round(total, 2),
         "first_of_shape_s_median": round(statistics.median(first), 2),
         "repeat_shape_s_median": round(statistics.median(rest), 2) if rest else None,
         "per_module": [{"name": r.name, "shape": list(r.shape), "seconds": round(r.seconds, 2)}
                        for r in rows],
         "jax": jax.__version__, "backend": jax.default_backend(), "cpus": os.cpu_count()}
  print(json.dumps({k: v for k, v in out.items() if k != "per_module"}, indent=1))
  if args.out:
    with open(args.out, "w", encoding="utf-8") as f:
      json.dump(out, f, indent=2)


if __name__ == "__main__":
  p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  p.add_argument("--model", default="preact_resnet18_w16")
  p.add_argument("--n", type=int, default=512)
  p.add_argument("--epochs", type=int, default=10)
  p.add_argument("--batch", type=int, default=512)
  p.add_argument("--include", default="")
  p.add_argument("--out", default="")
  sys.path.insert(0, REPO_ROOT)
  import jaxrobust  # noqa: F401,E402  pylint: disable=g-import-not-at-top,unused-import
  main(p.parse_args())
