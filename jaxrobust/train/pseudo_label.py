"""``python -m jaxrobust.train.pseudo_label --config configs/<name>.py[:arg] --workdir DIR``.

Writes ``DIR/pseudo_labels.npz``: the pseudo-labels a semi-supervised run
(``rst``, ``uat_ft``) of that config trains with, from
``config.method.teacher_workdir`` (:func:`jaxrobust.train.semisup.pseudo_labels`;
the trainer computes the same file itself when it is missing or was written
for another teacher or unlabeled set).
"""
from jaxrobust.cli import (apply_cpu_defaults, define_config_and_workdir,
                           require_config_and_workdir, run_main)

apply_cpu_defaults()

_CONFIG, _WORKDIR = define_config_and_workdir(
    "Python config file[:arg] of an rst / uat_ft run.",
    "The run's workdir (pseudo_labels.npz is written there).")


def main(argv):
  """absl main: pseudo-labels the unlabeled set of --config into --workdir."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jaxrobust import parallel  # pylint: disable=g-import-not-at-top
  from jaxrobust.errors import ConfigError  # pylint: disable=g-import-not-at-top
  from jaxrobust.train import semisup  # pylint: disable=g-import-not-at-top
  from jaxrobust.train import defaults  # pylint: disable=g-import-not-at-top
  require_config_and_workdir(argv, _CONFIG, _WORKDIR, "configs/cifar10_rst.py:local")
  parallel.init_distributed()
  defaults.validate_config(_CONFIG.value)
  config = defaults.resolve_config(_CONFIG.value)
  s = semisup.semisup_settings(config)
  if s is None or s["teacher_workdir"] is None:
    raise ConfigError(f"method {config.method.name!r} takes no pseudo-labels; give a config "
                      f"whose method is rst or uat_ft")
  labels = semisup.pseudo_labels(config, semisup.unlabeled_set(config), _WORKDIR.value,
                                 parallel.make_mesh(config.num_devices or None))
  print(f"{len(labels)} pseudo-labels in {_WORKDIR.value}/{semisup.CACHE_NAME}; class counts "
        f"{np.bincount(labels).tolist()}", flush=True)


def _schema():
  from jaxrobust.train.defaults import default_config  # pylint: disable=g-import-not-at-top
  return default_config()


def run():
  """Console entry point: :func:`main` with one-line errors (exit 2)."""
  run_main(main, schema=_schema)


if __name__ == "__main__":
  run()
