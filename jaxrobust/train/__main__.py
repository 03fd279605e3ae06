"""``python -m jaxrobust.train --config configs/<name>.py[:arg] --workdir DIR``.

Overrides: ``--config.train.num_epochs=5 --config.eps=0.0313 --config.method.attack.num_steps=7``
(``--config.eps`` / ``--config.norm``: the threat model of every attack branch).
Rerunning the same command in the same workdir resumes from its latest
checkpoint.
"""
from jaxrobust.cli import (apply_cpu_defaults, define_config_and_workdir,
                           require_config_and_workdir, run_main)

apply_cpu_defaults()

_CONFIG, _WORKDIR = define_config_and_workdir(
    "Python config file[:arg].", "Directory for checkpoints, logs, report.")


def main(argv):
  """absl main: trains (or resumes) the run in --workdir per --config; bad input raises a JaxRobustError."""
  from absl import logging  # pylint: disable=g-import-not-at-top
  from jaxrobust.parallel import init_distributed  # pylint: disable=g-import-not-at-top
  from jaxrobust.train.loop import train_and_evaluate  # pylint: disable=g-import-not-at-top
  require_config_and_workdir(argv, _CONFIG, _WORKDIR, "configs/<name>.py[:arg]")
  logging.set_verbosity(logging.WARNING)
  init_distributed()
  train_and_evaluate(_CONFIG.value, _WORKDIR.value)


def _schema():
  from jaxrobust.train.defaults import default_config  # pylint: disable=g-import-not-at-top
  return default_config()


def run():
  """Console entry point: :func:`main` with one-line errors (exit 2)."""
  run_main(main, schema=_schema)


if __name__ == "__main__":
  run()
