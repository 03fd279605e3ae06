"""Weight-space CLI: soups and interpolations of trained runs, written as trained-run workdirs.

    python -m jaxrobust.weights soup --workdirs A B C [--recipe greedy|uniform]
        [--select val_robust|val_clean] [--bn average|recompute_clean|recompute_adversarial]
        [--which best|latest] --out DIR
    python -m jaxrobust.weights interpolate --from A --to B [--alphas 0:1:0.1]
        [--select clean_within_robust_tolerance|val_robust|val_clean]
        [--robust_tolerance 0.01] [--bn ...] [--save_all] --out DIR
    python -m jaxrobust.weights recalibrate --workdirs A [--bn recompute_clean] --out DIR
    python -m jaxrobust.weights reinit --workdirs A --modules REGEX
        [--reinit_mode reinit|rerandom] [--seed N] [--reset_batch_stats] --out DIR
    python -m jaxrobust.weights reinit_analysis --workdirs A [--modules REGEX]
        [--exclude_modules REGEX] [--reinit_modes reinit,rerandom] [--seed N] --out DIR

``A``, ``B``, ``C`` are ``--workdir`` directories of ``python -m
jaxrobust.train`` runs of one architecture. Selection uses the runs'
validation split (held out from train) and their ``config.eval.val_attack``.
``DIR`` is then read like any trained run: ``python -m jaxrobust.evaluate
--workdir DIR``. ``recalibrate`` recomputes the BatchNorm statistics of one
run (of its EMA weights when it kept them). ``reinit`` re-initialises the
parameters whose dotted name matches ``--modules`` (:mod:`jaxrobust.weights.reinit`);
``reinit_analysis`` resets every conv / dense module in turn (``--modules``
then filters module names) and writes ``reinit.json``, a Markdown table
``reinit.md`` and a plot ``reinit.png`` to ``DIR``. ``interpolate`` also draws
its validation curve (``DIR/interpolation.png``).
See :mod:`jaxrobust.weights.recipes`.
"""
from jaxrobust.cli import apply_cpu_defaults, run_main

apply_cpu_defaults()

from absl import flags  # noqa: E402  pylint: disable=g-import-not-at-top

COMMANDS = ("soup", "interpolate", "recalibrate", "reinit", "reinit_analysis")

_WORKDIRS = flags.DEFINE_multi_string(
    "workdirs", [], "soup: the ingredient runs (--workdirs A B C or repeated --workdirs); "
    "recalibrate, reinit, reinit_analysis: the one run.")
_FROM = flags.DEFINE_string("from", None, "interpolate: run at alpha = 0 (e.g. the AT model).")
_TO = flags.DEFINE_string("to", None, "interpolate: run at alpha = 1 (e.g. the fine-tuned one).")
_ALPHAS = flags.DEFINE_string("alphas", "0:1:0.1", "interpolate: start:stop:step or a comma list.")
_OUT = flags.DEFINE_string("out", None, "Output workdir (fresh directory).")
_RECIPE = flags.DEFINE_enum("recipe", "greedy", ["greedy", "uniform"], "soup: recipe.")
_SELECT = flags.DEFINE_string(
    "select", None, "soup: val_robust (default) or val_clean; interpolate: "
    "clean_within_robust_tolerance (default), val_robust or val_clean.")
_TOL = flags.DEFINE_float("robust_tolerance", 0.01, "interpolate: allowed drop of validation "
                          "robust accuracy from alpha = 0 (fraction of 1).")
_BN = flags.DEFINE_enum("bn", None, ["average", "recompute_clean", "recompute_adversarial"],
                        "BatchNorm statistics of the result: merged with the weights, or "
                        "recomputed over one epoch of training data (clean or adversarial). "
                        "Default: average (soup, interpolate), recompute_clean (recalibrate).")
_WHICH = flags.DEFINE_enum("which", "best", ["best", "latest"], "Checkpoint of each run.")
_MODULES = flags.DEFINE_string("modules", None, "reinit: regex over dotted parameter names "
                               "(e.g. 'convs\\.0\\.' or '^linear\\.'); reinit_analysis: "
                               "regex over module names (default: every conv / dense module).")
_EXCLUDE = flags.DEFINE_string("exclude_modules", "", "reinit_analysis: regex of module names "
                               "to leave out.")
_REINIT_MODES = flags.DEFINE_list("reinit_modes", ["reinit", "rerandom"],
                                  "reinit_analysis: modes to measure, comma separated.")
_REINIT_MODE = flags.DEFINE_enum("reinit_mode", "reinit", ["reinit", "rerandom"],
                                 "reinit: the run's initial weights (its seed) or a fresh "
                                 "random draw (--seed, default the run's seed + 1).")
