"""Every config variant keeps its effective settings (attacks, method hyperparameters, the rest).

``resolved_configs.json`` was written by ``benchmarks/resolved_configs.py`` from the code
before the method registry and the one-``eps`` threat model; the only differences allowed
are the new top-level ``eps`` / ``norm`` (equal to what every branch runs with), the
``teacher_*`` keys of methods that load no such teacher (unused then, no longer keys), the
optimiser-by-name keys at values that build today's SGD, and the cyclic schedule's new
official defaults (peak 1/2, cycled momentum) where no config uses the cyclic schedule.
Configs added later (``cifar10_vit_pgd_at``) were pinned by today's code (their entries
have ``config.eps``) and must match key for key.
"""
import json
import pathlib

import pytest

from benchmarks.resolved_configs import VARIANTS, load_config, rift_settings, train_settings

EXPECTED = json.loads((pathlib.Path(__file__).parent / "resolved_configs.json").read_text())
# Keys added with the optimiser by name and the dataset metadata (shape, resize); these values
# build exactly the previous SGD optimiser and read the shape from the data.
NEW_TRAIN_KEYS = {"config.train.optimizer": "sgd", "config.train.betas": [0.9, 0.999],
                  "config.train.adam_eps": 1e-8, "config.train.clip_by_global_norm": 0.0,
                  "config.train.weight_decay_mask": "all", "config.train.boundaries_epochs": [],
                  "config.train.cyclic_base_momentum": None, "config.data.image_shape": [],
                  "config.data.image_size": 0}
CASES = [(name, arg) for name, args in VARIANTS.items() for arg in args]


def _flat(d, prefix=""):
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def test_every_config_file_is_covered():
  files = {p.stem for p in (pathlib.Path(__file__).parents[2] / "configs").glob("*.py")}
  assert files - {"__init__"} == set(VARIANTS)
  assert {f"{n}.py:{a}" if a else f"{n}.py" for n, a in CASES} == set(EXPECTED)


@pytest.mark.parametrize("name,arg", CASES)
def test_effective_settings_are_unchanged(name, arg):
  config = load_config(name, arg)
  got = rift_settings(config) if name == "cifar10_rift" else train_settings(config)
  want = EXPECTED[f"{name}.py:{arg}" if arg else f"{name}.py"]
  assert got["attacks"] == want["attacks"]  # every branch, key by key, eps filled in.
  g, w = _flat(got), _flat(want)
  if "config.eps" in w:  # pinned after the refactor: nothing may differ.
    assert g == w
    return
  # New: the threat model set once; it is what every branch runs with.
  new = {} if name == "cifar10_rift" else NEW_TRAIN_KEYS  # RiFT's own schema.
  assert {k for k in set(g) - set(w)} == {"config.eps", "config.norm", *new}
  for k, v in new.items():
    if k != "config.train.cyclic_base_momentum":
      assert g[k] == v, (k, g[k], v)
  if not new:
    pass
  elif g["config.train.schedule"] == "cyclic":  # the :local one-cycle schedule keeps its peak and constant momentum.
    assert g["config.train.cyclic_base_momentum"] == -1.0
  else:  # unused without the cyclic schedule.
    assert (g.pop("config.train.cyclic_peak"), w.pop("config.train.cyclic_peak")) == (0.5, 0.4)
  assert {a["eps"] for a in got["attacks"].values()} == {g["config.eps"]}
  assert {a.get("norm", "linf") for a in got["attacks"].values()} == {g["config.norm"]}
  # Gone: teacher keys of methods that load no such teacher (unused before).
  gone = set(w) - set(g)
  assert all(k.startswith("method.teacher") for k in gone), gone
  if got.get("method", {}).get("name") != "iad":
    assert "method.teacher2_workdir" in gone or name == "cifar10_rift"
  if got.get("method", {}).get("num_teachers", 1) == 0:
    assert {k for k in w if k.startswith("method.teacher")} <= gone
  for k in set(g) & set(w):
    assert g[k] == w[k], (k, g[k], w[k])
