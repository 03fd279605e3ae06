r"""Evaluation CLI throughput: ``python -m jaxrobust.evaluate`` vs torchattacks + reference AutoAttack.

Measures, on one machine in one run, the whole evaluation of a trained model
as a user runs it, start-up included:

* jaxrobust: the real CLI as a subprocess,
  ``python -m jaxrobust.evaluate --workdir W --attacks clean,pgd20,aa-standard
  --n_examples N --batch_size B --seed S --out F``: wall time of the whole
  process (interpreter and JAX start-up, restore, data, tracing and XLA
  compilation, the three evaluations, the report), its peak RSS
  (``ru_maxrss`` of the waited-for child, ``os.wait4``), and the accuracies of
  its JSON report. By default the persistent compilation cache is off
  (``JAXROBUST_COMPILATION_CACHE=off``): the cold figure. With
  ``--compile_cache DIR`` the CLI uses ``DIR`` (README "Compilation cache"),
  and ``--jax_runs 2`` runs it twice: the first run fills an empty ``DIR``, the
  second is the warm figure (each run records how many cache files it found).
* torch: one process under ``--torch_python`` (numpy, a CPU torch,
  ``torchattacks`` and the reference ``autoattack`` package from ``--aa_path``;
  no jax): imports, the same network ported to PyTorch
  (``bench_autoattack.torch_model``, the checkpoint's weights converted by
  ``bench_autoattack.py --impl export``), the same first ``N`` test images read
  from the ``.npz`` (exact pixels only), then clean accuracy;
  ``torchattacks.PGD(model, eps=8/255, alpha=2/255, steps=20,
  random_start=True)`` in batches of ``B``; the reference
  ``AutoAttack(model, norm='Linf', eps=8/255, version='standard', seed=S)``
  with ``run_standard_evaluation(x, y, bs=B)``. Wall time of the whole process
  and its peak RSS, measured the same way; the in-process phase times too.

Same work on both sides: the torch logits must match the jaxrobust logits of
the same points (max abs difference < 1e-3) before anything is attacked.
``pgd20`` (:mod:`jaxrobust.evaluate.suite`) and ``torchattacks.PGD`` are the
same protocol: eval-mode BatchNorm, a uniform start in the eps-ball clipped to
[0, 1], 20 signed steps of 2/255 each projected onto the ball and [0, 1], the
last iterate scored, every point attacked (clean mistakes count as robust
failures); the cross-entropy is summed over the batch in jaxrobust and
averaged in torchattacks, which leaves the gradient's sign, hence every step,
unchanged. Only the random starts differ (JAX vs torch generators), so PGD-20
agrees within random-start noise; AutoAttack, deterministic up to its own
seeded restarts, should agree (``--compare_flags`` also counts the points whose
AutoAttack outcome differs, at the cost of the CLI writing its adversarial
examples with ``--save_adv``).

Both processes get the same CPUs: ``--threads`` (default 2) CPUs of this
process's affinity mask (XLA:CPU sizes its pool from the mask), and
``torch.set_num_threads(--threads)``. The CPU time other processes used
meanwhile is recorded (``foreign_load``; the machine may be shared). The
weight export (``bench_autoattack.py --impl export``, which also computes the
jaxrobust logits the port is checked against) runs first and is timed for
neither side.

Usage::

    python benchmarks/bench_eval_cli.py --workdir runs/local1 \
        --torch_python /path/to/torch-venv/bin/python --aa_path /tmp/aa_ref \
        --n 1000 --out bench_eval_cli.json
    # the warm-cache jaxrobust figure (first run fills the cache, second reuses it)
    python benchmarks/bench_eval_cli.py --workdir runs/local1 \
        --torch_python /path/to/torch-venv/bin/python --aa_path /tmp/aa_ref \
        --n 1000 --compile_cache /tmp/bench_cache --jax_runs 2 --out bench_eval_cli_warm.json

Prints one Markdown table row (and its header) and writes everything to
``--out``. Ratios are torch / jaxrobust: above 1, jaxrobust is faster / smaller.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# Both import only the standard library at module level (also under --torch_python).
from _machine import busy_cpu_s, cpu_model, cpu_threads  # noqa: E402
from bench_autoattack import REPO_ROOT, parse_reference_log, torch_model  # noqa: E402

EPS = 8 / 255
PGD_STEP_SIZE = 2 / 255
PGD_STEPS = 20
CLI_ATTACKS = ("clean", "pgd20", "aa-standard")
LOGITS_TOL = 1e-3
# JAX's own cache variables win over JAXROBUST_COMPILATION_CACHE: never passed to the CLI.
_JAX_CACHE_VARS = ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
                   "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "JAX_ENABLE_COMPILATION_CACHE")
TABLE_HEADER = (
    "| n | jaxrobust CLI s | jaxrobust peak MiB | torch s | torch peak MiB | time torch/jax "
    "| memory torch/jax | clean (jax / torch) | PGD-20 (jax / torch) | AA (jax / torch) |\n"
    "|---:|---:|---:|---:|---:|---:|---:|---|---|---|")


# ----------------------------------------------------------------------------
# Pure helpers (tested without torch)
# ----------------------------------------------------------------------------

def cli_command(args, out: str, python: str = sys.executable,
                save_adv: str | None = None) -> list[str]:
  """The evaluation CLI's command line, as a user types it."""
  cmd = [python, "-m", "jaxrobust.evaluate", "--workdir", args.workdir, "--which", args.which,
         "--attacks", ",".join(CLI_ATTACKS), "--n_examples", str(args.n),
         "--batch_size", str(args.bs), "--seed", str(args.seed), "--out", out]
  if save_adv:
    cmd += ["--save_adv", save_adv]
  return cmd


