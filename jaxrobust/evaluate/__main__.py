"""Evaluation CLI.

    python -m jaxrobust.evaluate --workdir DIR [--which best|latest]
        [--attacks clean,fgsm_iad,pgd20,pgd20_rslad,cw30,aa-standard] [--n_examples 1000]
        [--eps 0.03137] [--norm linf] [--out report.json] [--aa_state DIR]
        [--save_adv adv.npz] [--curve_eps 0,2,4,8,16,255 --curve_attacks pgd20,aa-standard]

Restores the model trained in ``DIR`` (its ``config.json`` and checkpoints),
evaluates it on the first ``n`` test images (exact pixels only) in eval-mode
BatchNorm, prints a table and writes a JSON report (and a robust-accuracy-vs-
eps plot with ``--curve_eps``).

Names: ``clean``, ``fgsm``, ``fgsm_iad``, ``pgd20``, ``pgd20_trades``,
``pgd20_rslad``, ``cw30`` (the default suite; each the protocol of the
evaluation code it is named after, see :mod:`jaxrobust.evaluate.suite`),
``cw20``, ``pgd20_mo`` and ``pgd100`` (Mo et al.'s ViT protocol), ``aa-standard``,
``aa-plus``, ``aa-rand``,
and ``aa-custom`` (with ``--aa_attacks apgd_ce,square``); AutoAttack names
are also accepted with underscores (``aa_standard``) and the cascade's
attacks with the reference's hyphens (``apgd-ce``, ``fab-t``). A model with
random parts at evaluation time (e.g. ``noisy_simple_cnn``) gets a fresh key
in every forward pass; evaluate it with ``aa-rand`` (``aa-standard`` warns).

Threat model: ``--eps`` / ``--norm`` when given, else the run's own
``config.eps`` / ``config.norm`` when its config has them, else 8/255 L-inf
(0.5 for L2).

Preemption: with ``--aa_state DIR``, SIGTERM or SIGUSR1 saves the AutoAttack
state at the next batch and exits with status 75; rerunning the same command
resumes to the result of an uninterrupted run.
"""
import contextlib
import itertools

from jaxrobust.cli import apply_cpu_defaults, run_main

apply_cpu_defaults()

from absl import flags  # noqa: E402  pylint: disable=g-import-not-at-top

from jaxrobust.evaluate.suite import DEFAULT_SUITE  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir (config.json + checkpoints).")
_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None, "A checkpoint step directory, <workdir>/checkpoints/{best,latest}/<step>.")
_WHICH = flags.DEFINE_enum("which", "best", ["best", "latest"], "Checkpoint to evaluate.")
_ATTACKS = flags.DEFINE_list("attacks", list(DEFAULT_SUITE), "Evaluations to run.")
_AA_ATTACKS = flags.DEFINE_list("aa_attacks", [], "Attacks of aa-custom, e.g. apgd_ce,square "
                                 "(the hyphen spellings apgd-ce, fab-t are accepted).")
_N = flags.DEFINE_integer("n_examples", 1000, "First n test images (exact ones only).")
_EPS = flags.DEFINE_float("eps", None, "Budget in pixel units (default: the run's config.eps, "
                          "else 8/255 L-inf, 0.5 L2).")
_NORM = flags.DEFINE_enum("norm", None, ["linf", "l2"], "Threat model (default: the run's "
                          "config.norm, else linf).")
_BATCH = flags.DEFINE_integer("batch_size", 0, "Eval batch size (0: config.eval.batch_size).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the attacks' random starts.")
_OUT = flags.DEFINE_string("out", None, "JSON report path (default <workdir>/eval_<which>.json).")
_EMA = flags.DEFINE_bool("ema", True, "Evaluate the EMA weights when the run kept them.")
_AA_STATE = flags.DEFINE_string("aa_state", None, "Directory to save/resume AutoAttack state.")
_SAVE_ADV = flags.DEFINE_string("save_adv", None, "Save AutoAttack adversarial examples (.npz).")
_CURVE_EPS = flags.DEFINE_list("curve_eps", [], "Eps values in 1/255 units for an accuracy-vs-"
                               "eps curve (PNG next to the report).")
