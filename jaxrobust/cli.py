"""Shared entry-point plumbing: CPU defaults, compilation cache, logging, one-line errors."""
from __future__ import annotations

import os
import sys

from jaxrobust.errors import EXIT_PREEMPTED, ConfigError, JaxRobustError, Preempted

# XLA:CPU defaults chosen from the measurements in BENCHMARKS.md; a user's own
# XLA_FLAGS always win (we only add flags that are not already set). They only
# affect the CPU backend. The empty YNN fusion type turns off XLA:CPU's
# YNNPACK fusions, which measured ~20 % slower on the attack/train steps here.
CPU_XLA_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=",)


ENV_XLA_DEFAULTS = "JAXROBUST_XLA_DEFAULTS"


def xla_backends_initialised() -> bool:
  """True once JAX has created its XLA client(s); XLA_FLAGS are read then, once.

  ``import jax`` alone does not create a client, so flags set after it still
  take effect. Uses JAX's private backend cache; if that moves, this answers
  True (the conservative side: flags are then left alone).
  """
  if "jax" not in sys.modules:
    return False
  try:
    from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
    return bool(xla_bridge._backends)  # pylint: disable=protected-access
  except (ImportError, AttributeError):
    return True


def missing_cpu_defaults(flags: str | None = None) -> list[str]:
  """The library's CPU flags not already named in ``flags`` (default: ``$XLA_FLAGS``)."""
  flags = os.environ.get("XLA_FLAGS", "") if flags is None else flags
  return [f for f in CPU_XLA_FLAGS if f.split("=")[0] not in flags]


def apply_cpu_defaults() -> bool:
  """Adds the library's default XLA:CPU flags to ``XLA_FLAGS``.

  Effective only before JAX creates its backend (the first computation or
  ``jax.devices()``), which is also after ``import jax``. Flags the user set
  win; ``JAXROBUST_XLA_DEFAULTS=0`` opts out.

  Returns:
    True if the defaults are in effect (or were not wanted), False if the
    backend already exists without them (see :func:`warn_if_cpu_defaults_missing`).
  """
  if os.environ.get(ENV_XLA_DEFAULTS, "1") == "0":
    return True
  missing = missing_cpu_defaults()
  if not missing:
    return True
  if xla_backends_initialised():
    return False
  os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", "")] + missing).strip()
  return True


def warn_if_cpu_defaults_missing() -> None:
  """Warns (once) when JAX's CPU backend started before the defaults were set."""
  import warnings  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  if jax.default_backend() != "cpu":
    return
  warnings.warn(
      "jaxrobust: JAX's CPU backend was started before jaxrobust could add its XLA:CPU "
      f"flags ({' '.join(missing_cpu_defaults())}); the first ResNet stage can run 2-3x slower "
      "(BENCHMARKS.md). Import jaxrobust before running any JAX computation, or put the "
      "flags in XLA_FLAGS yourself; JAXROBUST_XLA_DEFAULTS=0 silences this.",
      RuntimeWarning, stacklevel=3)


ENV_COMPILATION_CACHE = "JAXROBUST_COMPILATION_CACHE"
_CACHE_OFF = ("off", "0", "false", "no", "none", "")
# Programs that compile faster than this are not written to the cache: the CLIs compile many
# small programs (data transforms, metrics) whose cache entries would cost more to write and
# read than they save.
CACHE_MIN_COMPILE_TIME_S = 0.5
CACHE_MAX_SIZE_BYTES = 2 << 30  # least recently used entries are evicted past 2 GiB


def default_compilation_cache_dir(env: dict | None = None) -> str:
  """``$XDG_CACHE_HOME/jaxrobust/xla``, else ``~/.cache/jaxrobust/xla``."""
  env = os.environ if env is None else env
  base = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "jaxrobust", "xla")


def compilation_cache_dir(env: dict | None = None) -> str | None:
  """Where the CLIs keep JAX's persistent compilation cache; None: no cache.

  ``$JAXROBUST_COMPILATION_CACHE``: unset -> :func:`default_compilation_cache_dir`;
  ``off`` (or ``0``, ``false``, ``no``, ``none``, empty) -> None; anything else -> that path.
  JAX's own ``$JAX_COMPILATION_CACHE_DIR``, when set, wins over both (the user
  configured JAX directly).
  """
  env = os.environ if env is None else env
  if env.get("JAX_COMPILATION_CACHE_DIR"):
    return env["JAX_COMPILATION_CACHE_DIR"]
  value = env.get(ENV_COMPILATION_CACHE)
  if value is None:
    return default_compilation_cache_dir(env)
  if value.strip().lower() in _CACHE_OFF:
    return None
  return os.path.abspath(os.path.expanduser(value))


