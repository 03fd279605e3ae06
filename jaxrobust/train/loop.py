"""``train_and_evaluate(config, workdir)``: the one readable trainer.

Sections: mesh -> data -> model and optimiser -> restore -> step -> loop with
periodic validation and checkpoints -> final test evaluation.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time

import jax
import numpy as np
import tqdm
from flax import nnx

from jaxrobust import parallel
from jaxrobust.checkpoint import Checkpointer, NonFiniteStateError
from jaxrobust.data import TrainIterator
from jaxrobust.errors import ConfigError, NonFiniteLossError, Preempted
from jaxrobust.accuracy import attacks_from_config, evaluate_accuracy, make_eval_step
from jaxrobust.methods import method_from_config, method_settings, num_teachers
from jaxrobust.models import ModelFns
from jaxrobust.models.pretrained import load_pretrained_into
from jaxrobust.train.builders import build_model, build_splits, image_shape_of, model_fingerprint
from jaxrobust.train.defaults import effective_attacks, resolve_config, validate_config
from jaxrobust.train.optim import make_optimizer
from jaxrobust.train.preemption import PreemptionGuard, WorkdirLock
from jaxrobust.train.restore import load_trained
from jaxrobust.train.semisup import train_iterator
from jaxrobust.train.state import create_train_state
from jaxrobust.train.step import jit_train_step, make_train_step
from jaxrobust.train.swa import collects_after_epoch, swa_update
from jaxrobust.train.weight_distance import as_metrics, jit_relative_distances
from jaxrobust.utils import MetricWriter

log = logging.getLogger("jaxrobust")


def _save_config(config, workdir):
  path = os.path.join(workdir, "config.json")
  with open(path, "w", encoding="utf-8") as f:
    f.write(config.to_json_best_effort(indent=2))


def _summarise(sums: dict) -> dict:
  sums = jax.device_get(sums)
  n = max(float(sums.pop("count")), 1.0)
  sums.pop("nonfinite", None)
  return {f"train/{k}": float(v) / n for k, v in sums.items()}


def _params_for_eval(state):
  return state.ema_params if state.ema_params is not None else state.params


def load_teachers(config, mesh) -> tuple[tuple, dict | None]:
  """Distillation teachers named by ``config.method`` -> ``(teacher ModelFns, frozen)``.

  ``frozen = {'params', 'batch_stats'}`` of ``teacher_workdir`` (its
  ``teacher_which`` checkpoint, EMA weights if it kept them), plus
  ``frozen['natural']`` for IAD-II's ``teacher2_workdir``; ``((), None)`` when
  the method needs no teacher. ``teacher_dtype`` rebuilds the teacher's graph
  with that compute dtype (weights unchanged).

  Raises:
    ConfigError: a missing teacher workdir or a teacher for other data.
    CheckpointError: an unreadable teacher run.
  """
  n = num_teachers(config.method)
  if not n:
    return (), None
  _, m = method_settings(config.method)
  which, dtype = m.get("teacher_which", "best"), m.get("teacher_dtype", "")
  dirs = [("teacher_workdir", m.get("teacher_workdir", "")),
          ("teacher2_workdir", m.get("teacher2_workdir", ""))][:n]
  fns, frozen = [], None
  for key, workdir in dirs:
    if not workdir:
      raise ConfigError(f"method {m['name']!r} needs a teacher: set --config.method.{key}=DIR, "
                        f"the --workdir of a finished python -m jaxrobust.train run")
    t = load_trained(workdir, which, mesh=mesh)
    if t.config.data.name != config.data.name:
      raise ConfigError(f"the teacher in {workdir} was trained on {t.config.data.name!r}, "
                        f"this run uses {config.data.name!r}")
    graphdef = t.model_fns.graphdef
    if dtype and dtype != t.config.model.dtype:
      tcfg = t.config.copy_and_resolve_references()
      tcfg.model.dtype = dtype
      shape = image_shape_of(tcfg)
      abstract = nnx.eval_shape(lambda c=tcfg, s=shape: build_model(c, s))
      graphdef = nnx.split(abstract, nnx.Param, nnx.BatchStat)[0]
    log.info("teacher %s: %s, step %d", workdir, t.config.model.name, t.step)
    fns.append(ModelFns(graphdef))
    weights = {"params": t.params, "batch_stats": t.batch_stats}
    if frozen is None:
      frozen = weights
    else:
      frozen["natural"] = weights
  return tuple(fns), frozen


def init_from_run(config, state, tx, fingerprint: str, mesh):
  """``state`` with the weights of ``config.train.init_from`` (fine-tuning start).

  Parameters and BatchNorm running averages come from that run's
  ``init_which`` checkpoint (its EMA weights if it kept them, as evaluated);
  the step, optimiser state (re-initialised) and PRNG stay fresh.

  Raises:
    ConfigError: the run's architecture differs from this config's.
    CheckpointError: an unreadable run.
  """
  t = config.train
  src = load_trained(t.init_from, t.init_which, mesh=mesh)
  src_fp = model_fingerprint(src.config, image_shape_of(src.config))
  if src_fp != fingerprint:
    raise ConfigError(f"config.train.init_from={t.init_from!r} holds a {src_fp} model but this "
                      f"config builds {fingerprint}; set config.model to match")
  log.info("initialised from %s (%s checkpoint, step %d)", t.init_from, src.which, src.step)
  params = jax.tree.map(lambda a: a.copy(), src.params)
  return state.replace(
      params=params, batch_stats=jax.tree.map(lambda a: a.copy(), src.batch_stats),
      opt_state=parallel.replicate(tx.init(params), mesh),
      ema_params=None if state.ema_params is None else jax.tree.map(lambda a: a.copy(), params))


def log_attacks(config) -> dict:
  """Prints (main process) and returns the effective attack of every branch.

  Returns:
    :func:`jaxrobust.train.defaults.effective_attacks`: ``{'train', 'val',
    'test'}`` -> the attack settings each branch runs with (eps in pixel units;
    ``train`` absent for ``standard``).
  """
  attacks = effective_attacks(config)
  if jax.process_index() == 0:
    for branch, settings in attacks.items():
      text = ", ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}"
                       for k, v in settings.items())
      tqdm.tqdm.write(f"attack ({branch}): {text}")
      log.info("attack (%s): %s", branch, settings)
  return attacks


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains per ``config`` in ``workdir`` (resuming if it holds checkpoints).

  The threat model ``config.eps`` / ``config.norm`` is filled into every
  attack branch that leaves it unset (:func:`jaxrobust.train.defaults.
  resolve_config`); the effective attacks are printed at start and stored
  in ``report.json`` under ``attacks``.

  Args:
    config: a training config (:func:`jaxrobust.train.default_config` or a
      ``configs/*.py``); saved as given to ``<workdir>/config.json``.
    workdir: output directory (checkpoints, logs, ``report.json``).

  Returns:
    The final report: test accuracies of the last and the best (validation-
    selected) checkpoints and the effective ``attacks``, also written to
    ``<workdir>/report.json``.

  Preemption: on SIGTERM or SIGUSR1 the run finishes the current step,
  saves a checkpoint at that step (every process of a multi-host job at the
  same step, :class:`jaxrobust.train.preemption.PreemptionGuard`) and raises
  :class:`jaxrobust.errors.Preempted`; calling again with the same arguments
  resumes, to the same final parameters as an uninterrupted run. One writer
  per workdir: ``<workdir>/.lock`` is held while the run lives.

  Raises:
    ConfigError, DataError, CheckpointError, NonFiniteLossError.
    WorkdirInUseError: another live process is training in ``workdir``.
    Preempted: stopped by a signal after saving a checkpoint (not an error).
  """
  validate_config(config)
  given, config = config, resolve_config(config)
  os.makedirs(workdir, exist_ok=True)
  with WorkdirLock(workdir), PreemptionGuard() as guard:
    return _train_and_evaluate(config, given, workdir, guard)