def cli_env(compile_cache: str, base: dict | None = None) -> dict:
  """The CLI's environment: this checkout's jaxrobust first, the cache as asked.

  Args:
    compile_cache: a folder for the persistent compilation cache, or ``''``
      (the cache off: ``JAXROBUST_COMPILATION_CACHE=off``).
    base: the environment to start from (default ``os.environ``).

  Returns:
    A new dict; JAX's own cache variables (which would win) are removed.
  """
  env = dict(os.environ if base is None else base)
  for k in _JAX_CACHE_VARS:
    env.pop(k, None)
  env["JAXROBUST_COMPILATION_CACHE"] = os.path.abspath(compile_cache) if compile_cache else "off"
  env["PYTHONPATH"] = os.pathsep.join([REPO_ROOT] + [p for p in env.get("PYTHONPATH", "")
                                                     .split(os.pathsep) if p])
  return env


def count_files(folder: str) -> int:
  """Number of files under ``folder`` (0 if it does not exist)."""
  return sum(len(files) for _, _, files in os.walk(folder)) if folder else 0


def data_dir_of(workdir: str, env: dict | None = None) -> str:
  """Where the CLI reads the data (``jaxrobust.data.sources``): the run's
  ``config.data.data_dir``, else ``$JAXROBUST_DATA_DIR``, else ``<repo>/../shared/data``."""
  env = os.environ if env is None else env
  with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
    cfg = json.load(f)
  return (cfg.get("data", {}).get("data_dir") or env.get("JAXROBUST_DATA_DIR")
          or os.path.join(os.path.dirname(REPO_ROOT), "shared", "data"))


def run_config(workdir: str) -> dict:
  """The facts of the run this script needs: model name and kwargs, dataset, eval batch,
  threat model (from ``<workdir>/config.json``)."""
  with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
    cfg = json.load(f)
  return dict(model=cfg["model"]["name"], model_kwargs=cfg["model"].get("kwargs") or {},
              dataset=cfg["data"]["name"], source=cfg["data"].get("source", "numpy"),
              eval_batch_size=int(cfg["eval"]["batch_size"]), eps=cfg.get("eps"),
              norm=cfg.get("norm") or "linf")