_CURVE_ATTACKS = flags.DEFINE_list("curve_attacks", ["pgd20", "aa-standard"],
                                   "Attacks of the eps curve.")


def _check_names(names, flag: str) -> list[str]:
  """The canonical spelling of each evaluation name; refuses unknown ones, listing all."""
  from jaxrobust.errors import ConfigError  # pylint: disable=g-import-not-at-top
  from jaxrobust.evaluate.report import canonical_evaluation_name  # pylint: disable=g-import-not-at-top
  if not names:
    raise ConfigError(f"--{flag} is empty; name at least one evaluation, e.g. --{flag}=clean")
  out = []
  for name in names:
    try:
      out.append(canonical_evaluation_name(name))
    except ConfigError as e:
      raise ConfigError(f"--{flag}: {e}") from e
  return out


def _check_flags(workdir: str, which: str) -> list[float]:
  """Checks the flags before anything is loaded; returns the curve's eps (pixel units).

  Raises:
    ConfigError: a value out of range, an unknown evaluation name, or a report
      path that cannot be written (found now, not after the evaluation).
  """
  import os  # pylint: disable=g-import-not-at-top
  from jaxrobust.cli import check_workdir  # pylint: disable=g-import-not-at-top
  from jaxrobust.errors import ConfigError  # pylint: disable=g-import-not-at-top
  if _N.value < 1:
    raise ConfigError(f"--n_examples must be >= 1 (the first n test images), got {_N.value}")
  if _BATCH.value < 0:
    raise ConfigError(f"--batch_size must be >= 1, or 0 for config.eval.batch_size; got "
                      f"{_BATCH.value}")
  if _EPS.value is not None and not 0 < _EPS.value <= (1.0 if _NORM.value == "linf" else 1e9):
    raise ConfigError(f"--eps must be > 0 in pixel units (L-inf at most 1, e.g. 0.03137 for "
                      f"8/255), got {_EPS.value}")
  _check_names(_ATTACKS.value, "attacks")
  curve = []
  for e in _CURVE_EPS.value:
    try:
      curve.append(float(e) / 255)
    except ValueError as err:
      raise ConfigError(f"--curve_eps takes numbers in 1/255 units, e.g. 0,2,4,8; got {e!r}"
                        ) from err
  if curve:
    _check_names(_CURVE_ATTACKS.value, "curve_attacks")
  if os.path.isfile(os.path.join(workdir, "config.json")):  # else load_trained says why.
    out = _OUT.value or os.path.join(workdir, f"eval_{which}.json")
    check_workdir(os.path.dirname(os.path.abspath(out)), "the --out report's directory")
  return curve