def _train_and_evaluate(config, given, workdir: str, guard: PreemptionGuard) -> dict:
  """:func:`train_and_evaluate` once the workdir is locked and the signals are handled."""
  is_main = jax.process_index() == 0
  attacks = log_attacks(given)
  mesh = parallel.make_mesh(config.num_devices or None)
  parallel.check_batch_size(config.train.batch_size, mesh)
  parallel.check_batch_size(config.eval.batch_size, mesh, "eval batch size")

  # Data.
  splits = build_splits(config)
  # Semi-supervised methods (rst, uat_*): labeled + unlabeled batches (jaxrobust.train.semisup).
  it = train_iterator(config, splits, workdir, mesh)
  steps_per_epoch = it.steps_per_epoch
  total_steps = config.train.num_steps or config.train.num_epochs * steps_per_epoch

  # Model, optimiser, method.
  image_shape = splits.train.image_shape
  config.data.image_shape = tuple(image_shape)  # saved in config.json for restoring.
  model = build_model(config, image_shape)
  # Pretrained weights: a timm state dict or a Google augreg / big_vision .npz, told apart by
  # their keys (a resumed run's checkpoint, restored below, overrides them).
  if config.model.get("init_from_pretrained", ""):
    report = load_pretrained_into(model, config.model.init_from_pretrained)
    log.info("initialised from the %s checkpoint %s (resized: %s; own head kept: %s)",
             report["format"], config.model.init_from_pretrained,
             report["resized"] or "nothing", report["kept"] or "no")
  tx = make_optimizer(config.train, total_steps, steps_per_epoch)
  teachers, frozen = load_teachers(config, mesh)
  swa_on = config.train.swa_start > 0
  graphdef, state = create_train_state(model, tx, config.seed, ema=config.train.ema_decay > 0,
                                       frozen=frozen, swa=swa_on)
  model_fns = ModelFns(graphdef)
  method = method_from_config(config.method, steps_per_epoch=steps_per_epoch,
                              teachers=teachers, weight_decay=config.train.weight_decay,
                              attack_bn_updates=config.train.get("attack_bn_updates", "none"))
  state = parallel.replicate(state, mesh)

  # theta_0 of the lazy-training diagnostic: the initial weights (a copy: the state is donated).
  theta0 = None
  if config.train.get("log_weight_distance", False):
    theta0 = jax.tree.map(lambda a: a.copy(), state.params)
    if config.train.init_from:
      theta0 = parallel.replicate(load_trained(config.train.init_from, config.train.init_which,
                                               mesh=mesh).params, mesh)

  # Restore.
  fingerprint = model_fingerprint(config, image_shape)
  # One process: files are written in the background (the arrays are copied to the host and
  # digested first); every way out of this function waits for them (ckpt.wait / ckpt.close).
  # Several processes: synchronous saves (a background finalize waiting on the other processes
  # was seen to hang the final restore of a 2-process CPU run).
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), config.train.keep_checkpoints,
                      async_save=jax.process_count() == 1)
  best_metric = -1.0
  # fallback: a damaged newest checkpoint is moved aside (logged) for an older intact one.
  restored = ckpt.restore(state, "latest", expect_meta={"model": fingerprint}, fallback=True)
  if restored is not None:
    state, meta = restored
    it.restore(meta["data"])
    best_metric = meta.get("best_metric", -1.0)
    log.info("resumed from step %d", int(state.step))
  elif config.train.init_from:
    state = init_from_run(config, state, tx, fingerprint, mesh)
  if is_main:
    saved = given.copy_and_resolve_references()
    saved.data.image_shape = tuple(image_shape)  # what restoring builds the model for.
    _save_config(saved, workdir)

  train_step = jit_train_step(make_train_step(model_fns, method, tx, config.train.ema_decay),
                              mesh)
  val_step = make_eval_step(model_fns, attacks_from_config(
      {"clean": None, "robust": dict(config.eval.val_attack)}), mesh)
  writer = MetricWriter(os.path.join(workdir, "logs"), enabled=is_main)
  swa_step = jax.jit(swa_update)
  distances = jit_relative_distances() if theta0 is not None else None

  def diverged(what, step):
    # Every saved checkpoint is finite (Checkpointer.save refuses NaN/inf), so the
    # newest one is a good restart point.
    last = ckpt.latest_step()
    if last is None:
      where, then = f"no checkpoint was saved in {ckpt.directory}", "start again"
    else:
      where = f"the last good checkpoint (step {last}, finite) in {ckpt.directory} is kept"
      then = "resume from it (or use a fresh --workdir if it diverges again)"
    return NonFiniteLossError(
        f"{what} became NaN/inf by step {step} and was not saved; {where}; lower "
        f"config.train.lr or check the data, then rerun the same command to {then}")

  def save(step, best=False):
    try:
      ckpt.save(step, state, {"data": it.state(), "best_metric": best_metric,
                              "model": fingerprint, "epoch": step / steps_per_epoch}, best=best)
    except NonFiniteStateError as e:
      raise diverged(f"the training state ({len(e.leaves)} arrays, e.g. {e.leaves[0]})",
                     step) from e

  def check_finite(sums, step):
    if float(jax.device_get(sums["nonfinite"])) > 0:
      raise diverged("the training loss", step)

  step = int(state.step)
  sums, t0, t0_step = None, time.time(), step
  bar = tqdm.tqdm(total=total_steps, initial=step, desc="train", disable=not is_main,
                  dynamic_ncols=True)
  try:
    while step < total_steps:
      batch = parallel.global_batch(next(it), mesh)
      state, metrics = train_step(state, batch)
      step += 1
      sums = metrics if sums is None else jax.tree.map(lambda a, b: a + b, sums, metrics)
      bar.update(1)
      epoch_end = step % steps_per_epoch == 0
      if swa_on and epoch_end and collects_after_epoch(
          step // steps_per_epoch - 1, config.train.swa_start, config.train.swa_c_epochs):
        # Before this epoch's checkpoint: the average and its count resume with it.
        state = state.replace(swa=swa_step(state.swa, state.params))
      if step % config.train.log_every_steps == 0 or epoch_end or step == total_steps:
        check_finite(sums, step)
        summary = _summarise(sums)
        summary["train/steps_per_s"] = (step - t0_step) / max(time.time() - t0, 1e-9)
        bar.set_postfix({k.split("/")[1]: f"{v:.3f}" for k, v in summary.items()
                         if k != "train/grad_norm"})
        if distances is not None:
          summary.update(as_metrics(distances(state.params, theta0)))
        writer.write(step, summary)
        sums, t0, t0_step = None, time.time(), step
      every = config.eval.every_epochs
      if (epoch_end or step == total_steps) and every > 0 and (
          (step // steps_per_epoch) % every == 0 or step == total_steps):
        val = evaluate_accuracy(val_step, _params_for_eval(state), state.batch_stats,
                                splits.val, config.eval.batch_size, mesh,
                                jax.random.PRNGKey(config.seed + 1))
        metric = val["robust"] if config.eval.select == "val_robust" else val["clean"]
        writer.write(step, {"val/clean": val["clean"], "val/robust": val["robust"]})
        if is_main:
          tqdm.tqdm.write(f"epoch {step / steps_per_epoch:.2f}  val clean {val['clean']:.4f}"
                          f"  val robust {val['robust']:.4f}")
        is_best = metric > best_metric
        best_metric = max(best_metric, metric)
        save(step, best=is_best)
      elif epoch_end or step == total_steps or (
          config.train.checkpoint_every_steps and step % config.train.checkpoint_every_steps == 0):
        if sums is not None:
          check_finite(sums, step)
        save(step)
      if step < total_steps and guard.should_stop(step):
        if sums is not None:
          check_finite(sums, step)
        save(step)  # a no-op when this step was just saved.
        ckpt.wait()  # complete and renamed into place before the process ends.
        where = os.path.join(ckpt.directory, "latest", str(step))
        log.info("%s: saved the checkpoint of step %d in %s; stopping", guard.signal_name, step,
                 where)
        raise Preempted(step, where, guard.signal_name)
  except BaseException:
    ckpt.close()  # finishes a pending write (the last good checkpoint) before leaving.
    raise
  finally:
    bar.close()
    writer.close()

  extra = {}
  if distances is not None:  # the last weights' per-layer distance from theta_0.
    extra["weight_distance"] = as_metrics(distances(state.params, theta0), prefix="")
  try:
    report = final_test(config, workdir, ckpt, model_fns, state, splits, mesh, attacks, given,
                        extra)
  finally:
    ckpt.close()
  return report


def swa_batch_stats(config, model_fns, state, splits):
  """BatchNorm statistics for the SWA average per ``config.train.swa_bn``.

  ``recompute_clean`` / ``recompute_adversarial``: one epoch of the training
  split (the run's augmentation and batch size, seed ``config.seed + 3``, the
  whole split in every process) through
  :func:`jaxrobust.weights.recompute_batch_stats`, on clean images or on
  adversarial ones from the training attack (``config.method.attack``, else
  ``config.eval.val_attack``); ``none``: the raw model's running averages.
  """
  from jaxrobust.attacks import attack_from_config  # pylint: disable=g-import-not-at-top
  from jaxrobust.train.bn import recompute_batch_stats  # pylint: disable=g-import-not-at-top
  mode = config.train.swa_bn
  if mode == "none":
    return state.batch_stats
  c = config
  it = TrainIterator(splits.train, c.train.batch_size, c.seed + 3, augment=c.data.augment,
                     pad=c.data.pad, pad_mode=c.data.pad_mode, flip=c.data.flip)
  perturb = None
  if mode == "recompute_adversarial":
    perturb = attack_from_config(dict(c.method.get("attack") or c.eval.val_attack))
  batches = (next(it) for _ in range(it.steps_per_epoch))
  return recompute_batch_stats(model_fns, state.swa.params, state.batch_stats, batches,
                               perturb=perturb, rng=jax.random.PRNGKey(c.seed + 3))


def write_swa_run(config, given, workdir: str, state, batch_stats) -> str:
  """Writes the SWA model as the trained-run workdir ``<workdir>/swa`` (rewritten each time).

  Its ``config.json`` is the run's without EMA or SWA (a plain model), so
  ``python -m jaxrobust.evaluate --workdir <workdir>/swa`` evaluates the
  average with its recomputed statistics (``weights.json`` records how).
  """
  from jaxrobust.train.restore import TrainedModel, write_workdir  # pylint: disable=g-import-not-at-top
  out = os.path.join(workdir, "swa")
  if jax.process_index() == 0 and os.path.isdir(out):
    shutil.rmtree(out)  # the same state always gives the same average.
  plain = given.copy_and_resolve_references()
  plain.data.image_shape = tuple(config.data.image_shape)
  plain.train.ema_decay, plain.train.swa_start = 0.0, 0
  if plain.train.schedule == "swa":
    plain.train.schedule = "constant"  # a schedule that needs no swa_start.
  source = TrainedModel(plain, None, None, None, int(state.step), "latest", workdir, False)
  recipe = {"recipe": "swa", "source": os.path.abspath(workdir), "step": int(state.step),
            "count": int(jax.device_get(state.swa.count)),
            "swa_start": int(config.train.swa_start),
            "swa_c_epochs": int(config.train.swa_c_epochs), "bn": config.train.swa_bn}
  return write_workdir(out, source, state.swa.params, batch_stats, recipe)


def final_test(config, workdir, ckpt, model_fns, state, splits, mesh, attacks=None,
               given=None, extra=None) -> dict:
  """Clean and PGD accuracy on the test subset for the last and best checkpoints.

  ``config`` is resolved (:func:`jaxrobust.train.defaults.resolve_config`);
  ``attacks`` (the effective attack of every branch) is stored in the report.
  With SWA (``config.train.swa_start > 0``) and at least one averaged epoch,
  the average is tested too (``report['swa']``, BatchNorm statistics per
  ``config.train.swa_bn``) and written as the workdir ``<workdir>/swa``
  (:func:`write_swa_run`; ``given`` is the config as given, saved there).
  ``extra`` entries are added to the report as they are (e.g. the final
  ``weight_distance`` per layer, :mod:`jaxrobust.train.weight_distance`).
  """
  test_step = make_eval_step(model_fns, attacks_from_config(
      {"clean": None, "robust": dict(config.eval.test_attack)}), mesh)
  key = jax.random.PRNGKey(config.seed + 2)
  report = {"test_size": len(splits.test), "test_attack": dict(config.eval.test_attack),
            "attacks": attacks or effective_attacks(config),
            "exact_test_images": int(np.sum(splits.test.exact)), **(extra or {})}
  report["last"] = evaluate_accuracy(test_step, _params_for_eval(state), state.batch_stats,
                                     splits.test, config.eval.batch_size, mesh, key, "test")
  report["last"]["step"] = int(state.step)
  best = ckpt.restore(state, "best") if ckpt.best_step() is not None else None
  if best is not None:
    bstate, _ = best
    report["best"] = evaluate_accuracy(test_step, _params_for_eval(bstate), bstate.batch_stats,
                                       splits.test, config.eval.batch_size, mesh, key, "test")
    report["best"]["step"] = int(bstate.step)
  count = 0 if state.swa is None else int(jax.device_get(state.swa.count))
  if count:
    batch_stats = swa_batch_stats(config, model_fns, state, splits)
    report["swa"] = evaluate_accuracy(test_step, state.swa.params, batch_stats, splits.test,
                                      config.eval.batch_size, mesh, key, "test")
    report["swa"].update(step=int(state.step), count=count, bn=config.train.swa_bn,
                         workdir=write_swa_run(config, given or config, workdir, state,
                                               batch_stats))
  elif state.swa is not None:
    log.warning("SWA averaged no epoch (config.train.swa_start=%d); no swa model",
                config.train.swa_start)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "report.json"), "w", encoding="utf-8") as f:
      json.dump(report, f, indent=2)
    for which in ("last", "best", "swa"):
      if which in report:
        r = report[which]
        print(f"test[:{report['test_size']}] {which} (step {r['step']}): clean accuracy "
              f"{r['clean']:.4f}, PGD-{config.eval.test_attack['num_steps']} accuracy "
              f"{r['robust']:.4f}", flush=True)
  return report


