"""``python -m jaxrobust.rift --config configs/cifar10_rift.py[:arg] --workdir DIR``.

Needs ``--config.at_workdir=RUN``, the workdir of an adversarial training run
of ``python -m jaxrobust.train``. Rerunning the same command skips finished
stages and resumes the fine-tuning run (a preempted fine-tuning run exits
with status 75, ``jaxrobust.errors.EXIT_PREEMPTED``); a second process on the
same workdir is refused. SIGTERM/SIGUSR1 during the MRC sweep saves its
progress (``mrc_partial.json``) and exits with status 75; rerunning resumes it.
"""
import itertools

from jaxrobust.cli import (apply_cpu_defaults, define_config_and_workdir,
                           require_config_and_workdir, run_main)

apply_cpu_defaults()

_CONFIG, _WORKDIR = define_config_and_workdir(
    "RiFT config file[:arg].", "Output directory (report, plots, fine-tuning).")


def main(argv):
  """absl main: runs RiFT on --config.at_workdir into --workdir; bad input raises a JaxRobustError."""
  from jaxrobust.rift.pipeline import run_rift  # pylint: disable=g-import-not-at-top
  from jaxrobust.train.preemption import PreemptionGuard, WorkdirLock  # pylint: disable=g-import-not-at-top
  require_config_and_workdir(argv, _CONFIG, _WORKDIR, "configs/cifar10_rift.py[:arg]")
  with WorkdirLock(_WORKDIR.value):  # one writer; finetune/ takes its own lock.
    # SIGTERM/SIGUSR1 during the MRC sweep: its progress is saved and the process exits 75;
    # during fine-tuning the trainer saves its checkpoint and exits the same way.
    with PreemptionGuard() as guard:
      checks = itertools.count()
      run_rift(_CONFIG.value, _WORKDIR.value,
               should_stop=lambda: guard.signal_name if guard.should_stop(next(checks)) else None)


def _schema():
  from jaxrobust.rift.config import default_rift_config  # pylint: disable=g-import-not-at-top
  return default_rift_config()


def run():
  """Console entry point: :func:`main` with one-line errors (exit 2)."""
  run_main(main, schema=_schema)


if __name__ == "__main__":
  run()