def load_test_points(data_dir: str, n: int):
  """The first ``n`` CIFAR-10 test images as float32 NCHW in [0, 1] and int64 labels.

  The points of the CLI's ``exact_subset(load_split('cifar10', 'test'), n)``,
  read with numpy only.

  Raises:
    ValueError: some of the first ``n`` images are JPEG-derived (not exact).
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  with np.load(os.path.join(data_dir, "cifar10_test.npz")) as z:
    images, labels = z["images"][:n], z["labels"][:n]
    exact = z["exact"][:n] if "exact" in z.files else np.ones(len(labels), bool)
  if not exact.all():
    raise ValueError(f"{int((~exact).sum())} of the first {n} test images are JPEG-derived; "
                     f"use n <= {int(np.argmin(exact))}")
  x = images.astype(np.float32).transpose(0, 3, 1, 2) / 255.0
  return np.ascontiguousarray(x), labels.astype(np.int64)


def measure(cmd: list[str], log: str, env: dict | None = None,
            cpus: list[int] | None = None) -> dict:
  """Runs ``cmd`` to completion: wall seconds, peak RSS and CPU seconds of that process.

  Args:
    cmd: the command.
    log: file receiving its stdout and stderr.
    env: its environment (default: this one).
    cpus: CPUs to pin it to (``os.sched_setaffinity``); None: this process's.

  Returns:
    ``{'wall_s', 'peak_rss_mib', 'cpu_s', 'returncode', 'foreign_load'}``;
    ``peak_rss_mib`` is the child's ``ru_maxrss`` (``os.wait4``), ``foreign_load``
    the share of all CPUs other processes kept busy meanwhile. Linux counts the
    image the child was forked from (this process) in its ``ru_maxrss``: the
    figure is the child's own peak as long as this process is the smaller,
    which is why this driver never imports jax or torch.
  """
  preexec = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
  b0 = busy_cpu_s()
  t0 = time.perf_counter()
  with open(log, "w", encoding="utf-8") as f:
    # pylint: disable-next=consider-using-with
    proc = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, preexec_fn=preexec)
    _, status, ru = os.wait4(proc.pid, 0)
  wall = time.perf_counter() - t0
  proc.returncode = os.waitstatus_to_exitcode(status)
  cpu = ru.ru_utime + ru.ru_stime
  foreign = max(0.0, busy_cpu_s() - b0 - cpu)
  return dict(wall_s=round(wall, 2), peak_rss_mib=round(ru.ru_maxrss / 1024.0, 1),
              cpu_s=round(cpu, 1), returncode=proc.returncode,
              foreign_load=round(foreign / max(wall * (os.cpu_count() or 1), 1e-9), 3))


def _ratio(a, b):
  return round(a / b, 2) if a and b else None


def summarise(jax_runs: list[dict], torch: dict) -> dict:
  """Ratios (torch / jaxrobust) and accuracy differences (jaxrobust - torch, points).

  Args:
    jax_runs: one dict per CLI run, each with ``wall_s``, ``peak_rss_mib`` and
      ``accuracy`` (``{'clean', 'pgd20', 'aa-standard'}``); the first run is
      the cold one (or the cache-filling one), the last the warm one.
    torch: the torch process's dict, same keys.

  Returns:
    ``{'time_ratio', 'time_ratio_last', 'memory_ratio', 'accuracy_diff_pp'}``.
  """
  first, last = jax_runs[0], jax_runs[-1]
  diff = {k: round(100 * (first["accuracy"][k] - torch["accuracy"][k]), 2)
          for k in CLI_ATTACKS
          if first.get("accuracy", {}).get(k) is not None
          and torch.get("accuracy", {}).get(k) is not None}
  return dict(time_ratio=_ratio(torch.get("wall_s"), first.get("wall_s")),
              time_ratio_last=_ratio(torch.get("wall_s"), last.get("wall_s")),
              memory_ratio=_ratio(torch.get("peak_rss_mib"),
                                  max(r.get("peak_rss_mib") or 0 for r in jax_runs)),
              accuracy_diff_pp=diff)


def _pct(v) -> str:
  return "-" if v is None else f"{100 * v:.1f}"


def table_row(result: dict) -> str:
  """One Markdown row of :data:`TABLE_HEADER` from this script's JSON result."""
  runs, t, s = result["jax"]["runs"], result["torch"], result["summary"]
  jwall = " / ".join(f"{r['wall_s']:.1f}" for r in runs)
  if len(runs) > 1:
    jwall += " (" + " / ".join("warm" if r.get("cache_files_before") else "cold"
                               for r in runs) + ")"
  jrss = max(r["peak_rss_mib"] for r in runs)
  ratio = f"{s['time_ratio']:.2f}" if s["time_ratio"] is not None else "-"
  if len(runs) > 1 and s["time_ratio_last"] is not None:
    ratio += f" / {s['time_ratio_last']:.2f}"
  mem = f"{s['memory_ratio']:.2f}" if s["memory_ratio"] is not None else "-"
  acc = []
  for k in CLI_ATTACKS:
    acc.append(f"{_pct(runs[0]['accuracy'].get(k))} / {_pct(t['accuracy'].get(k))}")
  return (f"| {result['config']['n']} | {jwall} | {jrss:.0f} | {t['wall_s']:.1f} | "
          f"{t['peak_rss_mib']:.0f} | {ratio} | {mem} | " + " | ".join(acc) + " |")


