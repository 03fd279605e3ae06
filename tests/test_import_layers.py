"""The package's import direction: no package imports one above it.

Every ``import jaxrobust.x`` / ``from jaxrobust.x import ...`` in the package
(at module level or inside a function) is read from the source with ``ast``
and checked against the layer order below. A lower layer never imports a
higher one, so there is no import cycle to dodge with a function-level import.
"""
import ast
import pathlib

import pytest

PKG = pathlib.Path(__file__).resolve().parents[1] / "jaxrobust"

# Lowest first. Packages on one layer do not import each other unless listed
# in SAME_LAYER_OK.
LAYERS = (
    ("errors", "types"),
    ("utils",),
    ("cli", "parallel"),
    ("data", "models", "losses"),
    ("attacks",),
    ("accuracy", "methods"),
    ("checkpoint",),
    ("train",),
    ("weights",),
    ("evaluate",),
    ("rift",),
)
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}


def _top(module: str) -> str | None:
  parts = module.split(".")
  return parts[1] if parts[0] == "jaxrobust" and len(parts) > 1 else None


def _imports(path: pathlib.Path):
  tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for alias in node.names:
        yield node.lineno, alias.name
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      if node.module == "jaxrobust":
        for alias in node.names:
          yield node.lineno, f"jaxrobust.{alias.name}"
      else:
        yield node.lineno, node.module


def _owner(path: pathlib.Path) -> str:
  rel = path.relative_to(PKG)
  return rel.parts[0].removesuffix(".py")


def test_every_package_has_a_layer():
  names = {p.name.removesuffix(".py") for p in PKG.iterdir()
           if (p.is_dir() and (p / "__init__.py").exists()) or
           (p.suffix == ".py" and p.name != "__init__.py")}
  assert names <= set(LAYER), f"give these a layer: {sorted(names - set(LAYER))}"


@pytest.mark.parametrize("path", sorted(p for p in PKG.rglob("*.py")
                                        if p.parent != PKG or p.name != "__init__.py"),
                         ids=lambda p: str(p.relative_to(PKG)))
def test_no_upward_import(path):
  owner = _owner(path)
  bad = []
  for lineno, module in _imports(path):
    target = _top(module)
    if target is None or target == owner:
      continue
    if target not in LAYER:
      bad.append(f"line {lineno}: {module} (package without a layer)")
    elif LAYER[target] > LAYER[owner]:
      bad.append(f"line {lineno}: {module} (layer {LAYER[target]} above {owner}'s "
                 f"{LAYER[owner]})")
    elif LAYER[target] == LAYER[owner]:
      bad.append(f"line {lineno}: {module} (same layer as {owner})")
  assert not bad, f"{path.relative_to(PKG)} imports upward: " + "; ".join(bad)


def test_the_checker_sees_function_level_imports(tmp_path):
  src = tmp_path / "m.py"
  src.write_text("def f():\n  from jaxrobust.evaluate import x\n  import jaxrobust.rift\n")
  assert [m for _, m in _imports(src)] == ["jaxrobust.evaluate", "jaxrobust.rift"]


def test_package_face_exposes_the_public_api():
  """``import jaxrobust`` reaches every subpackage, and each ``__all__`` name exists."""
  import importlib  # pylint: disable=g-import-not-at-top

  import jaxrobust  # pylint: disable=g-import-not-at-top
  for name in jaxrobust.__all__:
    assert getattr(jaxrobust, name) is not None, name
  for sub in jaxrobust._SUBMODULES:  # pylint: disable=protected-access
    mod = importlib.import_module(f"jaxrobust.{sub}")
    assert getattr(jaxrobust, sub) is mod
    for name in getattr(mod, "__all__", ()):
      assert hasattr(mod, name), f"jaxrobust.{sub}.__all__ names missing {name!r}"
  assert callable(jaxrobust.attacks.pgd) and callable(jaxrobust.losses.trades_loss)
  assert callable(jaxrobust.models.get_model) and callable(jaxrobust.evaluate.run_autoattack)
  assert jaxrobust.methods.ModelFns is jaxrobust.models.ModelFns
