"""Evaluation CLI.

    python -m jaxrobust.evaluate --workdir DIR [--which best|latest]
        [--attacks clean,fgsm,pgd20,pgd20_trades,cw30] [--n-examples 1000]
        [--eps 0.03137] [--norm linf] [--out report.json]

Restores the model trained in ``DIR`` (its ``config.json`` and checkpoints),
evaluates it on the first ``n`` test images (exact pixels only) in eval-mode
BatchNorm, prints a table and writes a JSON report.
"""
from jaxrobust.cli import apply_cpu_defaults, run_main

apply_cpu_defaults()

from absl import flags  # noqa: E402  pylint: disable=g-import-not-at-top

from jaxrobust.evaluate.suite import DEFAULT_SUITE  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir (config.json + checkpoints).")
_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None, "A checkpoint step directory, <workdir>/checkpoints/{best,latest}/<step>.")
_WHICH = flags.DEFINE_enum("which", "best", ["best", "latest"], "Checkpoint to evaluate.")
_ATTACKS = flags.DEFINE_list("attacks", list(DEFAULT_SUITE), "Evaluations to run.")
_N = flags.DEFINE_integer("n_examples", 1000, "First n test images (exact ones only).")
_EPS = flags.DEFINE_float("eps", None, "Budget in pixel units (default 8/255 L-inf, 0.5 L2).")
_NORM = flags.DEFINE_enum("norm", "linf", ["linf", "l2"], "Threat model.")
_BATCH = flags.DEFINE_integer("batch_size", 0, "Eval batch size (0: config.eval.batch_size).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the attacks' random starts.")
_OUT = flags.DEFINE_string("out", None, "JSON report path (default <workdir>/eval_<which>.json).")
_EMA = flags.DEFINE_bool("ema", True, "Evaluate the EMA weights when the run kept them.")


def main(argv):
  import json  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top

  import jax  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top

  from jaxrobust import parallel  # pylint: disable=g-import-not-at-top
  from jaxrobust.checkpoint import Checkpointer  # pylint: disable=g-import-not-at-top
  from jaxrobust.data import load_split  # pylint: disable=g-import-not-at-top
  from jaxrobust.errors import CheckpointError, ConfigError  # pylint: disable=g-import-not-at-top
  from jaxrobust.evaluate.evaluators import evaluate_model, exact_subset  # pylint: disable=g-import-not-at-top
  from jaxrobust.evaluate.suite import suite_attacks  # pylint: disable=g-import-not-at-top
  from jaxrobust.methods import ModelFns  # pylint: disable=g-import-not-at-top
  from jaxrobust.train.builders import build_model, model_fingerprint  # pylint: disable=g-import-not-at-top
  from jaxrobust.train.defaults import default_config  # pylint: disable=g-import-not-at-top
  from jaxrobust.train.optim import make_optimizer  # pylint: disable=g-import-not-at-top
  from jaxrobust.train.state import create_train_state  # pylint: disable=g-import-not-at-top

  if len(argv) > 1:
    raise ConfigError(f"unexpected arguments {argv[1:]}")
  parallel.init_distributed()
  workdir, which, step = _WORKDIR.value, _WHICH.value, None
  if _CHECKPOINT.value:
    path = os.path.abspath(_CHECKPOINT.value.rstrip("/"))
    which, step = os.path.basename(os.path.dirname(path)), os.path.basename(path)
    if which not in ("best", "latest") or not step.isdigit():
      raise ConfigError(f"--checkpoint {path} is not <workdir>/checkpoints/{{best,latest}}/<step>")
    step = int(step)
    workdir = os.path.dirname(os.path.dirname(os.path.dirname(path)))
  if not workdir:
    raise ConfigError("pass --workdir DIR (a training workdir) or --checkpoint PATH")
  cfg_path = os.path.join(workdir, "config.json")
  if not os.path.isfile(cfg_path):
    raise CheckpointError(f"{cfg_path} not found: --workdir must be a directory written by "
                          f"python -m jaxrobust.train")
  with open(cfg_path, encoding="utf-8") as f:
    saved = json.load(f)
  config = default_config()
  config.unlock()
  config.update_from_flattened_dict(_flatten(saved))
  config = ml_collections.ConfigDict(config)

  attacks = suite_attacks(_ATTACKS.value, _EPS.value, _NORM.value)
  test = load_split(config.data.name, "test", config.data.source, config.data.data_dir or None)
  test = exact_subset(test, _N.value)
  mesh = parallel.make_mesh(config.num_devices or None)
  model = build_model(config, test.image_shape)
  tx = make_optimizer(config.train, 1, 1)
  graphdef, state = create_train_state(model, tx, 0, ema=config.train.ema_decay > 0)
  state = parallel.replicate(state, mesh)
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
  restored = ckpt.restore(state, which, step,
                          expect_meta={"model": model_fingerprint(config, test.image_shape)})
  if restored is None:
    raise CheckpointError(f"no {which} checkpoint in {workdir}/checkpoints; train first or "
                          f"use --which latest")
  state, meta = restored
  params = state.ema_params if (_EMA.value and state.ema_params is not None) else state.params
  batch = _BATCH.value or config.eval.batch_size
  report = {"workdir": os.path.abspath(workdir), "checkpoint": which, "step": int(state.step),
            "n_examples": len(test), "norm": _NORM.value, "attacks": attacks,
            "ema": params is state.ema_params, "accuracy": {}, "seconds": {}}
  for name, cfg in attacks.items():
    t0 = time.time()
    acc = evaluate_model(ModelFns(graphdef), params, state.batch_stats, test, {name: cfg},
                         batch, mesh, _SEED.value, desc=name)
    report["accuracy"][name] = acc[name]
    report["seconds"][name] = round(time.time() - t0, 2)
    print(f"{name:>14s}: {100 * acc[name]:6.2f} %   ({report['seconds'][name]:.1f} s)",
          flush=True)
  out = _OUT.value or os.path.join(workdir, f"eval_{which}.json")
  if jax.process_index() == 0:
    with open(out, "w", encoding="utf-8") as f:
      json.dump(report, f, indent=2)
    print(f"report written to {out}")
  ckpt.close()
  del meta


def _flatten(d, prefix=""):
  out = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, dict) and k not in ("attack", "val_attack", "test_attack"):
      out.update(_flatten(v, key + "."))
    else:
      out[key] = tuple(v) if isinstance(v, list) else v
  return out


def run():
  run_main(main)


if __name__ == "__main__":
  run()
