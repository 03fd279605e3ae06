"""Shared helpers for trainer tests."""
import importlib.util
import pathlib

REPO = pathlib.Path(__file__).resolve().parents[2]


def load_config(name: str, arg: str | None = None):
  """``configs/<name>.py`` -> ``get_config(arg)`` (unlocked for test edits)."""
  path = REPO / "configs" / f"{name}.py"
  spec = importlib.util.spec_from_file_location(f"cfg_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)
