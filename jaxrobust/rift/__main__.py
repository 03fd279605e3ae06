"""``python -m jaxrobust.rift --config configs/cifar10_rift.py[:arg] --workdir DIR``.

Needs ``--config.at_workdir=RUN``, the workdir of an adversarial training run
of ``python -m jaxrobust.train``. Rerunning the same command skips finished
stages and resumes the fine-tuning run.
"""
from jaxrobust.cli import apply_cpu_defaults, run_main

apply_cpu_defaults()

from absl import flags  # noqa: E402  pylint: disable=g-import-not-at-top
from ml_collections import config_flags  # noqa: E402  pylint: disable=g-import-not-at-top

_CONFIG = config_flags.DEFINE_config_file("config", None, "RiFT config file[:arg].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (report, plots, fine-tuning).")


def main(argv):
  from jaxrobust.errors import ConfigError  # pylint: disable=g-import-not-at-top
  from jaxrobust.rift.pipeline import run_rift  # pylint: disable=g-import-not-at-top
  if len(argv) > 1:
    raise ConfigError(f"unexpected arguments {argv[1:]}; pass settings as --config.a.b=value")
  if _CONFIG.value is None or not _WORKDIR.value:
    raise ConfigError("both --config=configs/cifar10_rift.py[:arg] and --workdir=DIR are "
                      "required")
  run_rift(_CONFIG.value, _WORKDIR.value)


def _schema():
  from jaxrobust.rift.config import default_rift_config  # pylint: disable=g-import-not-at-top
  return default_rift_config()


def run():
  run_main(main, schema=_schema)


if __name__ == "__main__":
  run()