_SEED = flags.DEFINE_integer("seed", None, "reinit: initialisation seed (overrides the mode's); "
                             "reinit_analysis: reinit seed (rerandom: seed + 1).")
_RESET_BN = flags.DEFINE_bool("reset_batch_stats", False, "reinit: also reset the matched "
                              "modules' BatchNorm running averages.")
_SAVE_ALL = flags.DEFINE_bool("save_all", False, "interpolate: also write every grid point as "
                              "<out>/alpha_<alpha>/.")


def _expand_workdirs(argv):
  """``--workdirs A B C`` -> ``--workdirs=A --workdirs=B --workdirs=C`` (absl takes one value)."""
  out, i = [], 0
  while i < len(argv):
    arg = argv[i]
    if arg in ("--workdirs", "-workdirs"):
      i += 1
      while i < len(argv) and not argv[i].startswith("-"):
        out.append(f"--workdirs={argv[i]}")
        i += 1
      continue
    out.append(arg)
    i += 1
  return out


def main(argv):
  """absl main: runs the soup / interpolate command; bad input raises a JaxRobustError."""
  from jaxrobust.cli import check_workdir  # pylint: disable=g-import-not-at-top
  from jaxrobust.errors import ConfigError  # pylint: disable=g-import-not-at-top
  from jaxrobust.weights.merge import parse_alphas  # pylint: disable=g-import-not-at-top
  from jaxrobust.weights import recipes  # pylint: disable=g-import-not-at-top
  if len(argv) != 2 or argv[1] not in COMMANDS:
    raise ConfigError(f"give one command, {', '.join(COMMANDS)}, e.g. python -m "
                      f"jaxrobust.weights soup --workdirs A B C --out DIR (got {argv[1:]})")
  if not _OUT.value:
    raise ConfigError("--out=DIR is required (a fresh directory for the merged run)")
  if argv[1] == "soup":
    if len(_WORKDIRS.value) < 2:
      raise ConfigError(f"soup needs at least two runs: --workdirs A B [C ...] (got "
                        f"{_WORKDIRS.value})")
    check_workdir(_OUT.value, "--out")
    recipes.soup_runs(_WORKDIRS.value, _OUT.value, _RECIPE.value, _SELECT.value or "val_robust",
                      _WHICH.value, _BN.value or "average")
  elif argv[1] == "reinit":
    from jaxrobust.weights.reinit import reinit_run  # pylint: disable=g-import-not-at-top
    if len(_WORKDIRS.value) != 1 or not _MODULES.value:
      raise ConfigError(f"reinit takes one run and a regex: --workdirs A --modules REGEX (got "
                        f"--workdirs {_WORKDIRS.value}, --modules {_MODULES.value!r})")
    check_workdir(_OUT.value, "--out")
    reinit_run(_WORKDIRS.value[0], _OUT.value, _MODULES.value, _REINIT_MODE.value, _SEED.value,
               _WHICH.value, _RESET_BN.value)
  elif argv[1] == "reinit_analysis":
    from jaxrobust.weights.reinit import reinit_analysis_run  # pylint: disable=g-import-not-at-top
    if len(_WORKDIRS.value) != 1:
      raise ConfigError(f"reinit_analysis takes one run: --workdirs A (got {_WORKDIRS.value})")
    check_workdir(_OUT.value, "--out")
    reinit_analysis_run(_WORKDIRS.value[0], _OUT.value, _MODULES.value or "", _EXCLUDE.value,
                        tuple(_REINIT_MODES.value), _WHICH.value, _SEED.value)
  elif argv[1] == "recalibrate":
    if len(_WORKDIRS.value) != 1:
      raise ConfigError(f"recalibrate takes one run: --workdirs A (got {_WORKDIRS.value})")
    check_workdir(_OUT.value, "--out")
    recipes.recalibrate_run(_WORKDIRS.value[0], _OUT.value, _BN.value or "recompute_clean",
                            _WHICH.value)
  else:
    if not _FROM.value or not _TO.value:
      raise ConfigError("interpolate needs --from=RUN (alpha 0) and --to=RUN (alpha 1)")
    alphas = parse_alphas(_ALPHAS.value)
    check_workdir(_OUT.value, "--out")
    recipes.interpolate_runs(_FROM.value, _TO.value, alphas, _OUT.value,
                             _SELECT.value or "clean_within_robust_tolerance", _TOL.value,
                             _WHICH.value, _BN.value or "average", _SAVE_ALL.value)


def run():
  """Console entry point: :func:`main` with one-line errors (exit 2)."""
  import sys  # pylint: disable=g-import-not-at-top
  run_main(main, argv=_expand_workdirs(sys.argv))


if __name__ == "__main__":
  run()