def _has_filelock() -> bool:
  """JAX evicts cache entries (a size cap) only with the ``filelock`` package."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  return importlib.util.find_spec("filelock") is not None


def apply_compilation_cache() -> str | None:
  """Turns on JAX's persistent compilation cache for a CLI run (before its first compile).

  A second run of the same command then loads its compiled programs (train step,
  attacks, evaluation) from disk instead of recompiling them. Directory:
  :func:`compilation_cache_dir` (``$JAXROBUST_COMPILATION_CACHE``, ``off``
  disables it). Programs compiling in less than :data:`CACHE_MIN_COMPILE_TIME_S`
  are not stored; with the ``filelock`` package installed the cache is capped at
  :data:`CACHE_MAX_SIZE_BYTES` (least recently used entries go first; without it
  JAX cannot evict and the cache is unbounded). JAX settings given by the user through
  their own ``JAX_*`` variables win. A directory that cannot be created leaves
  the cache off (with a warning): the run itself is unaffected.

  Returns:
    The cache directory in use, or None.
  """
  path = compilation_cache_dir()
  if path is None:
    return None
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    import warnings  # pylint: disable=g-import-not-at-top
    warnings.warn(f"jaxrobust: compilation cache {path} cannot be created ({e}); running "
                  f"without it (set {ENV_COMPILATION_CACHE}=off or another path)",
                  RuntimeWarning, stacklevel=2)
    return None
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_compilation_cache_dir", path)
  if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
    jax.config.update("jax_persistent_cache_min_compile_time_secs", CACHE_MIN_COMPILE_TIME_S)
  if "JAX_COMPILATION_CACHE_MAX_SIZE" not in os.environ and _has_filelock():
    jax.config.update("jax_compilation_cache_max_size", CACHE_MAX_SIZE_BYTES)
  return path


def define_config_and_workdir(config_help: str, workdir_help: str):
  """Defines the ``--config`` (ml_collections file, locked) and ``--workdir`` flags."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  return (config_flags.DEFINE_config_file("config", None, config_help, lock_config=True),
          flags.DEFINE_string("workdir", None, workdir_help))


def require_config_and_workdir(argv, config_flag, workdir_flag, config_usage: str) -> None:
  """Raises ConfigError for stray positional arguments, a missing flag, a config
  file that could not be loaded, or a workdir that cannot be created/written."""
  if len(argv) > 1:
    raise ConfigError(f"unexpected arguments {argv[1:]}; pass settings as --config.a.b=value")
  if config_flag.value is None or not workdir_flag.value:
    raise ConfigError(f"both --config={config_usage} and --workdir=DIR are required")
  load_error = getattr(config_flag.value, "_error", None)  # config_flags' _ErrorConfig
  if load_error is not None:
    lines = [ln.strip() for ln in str(load_error).splitlines() if ln.strip()]
    raise ConfigError(f"could not load the --config file ({lines[-1] if lines else load_error}); "
                      f"pass an existing file, e.g. --config={config_usage}")
  check_workdir(workdir_flag.value)


def check_workdir(path: str, flag: str = "--workdir") -> None:
  """Creates directory ``path`` if needed and checks that files can be written in it.

  Raises:
    ConfigError: it cannot be created (bad parent, read-only or special file
      system such as /proc) or is not a writable directory.
  """
  fix = "choose a directory you can write to"
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise ConfigError(f"{flag} {path} cannot be created ({type(e).__name__}: "
                      f"{e.strerror or e}); {fix}") from e
  import tempfile  # pylint: disable=g-import-not-at-top
  try:
    with tempfile.NamedTemporaryFile(dir=path, prefix=".jaxrobust_write_test_"):
      pass
  except OSError as e:
    raise ConfigError(f"{flag} {path} is not writable ({type(e).__name__}: "
                      f"{e.strerror or e}); {fix}") from e


def _quiet_closed_loop_hook(default):
  """An ``sys.unraisablehook`` that drops "Event loop is closed" RuntimeErrors.

  When Orbax fails to read a damaged checkpoint, TensorStore completes the
  remaining reads on its own threads and calls into the asyncio loop Orbax
  already closed; Python prints each as an unraisable traceback. The failure
  itself is reported once, as a :class:`jaxrobust.errors.DamagedCheckpointError`.
  """
  def hook(unraisable):
    exc = unraisable.exc_value
    if isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed":
      return
    default(unraisable)
  return hook