# ----------------------------------------------------------------------------
# The torch process (under --torch_python: numpy, torch, torchattacks, autoattack)
# ----------------------------------------------------------------------------

def run_torch_child(spec: dict) -> dict:
  """Imports, model, data, clean, PGD-20 (torchattacks), AutoAttack standard (reference)."""
  t = {}
  t0 = time.perf_counter()
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import torchattacks  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, os.path.abspath(spec["aa_path"]))
  from autoattack import AutoAttack  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(spec["threads"])
  t["imports"] = time.perf_counter() - t0

  t0 = time.perf_counter()
  model = torch_model(spec["model"])
  with np.load(spec["export"]) as z:
    sd = {k[3:]: torch.from_numpy(z[k]) for k in z.files if k.startswith("w::")}
    jax_logits = z["jax_logits"]
  missing = model.load_state_dict(sd, strict=False)
  if missing.unexpected_keys or [k for k in missing.missing_keys
                                 if not k.endswith(("mean", "std", "num_batches_tracked"))]:
    raise SystemExit(f"weight conversion mismatch: {missing}")
  model.eval()
  t["model"] = time.perf_counter() - t0

  t0 = time.perf_counter()
  x_np, y_np = load_test_points(spec["data_dir"], spec["n"])
  x, y = torch.from_numpy(x_np), torch.from_numpy(y_np)
  t["data"] = time.perf_counter() - t0
  bs = spec["bs"]
  batches = [(lo, min(lo + bs, len(x))) for lo in range(0, len(x), bs)]

  def predict(xs):
    with torch.no_grad():
      return torch.cat([model(xs[a:b]) for a, b in batches])

  t0 = time.perf_counter()
  logits = predict(x)
  clean = float((logits.argmax(-1) == y).float().mean())
  t["clean"] = time.perf_counter() - t0
  diff = float(np.abs(logits.numpy() - jax_logits).max())
  if not diff < LOGITS_TOL:
    raise SystemExit(f"the torch port does not compute the jaxrobust model's logits (max abs "
                     f"difference {diff:.3g} >= {LOGITS_TOL})")

  t0 = time.perf_counter()
  torch.manual_seed(spec["seed"])
  atk = torchattacks.PGD(model, eps=EPS, alpha=PGD_STEP_SIZE, steps=PGD_STEPS,
                         random_start=True)
  x_pgd = torch.cat([atk(x[a:b], y[a:b]) for a, b in batches])
  pgd = float((predict(x_pgd).argmax(-1) == y).float().mean())
  t["pgd20"] = time.perf_counter() - t0

  t0 = time.perf_counter()
  adversary = AutoAttack(model, norm="Linf", eps=EPS, version="standard", seed=spec["seed"],
                         verbose=True, device="cpu")
  lines = []
  log = adversary.logger.log

  def recording_log(s):
    lines.append(s)
    log(s)
  adversary.logger.log = recording_log
  x_aa = adversary.run_standard_evaluation(x, y, bs=bs)
  robust = (predict(x_aa).argmax(-1) == y).numpy()
  t["aa-standard"] = time.perf_counter() - t0
  aa_clean, aa_ra, aa_secs, _ = parse_reference_log(lines, len(x))
  return dict(
      accuracy={"clean": clean, "pgd20": pgd, "aa-standard": float(robust.mean())},
      seconds={k: round(v, 2) for k, v in t.items()},
      autoattack=dict(clean=aa_clean, robust_accuracy=aa_ra, seconds=aa_secs),
      robust_flags="".join("1" if r else "0" for r in robust),
      logits_max_abs_diff=diff, threads=torch.get_num_threads(),
      versions=dict(torch=torch.__version__, torchattacks=torchattacks.__version__,
                    numpy=np.__version__, executable=sys.executable))


# ----------------------------------------------------------------------------
# Driver (the jax environment)
# ----------------------------------------------------------------------------

