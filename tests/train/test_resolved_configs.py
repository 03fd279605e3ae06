"""Every config variant keeps its effective settings (attacks, method hyperparameters, the rest).

``resolved_configs.json`` was written by ``benchmarks/resolved_configs.py`` from the code
before the method registry and the one-``eps`` threat model; the only differences allowed
are the new top-level ``eps`` / ``norm`` (equal to what every branch runs with) and the
``teacher_*`` keys of methods that load no such teacher (unused then, no longer keys).
"""
import json
import pathlib

import pytest

from benchmarks.resolved_configs import VARIANTS, load_config, rift_settings, train_settings

EXPECTED = json.loads((pathlib.Path(__file__).parent / "resolved_configs.json").read_text())
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
  # New: the threat model set once; it is what every branch runs with.
  assert {k for k in set(g) - set(w)} == {"config.eps", "config.norm"}
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