def run_main(main, argv=None, schema=None) -> None:
  """Runs ``main`` under absl; JaxRobustError or OSError -> one ``error:`` line, exit 2.

  A training run stopped by a preemption signal (:class:`jaxrobust.errors.
  Preempted`, its checkpoint saved) prints one ``preempted ...`` line and exits
  with :data:`jaxrobust.errors.EXIT_PREEMPTED` (75), the status on which
  ``launch/slurm.sbatch`` requeues the job.

  ``schema`` returns the config schema used to name a bad ``--config.*``
  override (None: the message lists no valid keys). Before ``main`` runs, JAX's
  persistent compilation cache is turned on (:func:`apply_compilation_cache`).
  """
  from absl import app  # pylint: disable=g-import-not-at-top

  def wrapped(args):
    from absl import logging  # pylint: disable=g-import-not-at-top
    logging.set_verbosity(logging.WARNING)
    sys.unraisablehook = _quiet_closed_loop_hook(sys.unraisablehook)
    apply_compilation_cache()
    try:
      return main(args)
    except Preempted as e:
      print(one_line(str(e)), file=sys.stderr, flush=True)
      sys.exit(EXIT_PREEMPTED)
    except JaxRobustError as e:
      print(f"error: {one_line(str(e))}", file=sys.stderr, flush=True)
      sys.exit(2)
    except OSError as e:  # a file the user named cannot be read or written (disk, rights).
      what = f"{e.filename}: " if e.filename else ""
      print(f"error: {what}{one_line(str(e.strerror or e))} ({type(e).__name__}); check the "
            f"path, its permissions and the free disk space", file=sys.stderr, flush=True)
      sys.exit(2)

  def parse(argv_):
    from absl import flags  # pylint: disable=g-import-not-at-top
    try:
      return flags.FLAGS(argv_)
    except flags.Error as e:
      msg = str(e)
      if "Traceback" in msg:  # config-file errors embed the loader's traceback.
        lines = [ln for ln in msg.splitlines() if ln.strip()]
        msg = f"{lines[0]} {lines[-1].split('Error: ', 1)[-1]}"
      print(f"error: {one_line(msg)} (--helpshort lists the flags)", file=sys.stderr)
      sys.exit(2)
    except JaxRobustError as e:
      print(f"error: {one_line(str(e))}", file=sys.stderr)
      sys.exit(2)
    except (AttributeError, KeyError, TypeError, ValueError) as e:
      print(f"error: {one_line(bad_override_message(argv_, e, schema))}", file=sys.stderr)
      sys.exit(2)
    except OSError as e:  # a missing --config file, surfacing through an override.
      lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
      print(f"error: could not load the --config file ({lines[-1] if lines else e}); pass an "
            f"existing file", file=sys.stderr)
      sys.exit(2)
    except Exception as e:  # pylint: disable=broad-except  # the config file's own code failed.
      print(f"error: the --config file failed to load ({_origin(e)}{type(e).__name__}: "
            f"{one_line(str(e))}); fix the file or use another config", file=sys.stderr)
      sys.exit(2)

  app.run(wrapped, argv=normalize_flag_names(sys.argv if argv is None else argv),
          flags_parser=parse)


def one_line(msg: str) -> str:
  """``msg`` with its lines joined by spaces: an ``error:`` message is one line."""
  return " ".join(ln.strip() for ln in msg.splitlines() if ln.strip())


def _origin(exc) -> str:
  """``'file:line: '`` where ``exc`` was raised (a SyntaxError's own location)."""
  if isinstance(exc, SyntaxError) and exc.filename:
    return f"{exc.filename}:{exc.lineno}: "
  import traceback  # pylint: disable=g-import-not-at-top
  frames = traceback.extract_tb(exc.__traceback__)
  return f"{frames[-1].filename}:{frames[-1].lineno}: " if frames else ""


def normalize_flag_names(argv):
  """Accepts ``--n-examples`` for ``--n_examples`` (not inside ``--config.*``)."""
  out = list(argv[:1])
  for arg in argv[1:]:
    if arg.startswith("--") and not arg.startswith("--config"):
      name, eq, value = arg[2:].partition("=")
      arg = "--" + name.replace("-", "_") + eq + value
    out.append(arg)
  return out


def bad_override_message(argv, exc, schema=None) -> str:
  """Names the ``--config.a.b=v`` override that does not fit the config schema."""
  known = set(_flat_keys(schema().to_dict())) if schema is not None else set()
  for arg in argv[1:]:
    if known and arg.startswith("--config."):
      key = arg[len("--config."):].split("=", 1)[0]
      if key not in known:
        near = sorted(k for k in known if k.rsplit(".", 1)[0] == key.rsplit(".", 1)[0])
        return (f"unknown config key {key!r} in {arg!r}; valid keys here: "
                f"{near or sorted(known)}")
  return (f"could not apply the config file or a --config override ({type(exc).__name__}: "
          f"{exc}); check the value's type and the key's spelling")


def _flat_keys(d, prefix=""):
  for k, v in d.items():
    if isinstance(v, dict):
      yield from _flat_keys(v, f"{prefix}{k}.")
    else:
      yield f"{prefix}{k}"
