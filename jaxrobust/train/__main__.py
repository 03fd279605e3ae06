"""``python -m jaxrobust.train --config configs/<name>.py[:arg] --workdir DIR``.

Overrides: ``--config.train.num_epochs=5 --config.method.attack.num_steps=7``.
Rerunning the same command in the same workdir resumes from its latest
checkpoint.
"""
from jaxrobust.cli import apply_cpu_defaults, run_main

apply_cpu_defaults()

from absl import flags, logging  # noqa: E402  pylint: disable=g-import-not-at-top
from ml_collections import config_flags  # noqa: E402  pylint: disable=g-import-not-at-top

_CONFIG = config_flags.DEFINE_config_file("config", None, "Python config file[:arg].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs, report.")


def main(argv):
  from jaxrobust.errors import ConfigError  # pylint: disable=g-import-not-at-top
  from jaxrobust.train.loop import train_and_evaluate  # pylint: disable=g-import-not-at-top
  if len(argv) > 1:
    raise ConfigError(f"unexpected arguments {argv[1:]}; pass settings as --config.a.b=value")
  if _CONFIG.value is None or not _WORKDIR.value:
    raise ConfigError("both --config=configs/<name>.py[:arg] and --workdir=DIR are required")
  logging.set_verbosity(logging.WARNING)
  from jaxrobust.parallel import init_distributed  # pylint: disable=g-import-not-at-top
  init_distributed()
  train_and_evaluate(_CONFIG.value, _WORKDIR.value)


def run():
  run_main(main)


if __name__ == "__main__":
  run()