def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", default=os.path.join(REPO_ROOT, "runs", "local1"),
                 help="a trained run's workdir (read only; never written)")
  p.add_argument("--which", default="best", choices=("best", "latest"))
  p.add_argument("--n", type=int, default=1000, help="first n CIFAR-10 test images (exact)")
  p.add_argument("--bs", type=int, default=0,
                 help="batch size of both sides (0: the run's config.eval.batch_size)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--threads", type=int, default=2,
                 help="CPUs of each process (affinity) and torch threads")
  p.add_argument("--torch_python", "--torch-python", dest="torch_python",
                 default=sys.executable,
                 help="interpreter with numpy, torch and torchattacks (default: this one)")
  p.add_argument("--aa_path", default="/tmp/aa_ref",
                 help="folder holding the reference 'autoattack' package (not vendored)")
  p.add_argument("--compile_cache", default="",
                 help="persistent compilation cache folder of the CLI "
                      "(JAXROBUST_COMPILATION_CACHE); default: the cache off (cold)")
  p.add_argument("--jax_runs", type=int, default=1,
                 help="CLI runs (with --compile_cache, 2 gives the cold and the warm figure)")
  p.add_argument("--compare_flags", action="store_true",
                 help="count the points whose AutoAttack outcome differs (the CLI then also "
                      "writes its adversarial examples, --save_adv)")
  p.add_argument("--skip_torch", action="store_true", help="measure the CLI only")
  p.add_argument("--out", default="", help="write the JSON result here")
  p.add_argument("--child", default="", help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.child:
    return args
  if args.n < 1:
    p.error(f"--n must be >= 1, got {args.n}")
  if args.bs < 0:
    p.error(f"--bs must be >= 1, or 0 for the run's config.eval.batch_size; got {args.bs}")
  if args.jax_runs < 1:
    p.error(f"--jax_runs must be >= 1, got {args.jax_runs}")
  if args.jax_runs > 1 and not args.compile_cache:
    p.error("--jax_runs > 1 repeats the cold run; pass --compile_cache DIR for a warm run")
  if args.threads < 1 or args.threads > cpu_threads():
    p.error(f"--threads must be in 1..{cpu_threads()} (the CPUs this process may use), got "
            f"{args.threads}")
  if not os.path.isfile(os.path.join(args.workdir, "config.json")):
    p.error(f"--workdir {args.workdir} has no config.json; pass a trained run's workdir")
  return args


def _export(args, tmp: str) -> tuple[str, float]:
  path = os.path.join(tmp, "export.npz")
  cmd = [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                      "bench_autoattack.py"),
         "--impl", "export", "--export_to", path, "--workdir", args.workdir,
         "--which", args.which, "--n", str(args.n), "--bs", str(args.bs)]
  t0 = time.perf_counter()
  subprocess.run(cmd, check=True, env=cli_env(""))
  return path, time.perf_counter() - t0


def _tail(path: str, k: int = 15) -> list[str]:
  with open(path, encoding="utf-8", errors="replace") as f:
    return [line.rstrip() for line in f.readlines()[-k:]]


def run_jax(args, tmp: str, cpus) -> list[dict]:
  runs = []
  for i in range(args.jax_runs):
    report = os.path.join(tmp, f"cli_{i}.json")
    adv = os.path.join(tmp, f"adv_{i}.npz") if args.compare_flags else None
    before = count_files(args.compile_cache)
    cmd = cli_command(args, report, save_adv=adv)
    print(f"jaxrobust run {i + 1}/{args.jax_runs}: {' '.join(cmd)}", flush=True)
    log = os.path.join(tmp, f"cli_{i}.log")
    res = measure(cmd, log, env=cli_env(args.compile_cache), cpus=cpus)
    res.update(command=cmd, cache_files_before=before,
               cache_files_after=count_files(args.compile_cache))
    if res["returncode"] != 0:
      raise SystemExit("the evaluation CLI failed:\n" + "\n".join(_tail(log)))
    with open(report, encoding="utf-8") as f:
      rep = json.load(f)
    res.update(accuracy=rep["accuracy"], seconds=rep["seconds"],
               autoattack=rep.get("autoattack"), n_examples=rep["n_examples"],
               log_tail=_tail(log, 20))
    if adv:
      import numpy as np  # pylint: disable=g-import-not-at-top
      with np.load(adv) as z:
        res["robust_flags"] = "".join("1" if r else "0" for r in z["robust"])
    print(f"  {res['wall_s']:.1f} s, peak {res['peak_rss_mib']:.0f} MiB, "
          f"{ {k: round(v, 4) for k, v in rep['accuracy'].items()} }", flush=True)
    runs.append(res)
  return runs