def main(argv):
  """absl main: restores the run in --workdir and evaluates it under --attacks; bad input raises a JaxRobustError."""
  import json  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top

  import jax  # pylint: disable=g-import-not-at-top

  from jaxrobust import parallel  # pylint: disable=g-import-not-at-top
  from jaxrobust.data import load_split  # pylint: disable=g-import-not-at-top
  from jaxrobust.errors import ConfigError  # pylint: disable=g-import-not-at-top
  from jaxrobust.accuracy import exact_subset  # pylint: disable=g-import-not-at-top
  from jaxrobust.evaluate.report import evaluate_names, plot_curve  # pylint: disable=g-import-not-at-top
  from jaxrobust.train.preemption import PreemptionGuard  # pylint: disable=g-import-not-at-top
  from jaxrobust.train.restore import load_trained, parse_checkpoint_path  # pylint: disable=g-import-not-at-top

  if len(argv) > 1:
    raise ConfigError(f"unexpected arguments {argv[1:]}")
  parallel.init_distributed()
  workdir, which, step = _WORKDIR.value, _WHICH.value, None
  if _CHECKPOINT.value:
    workdir, which, step = parse_checkpoint_path(_CHECKPOINT.value)
  if not workdir:
    raise ConfigError("pass --workdir DIR (a training workdir) or --checkpoint PATH")
  curve_eps = _check_flags(workdir, which)  # fail before restoring
  names = _check_names(_ATTACKS.value, "attacks")
  curve_names = _check_names(_CURVE_ATTACKS.value, "curve_attacks") if curve_eps else []
  trained = load_trained(workdir, which, step, use_ema=_EMA.value)
  config = trained.config
  eps, norm = threat_model(config, _EPS.value, _NORM.value)
  test = load_split(config.data.name, "test", config.data.source, config.data.data_dir or None,
                    config.data.get("image_size", 0))
  test = exact_subset(test, _N.value)
  mesh = parallel.make_mesh(config.num_devices or None)
  batch = _BATCH.value or config.eval.batch_size
  opts = dict(batch_size=batch, mesh=mesh, seed=_SEED.value, aa_attacks=_AA_ATTACKS.value,
              aa_state=_AA_STATE.value)
  report = {"workdir": trained.workdir, "checkpoint": which, "step": trained.step,
            "n_examples": len(test), "norm": norm, "ema": trained.uses_ema}
  # With --aa_state, SIGTERM/SIGUSR1 save the AutoAttack state at the next batch and exit
  # with status 75 (rerunning the command resumes); without it a signal ends the process.
  guard = PreemptionGuard() if _AA_STATE.value else contextlib.nullcontext()
  with guard:
    checks = itertools.count()
    stop = ((lambda: guard.signal_name if guard.should_stop(next(checks)) else None)
            if _AA_STATE.value else None)
    report.update(evaluate_names(trained, test, names, eps, norm,
                                 verbose=jax.process_index() == 0,
                                 save_adv=_SAVE_ADV.value, should_stop=stop, **opts))
  out = _OUT.value or os.path.join(workdir, f"eval_{which}.json")
  if _CURVE_EPS.value:
    curve = {}
    for e, eps in zip(_CURVE_EPS.value, curve_eps):
      if eps == 0:
        r = evaluate_names(trained, test, ["clean"], None, norm, **opts)
        curve[e] = {a: r["accuracy"]["clean"] for a in curve_names}
        continue
      r = evaluate_names(trained, test, curve_names, eps, norm, **dict(opts, aa_state=None))
      curve[e] = r["accuracy"]
      print(f"eps {e}/255: " + ", ".join(f"{k} {100 * v:.2f} %" for k, v in curve[e].items()),
            flush=True)
    report["curve"] = curve
    png = os.path.splitext(out)[0] + "_curve.png"
    if jax.process_index() == 0:
      plot_curve(curve, png, norm)
      print(f"plot written to {png}")
  if jax.process_index() == 0:
    with open(out, "w", encoding="utf-8") as f:
      json.dump(report, f, indent=2)
    print(f"report written to {out}")


def threat_model(config, eps_flag=None, norm_flag=None) -> tuple[float | None, str]:
  """``(eps, norm)`` of the evaluation: the flags, else the run's ``config.eps`` /
  ``config.norm`` (when its config has them), else ``(None, 'linf')`` (None:
  the suite's and AutoAttack's default for the norm, 8/255 L-inf or 0.5 L2).

  Raises:
    ConfigError: the run's config holds an invalid norm or eps.
  """
  from jaxrobust.errors import ConfigError  # pylint: disable=g-import-not-at-top
  get = config.get if hasattr(config, "get") else (lambda k, d=None: d)
  norm = norm_flag or get("norm", None) or "linf"
  if norm not in ("linf", "l2"):
    raise ConfigError(f"config.norm={norm!r} in the run's config.json; use 'linf' or 'l2' "
                      f"(or pass --norm)")
  eps = eps_flag
  if eps is None:
    cfg_eps = get("eps", None)
    cfg_norm = get("norm", None) or "linf"
    # The run's eps belongs to the run's norm: not reused for another --norm.
    if isinstance(cfg_eps, (int, float)) and cfg_eps > 0 and cfg_norm == norm:
      eps = float(cfg_eps)
  return eps, norm


def run():
  """Console entry point: :func:`main` with one-line errors (exit 2)."""
  run_main(main)


if __name__ == "__main__":
  run()
