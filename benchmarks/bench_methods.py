r"""Train-step throughput of every training method relative to PGD-AT (CPU or any backend).

Each method's *full* config (``configs/cifar10_<method>.py``: its official inner
maximisation, e.g. PGD-10 for PGD-AT / TRADES / MART / AWP / ARD / IAD / RSLAD,
FGSM for FGSM-AT) is built into the trainer's own jitted step
(``make_train_step`` + ``jit_train_step``) with the model and batch size given
here; distillation methods get a randomly initialised teacher of
``--teacher_model`` (its weights do not change the cost). Every method is timed
in the same process: one compile, ``--warmup`` calls, then the median of
``--repeats`` calls. The ratio column is steps/s divided by PGD-AT's.

Usage::

    python benchmarks/bench_methods.py --model simple_cnn --batch 128 --out bench_methods.json
    python benchmarks/bench_methods.py --model preact_resnet18 --batch 32 --repeats 3
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHOD_CONFIGS = {  # name -> (config file, arg)
    "standard": ("cifar10_pgd_at", None),
    "fgsm_at": ("cifar10_pgd_at", "local"),
    "pgd_at": ("cifar10_pgd_at", None),
    "trades": ("cifar10_trades", None),
    "mart": ("cifar10_mart", None),
    "awp": ("cifar10_awp", None),
    "ard_distill": ("cifar10_ard", None),
    "iad": ("cifar10_iad", None),
    "rslad": ("cifar10_rslad", None),
}


def load_config(name: str, arg):
  path = os.path.join(REPO_ROOT, "configs", f"{name}.py")
  spec = importlib.util.spec_from_file_location(f"cfg_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def method_config(method: str, model: str, batch: int):
  """The method's full config with the benchmark model, batch and (for fgsm_at) attack."""
  c = load_config(*METHOD_CONFIGS[method])
  c.unlock()
  c.model.name = model
  c.model.normalize = "cifar10"
  c.train.batch_size = batch
  if method == "standard":
    from jaxrobust.methods import method_config  # pylint: disable=g-import-not-at-top
    c.method = method_config("standard")
  if method == "fgsm_at":
    c.model.name = model  # :local set simple_cnn; keep the benchmark model.
  c.lock()
  from jaxrobust.train import resolve_config  # pylint: disable=g-import-not-at-top
  return resolve_config(c)  # attacks with config.eps filled in, as the trainer runs them.


def build_step(config, steps_per_epoch: int = 390):
  """(jitted step, state, batch) exactly as the trainer builds them."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from jaxrobust import parallel  # pylint: disable=g-import-not-at-top
  from jaxrobust.methods import ModelFns, method_from_config, num_teachers  # pylint: disable=g-import-not-at-top
  from jaxrobust.train.builders import build_model  # pylint: disable=g-import-not-at-top
  from jaxrobust.train.optim import make_optimizer  # pylint: disable=g-import-not-at-top
  from jaxrobust.train.state import create_train_state, split_model  # pylint: disable=g-import-not-at-top
  from jaxrobust.train.step import jit_train_step, make_train_step  # pylint: disable=g-import-not-at-top

  mesh = parallel.make_mesh(1)
  shape = (32, 32, 3)
  model = build_model(config, shape)
  tx = make_optimizer(config.train, 100 * steps_per_epoch, steps_per_epoch)
  teachers, frozen = (), None
  n = num_teachers(config.method)
  if n:
    tcfg = config.copy_and_resolve_references()
    tcfg.model.name = ARGS.teacher_model
    tgraph, tparams, tstats = split_model(build_model(tcfg, shape, seed=1))
    teachers = (ModelFns(tgraph),) * n
    frozen = {"params": tparams, "batch_stats": tstats}
    if n == 2:
      frozen["natural"] = {"params": tparams, "batch_stats": tstats}
  graphdef, state = create_train_state(model, tx, config.seed, frozen=frozen)
  method = method_from_config(config.method, steps_per_epoch=steps_per_epoch, teachers=teachers,
                              weight_decay=config.train.weight_decay)
  # Past every warm-up (AWP, IAD's introspection) so the full method is timed.
  state = state.replace(step=jax.numpy.asarray(10 ** 6, jax.numpy.int32))
  state = parallel.replicate(state, mesh)
  step = jit_train_step(make_train_step(ModelFns(graphdef), method, tx), mesh)
  gen = np.random.default_rng(0)
  batch = parallel.global_batch(
      {"image": gen.integers(0, 256, (config.train.batch_size,) + shape, dtype=np.uint8),
       "label": gen.integers(0, 10, config.train.batch_size).astype(np.int32)}, mesh)
  del nnx
  return step, state, batch


def time_method(method: str) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  config = method_config(method, ARGS.model, ARGS.batch)
  step, state, batch = build_step(config)
  t0 = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  compile_s = time.perf_counter() - t0
  for _ in range(ARGS.warmup):
    state, m = compiled(state, batch)
    jax.block_until_ready(m)
  times = []
  for _ in range(ARGS.repeats):
    t0 = time.perf_counter()
    state, m = compiled(state, batch)
    jax.block_until_ready(m)
    times.append(time.perf_counter() - t0)
  med = statistics.median(times)
  attack = {} if method == "standard" else dict(config.method.attack)
  return {"method": method, "attack": attack.get("name", "-"),
          "inner_steps": attack.get("num_steps", 1 if attack else 0),
          "compile_s": round(compile_s, 2), "step_s": round(med, 4),
          "steps_per_s": round(1.0 / med, 3), "all_s": [round(t, 4) for t in times]}


def main():
  import jax  # pylint: disable=g-import-not-at-top
  rows = []
  for method in ARGS.methods.split(","):
    row = time_method(method)
    rows.append(row)
    print(json.dumps(row), flush=True)
  base = next((r for r in rows if r["method"] == "pgd_at"), None)
  for r in rows:
    r["vs_pgd_at"] = round(r["steps_per_s"] / base["steps_per_s"], 3) if base else None
  out = {"model": ARGS.model, "teacher_model": ARGS.teacher_model, "batch": ARGS.batch,
         "repeats": ARGS.repeats, "jax": jax.__version__, "backend": jax.default_backend(),
         "cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
         "xla_flags": os.environ.get("XLA_FLAGS", ""), "rows": rows}
  print(f"\n{'method':<12} {'attack':<8} {'steps':>5} {'compile s':>9} {'step s':>8} "
        f"{'steps/s':>8} {'vs PGD-AT':>9}")
  for r in rows:
    print(f"{r['method']:<12} {r['attack']:<8} {r['inner_steps']:>5} {r['compile_s']:>9} "
          f"{r['step_s']:>8} {r['steps_per_s']:>8} {r['vs_pgd_at']:>9}")
  if ARGS.out:
    with open(ARGS.out, "w", encoding="utf-8") as f:
      json.dump(out, f, indent=2)


if __name__ == "__main__":
  p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  p.add_argument("--model", default="simple_cnn")
  p.add_argument("--teacher_model", default="simple_cnn")
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--methods", default=",".join(METHOD_CONFIGS))
  p.add_argument("--warmup", type=int, default=1)
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--out", default="")
  ARGS = p.parse_args()
  sys.path.insert(0, REPO_ROOT)
  import jaxrobust  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  main()