def run_torch(args, tmp: str, cpus, export: str, cfg: dict) -> dict:
  spec = dict(n=args.n, bs=args.bs, seed=args.seed, threads=args.threads, model=cfg["model"],
              export=export, data_dir=data_dir_of(args.workdir),
              aa_path=os.path.abspath(args.aa_path), out=os.path.join(tmp, "torch.json"))
  cmd = [args.torch_python, os.path.abspath(__file__), "--child", json.dumps(spec)]
  print(f"torch: {args.torch_python} (torchattacks PGD-20, reference AutoAttack standard)",
        flush=True)
  log = os.path.join(tmp, "torch.log")
  res = measure(cmd, log, cpus=cpus)
  if res["returncode"] != 0:
    raise SystemExit("the torch side failed:\n" + "\n".join(_tail(log)))
  with open(spec["out"], encoding="utf-8") as f:
    res.update(json.load(f))
  res.update(python=args.torch_python, log_tail=_tail(log, 20))
  print(f"  {res['wall_s']:.1f} s, peak {res['peak_rss_mib']:.0f} MiB, "
        f"{ {k: round(v, 4) for k, v in res['accuracy'].items()} }", flush=True)
  return res


def main(argv=None) -> int:
  args = parse_args(argv)
  if args.child:
    spec = json.loads(args.child)
    res = run_torch_child(spec)
    with open(spec["out"], "w", encoding="utf-8") as f:
      json.dump(res, f)
    return 0
  cfg = run_config(args.workdir)
  if cfg["dataset"] != "cifar10" or cfg["source"] != "numpy" or cfg["model_kwargs"]:
    raise SystemExit(f"error: the torch port covers numpy CIFAR-10 runs of the default "
                     f"models only; {args.workdir} has {cfg}")
  if (cfg["norm"] != "linf" or cfg["eps"] is not None
      and abs(cfg["eps"] - EPS) > 1e-9):
    raise SystemExit(f"error: the CLI would evaluate the run's own threat model "
                     f"({cfg['norm']}, eps {cfg['eps']}); the torch side runs L-inf 8/255")
  args.bs = args.bs or cfg["eval_batch_size"]
  cpus = sorted(os.sched_getaffinity(0))[:args.threads]
  out = dict(config=dict(n=args.n, bs=args.bs, seed=args.seed, threads=args.threads,
                         workdir=os.path.abspath(args.workdir), which=args.which,
                         model=cfg["model"], attacks=list(CLI_ATTACKS),
                         compile_cache=args.compile_cache or "off", jax_runs=args.jax_runs,
                         cpus=cpus),
             machine=dict(cpu=cpu_model(), cpus=os.cpu_count(), affinity=cpu_threads(),
                          date=time.strftime("%Y-%m-%d %H:%M:%S"),
                          command=" ".join([os.path.basename(sys.executable)] + sys.argv)))
  with tempfile.TemporaryDirectory(prefix="bench_eval_cli_") as tmp:
    if not args.skip_torch:  # first: a port that does not match fails before any timing.
      export, export_s = _export(args, tmp)
      out["export_seconds"] = round(export_s, 1)
    out["jax"] = {"runs": run_jax(args, tmp, cpus)}
    if not args.skip_torch:
      out["torch"] = run_torch(args, tmp, cpus, export, cfg)
  # This driver's own peak: the floor under every child's ru_maxrss (see measure()).
  out["driver_peak_rss_mib"] = round(
      resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
  if "torch" in out:
    out["summary"] = summarise(out["jax"]["runs"], out["torch"])
    jf = out["jax"]["runs"][0].get("robust_flags")
    if jf:
      out["summary"]["aa_flags_disagree"] = sum(
          a != b for a, b in zip(jf, out["torch"]["robust_flags"]))
  text = json.dumps(out, indent=2)
  if args.out:
    with open(args.out, "w", encoding="utf-8") as f:
      f.write(text + "\n")
    print(f"wrote {args.out}")
  if "summary" in out:
    print(json.dumps(out["summary"]))
    print()
    print(TABLE_HEADER)
    print(table_row(out))
  return 0


if __name__ == "__main__":
  sys.exit(main())
