"""The CLIs' persistent compilation cache: a second run loads its programs from disk.

Every CLI (``python -m jaxrobust.train|evaluate|rift|weights``) starts through
:func:`jaxrobust.cli.run_main`, which turns the cache on; each case runs a tiny
``run_main`` program in a fresh interpreter, as a CLI run is one.
"""
from __future__ import annotations

import os
import subprocess
import sys

from jaxrobust import cli

# A CLI-like program: run_main, one jitted computation, the cache events JAX records.
PROGRAM = """
import jax, jax.numpy as jnp
from jaxrobust.cli import run_main
events = []
jax.monitoring.register_event_listener(lambda name, **kw: events.append(name))
def main(argv):
  f = jax.jit(lambda x: jnp.tanh(x @ x.T).sum(0))
  print("value", float(f(jnp.arange(16.0).reshape(4, 4) / 16).sum()))
  print("dir", jax.config.jax_compilation_cache_dir)
  print("hits", events.count("/jax/compilation_cache/cache_hits"))
  print("misses", events.count("/jax/compilation_cache/cache_misses"))
run_main(main)
"""


def _run(**env) -> dict:
  base = {k: v for k, v in os.environ.items()
          if k not in ("JAXROBUST_COMPILATION_CACHE", "JAX_COMPILATION_CACHE_DIR",
                       "XDG_CACHE_HOME")}
  # Cache even this tiny program (the CLIs' default skips programs compiling in < 0.5 s).
  base["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  out = subprocess.run([sys.executable, "-c", PROGRAM], env={**base, **env},
                       capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  return dict(line.split(" ", 1) for line in out.stdout.splitlines())


def _entries(path) -> set:
  return set(os.listdir(path)) if os.path.isdir(path) else set()


def test_second_run_hits_the_cache(tmp_path):
  cache = tmp_path / "xla"
  first = _run(JAXROBUST_COMPILATION_CACHE=str(cache))
  written = _entries(cache)
  assert first["dir"] == str(cache) and written, "run 1 wrote no cache entry"
  assert int(first["hits"]) == 0 and int(first["misses"]) >= 1
  second = _run(JAXROBUST_COMPILATION_CACHE=str(cache))
  assert int(second["hits"]) >= 1 and int(second["misses"]) == 0
  assert _entries(cache) == written            # nothing recompiled, nothing added
  assert second["value"] == first["value"]     # the cached program computes the same


def test_default_dir_is_per_user_and_off_disables(tmp_path):
  # Default: $XDG_CACHE_HOME/jaxrobust/xla.
  out = _run(XDG_CACHE_HOME=str(tmp_path / "xdg"))
  assert out["dir"] == str(tmp_path / "xdg" / "jaxrobust" / "xla")
  assert _entries(tmp_path / "xdg" / "jaxrobust" / "xla")
  for off in ("off", "0", "none"):
    out = _run(JAXROBUST_COMPILATION_CACHE=off, XDG_CACHE_HOME=str(tmp_path / f"x_{off}"))
    assert out["dir"] == "None" and int(out["hits"]) == 0
    assert not (tmp_path / f"x_{off}").exists()


def test_cache_dir_rules():
  home = os.path.expanduser("~")
  assert cli.compilation_cache_dir({}) == os.path.join(home, ".cache", "jaxrobust", "xla")
  assert cli.compilation_cache_dir({"XDG_CACHE_HOME": "/c"}) == "/c/jaxrobust/xla"
  assert cli.compilation_cache_dir({"JAXROBUST_COMPILATION_CACHE": "OFF"}) is None
  assert cli.compilation_cache_dir({"JAXROBUST_COMPILATION_CACHE": "/a/b"}) == "/a/b"
  # JAX's own variable wins: the user configured JAX directly.
  assert cli.compilation_cache_dir({"JAX_COMPILATION_CACHE_DIR": "/j",
                                    "JAXROBUST_COMPILATION_CACHE": "/a"}) == "/j"


def test_an_unwritable_cache_dir_warns_and_runs_without(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("")
  base = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
  out = subprocess.run([sys.executable, "-W", "always", "-c", PROGRAM],
                       env={**base, "JAXROBUST_COMPILATION_CACHE": str(blocker / "xla")},
                       capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  assert "dir None" in out.stdout and "cannot be created" in out.stderr
