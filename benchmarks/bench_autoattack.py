r"""AutoAttack wall time: jaxrobust vs the reference (``fra31/auto-attack``), CPU.

Both implementations attack the same model with the same weights on the same
points: a jaxrobust checkpoint (default ``runs/local1``, the ``:local``
SimpleCNN) is restored, its weights are converted to an equivalent PyTorch
module written below (NHWC/HWIO -> NCHW/OIHW, BatchNorm scale/bias/running
mean/var, normalisation inside the forward, the reshape max-pool =
``MaxPool2d(2)``), and the torch logits are checked against the jaxrobust
logits on every evaluated point before the reference runs.

* ``--impl jax``: ``jaxrobust.evaluate.autoattack.run_autoattack`` (version
  ``standard`` when the cascade supports every attack of it; otherwise the
  supported attacks, with FAB-T run in its cascade position by
  ``jaxrobust.attacks._fab.fab_targeted`` and timed separately, see
  ``--jax_fab``).
* ``--impl torch --aa_path DIR``: the reference ``AutoAttack`` imported from
  ``DIR`` (a checkout of ``fra31/auto-attack``, passed on the command line,
  never vendored), ``run_standard_evaluation(x, y, bs=...)`` with
  ``version=--version`` (``standard`` or ``plus``), ``norm=--norm`` (L-inf,
  eps 8/255, or L2, eps 0.5, by default), seed 0, ``verbose=True``; the
  per-attack cumulative times are taken from the reference's own log lines.

Attack names use jaxrobust's registry spelling (``apgd_ce``, ``fab_t``) in the
arguments (hyphens are accepted) and in every key of the output, for both
implementations; the reference's hyphen names are used only to call it and
to read its log.
* ``--impl both``: the two, one after the other, each in its own process (no
  shared thread pools; ``ru_maxrss`` of each process is its own peak memory).

torch need not be importable in the library's environment: with
``--torch_python PATH`` the torch side runs under PATH (an interpreter with
numpy and a CPU torch; it never imports jax or jaxrobust) and the weight
export it needs (``--impl export``) runs in this interpreter.

Every process reports per-attack cumulative robust accuracy and seconds,
total seconds, peak RSS, and the CPU time other processes used meanwhile
(the machine may be shared). JAX also reports its trace + compile seconds per
attack (``jax.monitoring`` events); with ``--compile_cache DIR`` a second run
reuses the compiled programs (the "warm" time).

``--model preact_resnet18`` (random init, or any ``jaxrobust.models`` name)
replaces the checkpoint: labels are then the model's own clean predictions,
so that every point is attacked, for timing only.

Usage::

    python benchmarks/bench_autoattack.py --impl both --aa_path /tmp/aa_ref \
        --n 500 --out bench_aa.json
    # the plus version, L2 (eps 0.5)
    python benchmarks/bench_autoattack.py --impl both --aa_path /tmp/aa_ref \
        --n 500 --version plus --norm l2 --out bench_aa_plus_l2.json
    # torch in another environment
    python benchmarks/bench_autoattack.py --impl both --aa_path /tmp/aa_ref \
        --torch_python /path/to/torch-venv/bin/python --n 500 --out bench_aa.json
    # quick debug run: 20 points, custom attack list
    python benchmarks/bench_autoattack.py --impl both --aa_path /tmp/aa_ref --n 20 \
        --attacks apgd_ce,apgd_t --square_queries 100
    # scaling note: PreAct-ResNet-18, APGD-CE only, 32 points
    python benchmarks/bench_autoattack.py --impl both --aa_path /tmp/aa_ref \
        --model preact_resnet18 --n 32 --bs 32 --attacks apgd_ce

Requires a CPU torch: the ``bench`` extra, or ``--torch_python``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time

EPS = 8 / 255
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)
# Attack names in jaxrobust's registry spelling (underscores) everywhere in this
# script and its output; the reference's spelling (hyphens) only where the
# reference is called or its log is read.
VERSIONS = {"standard": ("apgd_ce", "apgd_t", "fab_t", "square"),
            "plus": ("apgd_ce", "apgd_dlr", "fab", "square", "apgd_t", "fab_t")}
STANDARD = VERSIONS["standard"]
DEFAULT_EPS = {"linf": EPS, "l2": 0.5}


def canonical(name: str) -> str:
  """An attack name in the registry's spelling: ``'apgd-ce'`` -> ``'apgd_ce'``."""
  return name.strip().lower().replace("-", "_")


def reference_name(name: str) -> str:
  """The reference's spelling of an attack: ``'fab_t'`` -> ``'fab-t'``."""
  return canonical(name).replace("_", "-")
# Import the jaxrobust of the tree this script lives in, whatever an editable
# install of another copy registered.
if REPO_ROOT not in sys.path:
  sys.path.insert(0, REPO_ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _machine import busy_cpu_s, cpu_model, cpu_threads, own_cpu_s  # noqa: E402


# ----------------------------------------------------------------------------
# Machine information and load
# ----------------------------------------------------------------------------

class LoadMeter:
  """CPU-seconds used by other processes while the block runs."""

  def __enter__(self):
    self.t0, self.b0, self.o0 = time.time(), busy_cpu_s(), own_cpu_s(children=True)
    return self

  def __exit__(self, *exc):
    wall = time.time() - self.t0
    self.own_cpu_s = own_cpu_s(children=True) - self.o0
    self.foreign_cpu_s = max(0.0, busy_cpu_s() - self.b0 - self.own_cpu_s)
    self.foreign_load = self.foreign_cpu_s / max(wall * (os.cpu_count() or 1), 1e-9)


def peak_rss_mib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ----------------------------------------------------------------------------
# Export (JAX side): weights in torch layout, data, jaxrobust logits
# ----------------------------------------------------------------------------

def _flat(d, prefix=""):
  out = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, dict):
      out.update(_flat(v, key + "."))
    else:
      out[key] = v
  return out


def _strip_value(tree):
  """Raw orbax trees of nnx states keep each leaf under a ``'value'`` key."""
  if isinstance(tree, dict):
    if set(tree) == {"value"} and not isinstance(tree["value"], dict):
      return tree["value"]
    return {k: _strip_value(v) for k, v in tree.items()}
  return tree


def load_jax_model(args):
  """``(logits_fn, params_pure, stats_pure, info)`` of the model to attack."""
  import jax  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from jaxrobust.methods import ModelFns  # pylint: disable=g-import-not-at-top
  from jaxrobust.train.state import split_model  # pylint: disable=g-import-not-at-top
  info = {}
  if args.model != "checkpoint":
    from jaxrobust.models import create_model  # pylint: disable=g-import-not-at-top
    graphdef, params, stats = split_model(create_model(args.model, seed=args.model_seed))
    info.update(model=args.model, weights=f"random init (seed {args.model_seed})")
  else:
    from jaxrobust.errors import CheckpointError  # pylint: disable=g-import-not-at-top
    from jaxrobust.train.restore import load_trained  # pylint: disable=g-import-not-at-top
    try:
      tm = load_trained(args.workdir, args.which)
      graphdef, params, stats = tm.model_fns.graphdef, tm.params, tm.batch_stats
      info.update(restore="load_trained", step=tm.step)
    except CheckpointError as e:
      # Checkpoints written before TrainState had its ``frozen`` field do not
      # restore into the current TrainState; read the arrays directly.
      import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
      from jaxrobust.train.restore import load_config  # pylint: disable=g-import-not-at-top
      from jaxrobust.train.builders import build_model  # pylint: disable=g-import-not-at-top
      print(f"load_trained failed ({str(e)[:160]}...); reading the checkpoint arrays "
            f"directly", file=sys.stderr)
      config = load_config(args.workdir)
      graphdef, params, stats = split_model(build_model(config, (32, 32, 3)))
      root = os.path.join(args.workdir, "checkpoints", args.which)
      step = max(int(s) for s in os.listdir(root) if s.isdigit())
      raw = ocp.StandardCheckpointer().restore(os.path.join(root, str(step), "state"))
      params.replace_by_pure_dict(_strip_value(raw["params"]))
      stats.replace_by_pure_dict(_strip_value(raw["batch_stats"]))
      info.update(restore="orbax arrays (load_trained failed: TrainState.frozen)", step=step)
    info.update(model="checkpoint", workdir=os.path.abspath(args.workdir), which=args.which)
  logits_fn = ModelFns(graphdef).logits_fn(params, stats)
  del jax, nnx
  return logits_fn, params.to_pure_dict(), stats.to_pure_dict(), info


def torch_state_dict(params_pure, stats_pure) -> dict:
  """jaxrobust (NNX) pure dicts -> ``state_dict`` of the torch modules below."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  sd = {}
  for k, v in _flat(params_pure).items():
    v = np.asarray(v, np.float32)
    mod, leaf = k.rsplit(".", 1)
    if leaf == "kernel" and v.ndim == 4:      # HWIO -> OIHW
      sd[f"{mod}.weight"] = v.transpose(3, 2, 0, 1)
    elif leaf == "kernel" and v.ndim == 2:    # [in, out] -> [out, in]
      sd[f"{mod}.weight"] = v.T
    elif leaf == "scale":
      sd[f"{mod}.weight"] = v
    elif leaf == "bias":
      sd[f"{mod}.bias"] = v
    else:
      raise ValueError(f"unexpected parameter {k}")
  for k, v in _flat(stats_pure).items():
    mod, leaf = k.rsplit(".", 1)
    sd[f"{mod}.running_{leaf}"] = np.asarray(v, np.float32)
  return {k: np.ascontiguousarray(v) for k, v in sd.items()}


def load_data(args, logits_fn):
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jaxrobust.data import load_split  # pylint: disable=g-import-not-at-top
  ds = load_split("cifar10", "test")
  x = ds.images[: args.n].astype(np.float32) / 255.0
  y = ds.labels[: args.n].astype(np.int64)
  exact = bool(np.all(ds.exact[: args.n]))
  logits = jax_logits(logits_fn, x, args.bs)
  if args.model != "checkpoint":
    y = logits.argmax(-1).astype(np.int64)   # timing only: every point is attacked
  return x, y, logits, exact


def jax_logits(logits_fn, x, bs):
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  f = jax.jit(logits_fn)
  out = []
  for lo in range(0, len(x), bs):
    out.append(np.asarray(f(x[lo:lo + bs])))
  return np.concatenate(out)


def run_export(args) -> None:
  """Child process of ``--impl torch``: writes weights, data and logits."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  logits_fn, pp, sp, info = load_jax_model(args)
  x, y, logits, exact = load_data(args, logits_fn)
  sd = torch_state_dict(pp, sp)
  np.savez(args.export_to, x=x, y=y, jax_logits=logits,
           **{f"w::{k}": v for k, v in sd.items()})
  with open(args.export_to + ".json", "w", encoding="utf-8") as f:
    json.dump(dict(info, exact_pixels=exact), f)


# ----------------------------------------------------------------------------
# PyTorch models (same structure and parameter names as jaxrobust's)
# ----------------------------------------------------------------------------

def torch_model(name: str):
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top

  def bn(c):  # flax momentum 0.9 == torch momentum 0.1; eps 1e-5 (unused in eval)
    return nn.BatchNorm2d(c, eps=1e-5, momentum=0.1)

  class Normalized(nn.Module):

    def __init__(self):
      super().__init__()
      self.register_buffer("mean", torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1))
      self.register_buffer("std", torch.tensor(CIFAR10_STD).view(1, 3, 1, 1))

    def normalize(self, x):
      return (x - self.mean) / self.std

  class SimpleCNN(Normalized):
    """``jaxrobust.models.small_cnn.SimpleCNN``: conv3x3(no bias)-BN-ReLU-maxpool."""

    def __init__(self, widths=(32, 64, 128), convs_per_stage=1, num_classes=10):
      super().__init__()
      convs, bns, cin = [], [], 3
      for w in widths:
        for _ in range(convs_per_stage):
          convs.append(nn.Conv2d(cin, w, 3, padding=1, bias=False))
          bns.append(bn(w))
          cin = w
      self.convs, self.bns = nn.ModuleList(convs), nn.ModuleList(bns)
      self.convs_per_stage = convs_per_stage
      self.linear = nn.Linear(cin, num_classes)

    def forward(self, x):
      out = self.normalize(x)
      for i, (c, b) in enumerate(zip(self.convs, self.bns)):
        out = F.relu(b(c(out)))
        if (i + 1) % self.convs_per_stage == 0:
          out = F.max_pool2d(out, 2)
      return self.linear(out.mean(dim=(2, 3)))

  class PreActBlock(nn.Module):

    def __init__(self, cin, cout, stride):
      super().__init__()
      self.bn1 = bn(cin)
      self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
      self.bn2 = bn(cout)
      self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
      self.shortcut = (nn.Conv2d(cin, cout, 1, stride, 0, bias=False)
                       if stride != 1 or cin != cout else None)

    def forward(self, x):
      out = F.relu(self.bn1(x))
      sc = self.shortcut(out) if self.shortcut is not None else x
      out = self.conv1(out)
      return self.conv2(F.relu(self.bn2(out))) + sc

  class PreActResNet(Normalized):
    """``jaxrobust.models.resnet.PreActResNet``."""

    def __init__(self, num_blocks=(2, 2, 2, 2), widths=(64, 128, 256, 512), num_classes=10):
      super().__init__()
      self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
      blocks, cin = [], widths[0]
      for i, (n, w) in enumerate(zip(num_blocks, widths)):
        for j in range(n):
          blocks.append(PreActBlock(cin, w, 2 if (i > 0 and j == 0) else 1))
          cin = w
      self.blocks = nn.ModuleList(blocks)
      self.bn_final = bn(cin)
      self.linear = nn.Linear(cin, num_classes)

    def forward(self, x):
      out = self.conv1(self.normalize(x))
      for blk in self.blocks:
        out = blk(out)
      out = F.relu(self.bn_final(out))
      return self.linear(out.mean(dim=(2, 3)))

  models = {"simple_cnn": SimpleCNN, "preact_resnet18": PreActResNet}
  if name not in models:
    raise SystemExit(f"no torch twin of model {name!r}; choose from {sorted(models)}")
  return models[name]()


# ----------------------------------------------------------------------------
# --impl torch
# ----------------------------------------------------------------------------

_LOG_AFTER = re.compile(r"robust accuracy after ([A-Z0-9-]+): ([0-9.]+)% \(total time ([0-9.]+) s\)")
_LOG_CLEAN = re.compile(r"initial accuracy: ([0-9.]+)%")


def parse_reference_log(lines, n: int):
  """Reads the reference AutoAttack's ``verbose=True`` log (``autoattack.py``).

  Args:
    lines: the logged strings, in order.
    n: number of evaluated points; the log prints percentages with 2
      decimals, so each accuracy is rounded back to a multiple of ``1 / n``.

  Returns:
    ``(clean, robust_accuracy, seconds, total)``: the initial (clean) accuracy
    (None if not logged), ``{attack: cumulative robust accuracy}`` and
    ``{attack: seconds of that attack}`` in registry spelling (``'apgd_ce'``),
    and the cumulative seconds after the last attack (0.0 if none).
  """
  ra, secs, prev, clean = {}, {}, 0.0, None
  for s in lines:
    m = _LOG_AFTER.search(s)
    if m:
      name = canonical(m.group(1))
      ra[name] = round(float(m.group(2)) / 100.0 * n) / n
      secs[name] = round(float(m.group(3)) - prev, 2)
      prev = float(m.group(3))
    m = _LOG_CLEAN.search(s)
    if m:
      clean = round(float(m.group(1)) / 100.0 * n) / n
  return clean, ra, secs, prev


def run_torch(args) -> dict:
  import numpy as np  # pylint: disable=g-import-not-at-top
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "export.npz")
    t0 = time.time()
    subprocess.run([args.jax_python, os.path.abspath(__file__), "--impl", "export",
                    "--export_to", path] + _common_argv(args), check=True)
    export_s = time.time() - t0
    with np.load(path) as z:
      x, y, jl = z["x"], z["y"], z["jax_logits"]
      sd = {k[3:]: z[k] for k in z.files if k.startswith("w::")}
    with open(path + ".json", encoding="utf-8") as f:
      info = json.load(f)

  import torch  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(args.threads)
  arch = _arch(args)
  model = torch_model(arch)
  missing = model.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()},
                                  strict=False)
  if missing.unexpected_keys or [k for k in missing.missing_keys
                                 if not k.endswith(("mean", "std", "num_batches_tracked"))]:
    raise SystemExit(f"weight conversion mismatch: {missing}")
  model.eval()
  xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
  yt = torch.from_numpy(y)
  with torch.no_grad():
    tl = torch.cat([model(xt[lo:lo + args.bs]) for lo in range(0, len(xt), args.bs)]).numpy()
  diff = float(np.abs(tl - jl).max())
  agree = float(np.mean(tl.argmax(-1) == jl.argmax(-1)))
  print(f"torch vs jaxrobust logits on {len(x)} points: max abs diff {diff:.3g}, "
        f"argmax agreement {agree:.4f}", flush=True)
  if diff >= 1e-3:
    raise SystemExit(f"torch model does not match jaxrobust (max abs diff {diff})")

  sys.path.insert(0, os.path.abspath(args.aa_path))
  from autoattack import AutoAttack  # pylint: disable=g-import-not-at-top
  import autoattack as aa_mod  # pylint: disable=g-import-not-at-top
  attacks = _attack_list(args)
  standard = tuple(attacks) == VERSIONS[args.version]
  kw = (dict(version=args.version) if standard else
        dict(version="custom", attacks_to_run=[reference_name(a) for a in attacks]))
  adversary = AutoAttack(model, norm={"linf": "Linf", "l2": "L2"}[args.norm], eps=args.eps,
                         seed=args.seed, verbose=True, device="cpu", **kw)
  if not standard:  # custom: the standard version's settings
    adversary.apgd.n_restarts = 1
    adversary.apgd_targeted.n_target_classes = 9
    adversary.fab.n_restarts = 1
    adversary.fab.n_target_classes = 9
  adversary.square.n_queries = args.square_queries
  lines = []
  log = adversary.logger.log

  def recording_log(s):
    lines.append((time.time(), s))
    log(s)
  adversary.logger.log = recording_log

  with LoadMeter() as load:
    t0 = time.time()
    x_adv = adversary.run_standard_evaluation(xt, yt, bs=args.bs)
    total = time.time() - t0
  with torch.no_grad():
    pred = torch.cat([model(x_adv[lo:lo + args.bs]) for lo in range(0, len(x), args.bs)])
  robust = (pred.argmax(-1) == yt).numpy()
  linf = float((x_adv - xt).abs().max())
  l2 = float((x_adv - xt).reshape(len(xt), -1).norm(dim=1).max())
  clean, ra, secs, prev = parse_reference_log([s for _, s in lines], len(x))
  return dict(
      impl="torch (fra31/auto-attack)", aa_path=os.path.abspath(args.aa_path),
      aa_commit=_git_head(args.aa_path), aa_module=os.path.abspath(aa_mod.__file__),
      version=args.version if standard else "custom", norm=args.norm,
      attacks=list(attacks), n=len(x), bs=args.bs, eps=args.eps, seed=args.seed,
      threads=torch.get_num_threads(), interop_threads=torch.get_num_interop_threads(),
      logits_max_abs_diff=diff, argmax_agreement=agree, model_info=info,
      robust_accuracy=dict({"clean": clean}, **ra), seconds=secs,
      seconds_attacks=round(prev, 2), seconds_total=round(total, 2),
      final_robust_accuracy=float(robust.mean()), max_linf=linf, max_l2=l2,
      robust_flags="".join("1" if r else "0" for r in robust),
      export_seconds=round(export_s, 1), peak_rss_mib=round(peak_rss_mib(), 1),
      foreign_cpu_s=round(load.foreign_cpu_s, 1), foreign_load=round(load.foreign_load, 3),
      versions=dict(torch=torch.__version__, python=platform.python_version(),
                    executable=sys.executable))


def source_info() -> dict:
  """Which jaxrobust is measured: its path and commit (plus local changes)."""
  import jaxrobust  # pylint: disable=g-import-not-at-top
  out = {"jaxrobust": os.path.dirname(os.path.abspath(jaxrobust.__file__))}
  try:
    git = ["git", "-C", REPO_ROOT]
    out["commit"] = subprocess.run(git + ["rev-parse", "HEAD"], capture_output=True, text=True,
                                   check=True).stdout.strip()
    out["dirty"] = subprocess.run(git + ["status", "--short", "--", "jaxrobust"],
                                  capture_output=True, text=True, check=True).stdout.split()[1::2]
  except (OSError, subprocess.CalledProcessError):
    f = os.path.join(REPO_ROOT, "SOURCE")
    if os.path.isfile(f):
      with open(f, encoding="utf-8") as fh:
        out["source"] = fh.read().strip()
  return out


def _git_head(path):
  """Commit of the reference: ``<path>/COMMIT`` if written at export, else git."""
  f = os.path.join(path, "COMMIT")
  if os.path.isfile(f):
    with open(f, encoding="utf-8") as fh:
      return fh.read().strip()
  for d in (path, os.path.join(path, "..")):
    try:
      return subprocess.run(["git", "-C", d, "rev-parse", "HEAD"], capture_output=True,
                            text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
      continue
  return None


# ----------------------------------------------------------------------------
# --impl jax
# ----------------------------------------------------------------------------

def run_jax(args) -> dict:
  if args.compile_cache:
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.abspath(args.compile_cache))
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
  import jaxrobust  # pylint: disable=g-import-not-at-top,unused-import  (XLA:CPU defaults)
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jaxrobust.evaluate import autoattack as aa  # pylint: disable=g-import-not-at-top

  # Trace/lower/compile seconds, attributed to the attack being set up.
  current = ["setup"]
  compile_s: dict = {}

  def listener(event, duration, **kw):
    del kw
    if event.startswith("/jax/core/compile/"):
      compile_s[current[0]] = compile_s.get(current[0], 0.0) + duration
  jax.monitoring.register_event_duration_secs_listener(listener)
  orig_attack_fn = aa._attack_fn  # pylint: disable=protected-access

  def tagged_attack_fn(name, s):
    current[0] = name
    return orig_attack_fn(name, s)
  aa._attack_fn = tagged_attack_fn  # pylint: disable=protected-access

  logits_fn, _, _, info = load_jax_model(args)
  x, y, _, exact = load_data(args, logits_fn)
  info["exact_pixels"] = exact
  y = y.astype(np.int32)
  attacks = _attack_list(args)
  overrides = dict(square_queries=args.square_queries)
  # Which attacks the cascade supports (FAB-T may not be wired in yet).
  supported = []
  for a in attacks:
    try:
      orig_attack_fn(a, aa.AutoAttackSettings.for_version(args.eps, args.norm,
                                                          version="custom", attacks=[a]))
      supported.append(a)
    except (AttributeError, ImportError, NotImplementedError) as e:
      print(f"jaxrobust cascade does not support {a!r} yet ({type(e).__name__}: {e})",
            file=sys.stderr)
  standard = tuple(attacks) == VERSIONS[args.version] and supported == list(attacks)
  notes = []
  with LoadMeter() as load:
    t0 = time.time()
    if supported == list(attacks):
      s = (aa.AutoAttackSettings.for_version(args.eps, args.norm, args.version, **overrides)
           if standard else
           aa.AutoAttackSettings.for_version(args.eps, args.norm, version="custom",
                                             attacks=attacks, **overrides))
      res = aa.run_autoattack(logits_fn, x, y, s, batch_size=args.bs, seed=args.seed,
                              progress=False)
      ra, secs, robust = dict(res.robust_accuracy), dict(res.seconds), res.robust
      x_adv = res.x_adv
      version = s.version
    else:
      missing = [a for a in attacks if a not in supported]
      if missing != ["fab_t"] or args.jax_fab == "skip":
        s = aa.AutoAttackSettings.for_version(args.eps, args.norm, version="custom",
                                              attacks=supported, **overrides)
        res = aa.run_autoattack(logits_fn, x, y, s, batch_size=args.bs, seed=args.seed,
                                progress=False)
        ra, secs, robust, x_adv = (dict(res.robust_accuracy), dict(res.seconds), res.robust,
                                   res.x_adv)
        version = f"custom {supported} (without {missing})"
        notes.append(f"run_autoattack(version='custom', attacks={supported}); {missing} "
                     f"not supported by the cascade and not run")
      else:
        ra, secs, robust, x_adv = _jax_cascade_with_fab(args, aa, logits_fn, x, y, attacks,
                                                        overrides, current)
        version = "standard, composed"
        notes.append("run_autoattack(custom, attacks before FAB-T) -> FAB-T by "
                     "jaxrobust.attacks._fab.fab_targeted on the still-robust points (batches "
                     "of --bs, jitted, timed) -> run_autoattack(custom, attacks after FAB-T) on "
                     "the points still robust: the standard cascade; the FAB-T cascade hook "
                     "(_fab.autoattack_pass) does not exist yet")
    total = time.time() - t0
  linf = float(np.abs(x_adv - x).max())
  l2 = float(np.sqrt(np.sum((x_adv - x).reshape(len(x), -1).astype(np.float64) ** 2,
                            axis=1)).max())
  return dict(
      impl="jaxrobust", version=version, norm=args.norm, attacks=list(attacks), n=len(x),
      bs=args.bs,
      eps=args.eps, seed=args.seed, model_info=info, notes=notes,
      robust_accuracy=ra, seconds={k: round(v, 2) for k, v in secs.items()},
      seconds_attacks=round(sum(secs.values()), 2), seconds_total=round(total, 2),
      compile_seconds={k: round(v, 2) for k, v in compile_s.items()},
      compile_cache=os.environ.get("JAX_COMPILATION_CACHE_DIR"),
      final_robust_accuracy=float(np.mean(robust)), max_linf=linf, max_l2=l2,
      robust_flags="".join("1" if r else "0" for r in robust),
      peak_rss_mib=round(peak_rss_mib(), 1), threads=cpu_threads(),
      xla_flags=os.environ.get("XLA_FLAGS", ""),
      foreign_cpu_s=round(load.foreign_cpu_s, 1), foreign_load=round(load.foreign_load, 3),
      versions=dict(jax=jax.__version__, jaxlib=jax.lib.__version__,
                    python=platform.python_version(), executable=sys.executable,
                    devices=str(jax.devices())))


def _jax_cascade_with_fab(args, aa, logits_fn, x, y, attacks, overrides, current):
  """The standard cascade with FAB-T from ``fab_targeted`` in its position."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jaxrobust.attacks._fab import fab_targeted  # pylint: disable=g-import-not-at-top
  i = attacks.index("fab_t")
  before, after = attacks[:i], attacks[i + 1:]
  n = len(x)
  ra, secs = {}, {}
  robust = None
  x_adv = x.copy()

  def cascade(names, idx):
    s = aa.AutoAttackSettings.for_version(args.eps, args.norm, version="custom", attacks=names,
                                          **overrides)
    res = aa.run_autoattack(logits_fn, x[idx], y[idx], s, batch_size=args.bs,
                            seed=args.seed, progress=False)
    return res

  res = cascade(before, np.arange(n))
  robust = res.robust.copy()
  x_adv[:] = res.x_adv
  ra["clean"] = res.clean_accuracy
  for k in before:
    ra[k] = res.robust_accuracy[k]
    secs[k] = res.seconds[k]

  current[0] = "fab_t"
  fab = jax.jit(lambda xb, yb, k: fab_targeted(logits_fn, k, xb, yb, eps=args.eps,
                                               norm=args.norm, n_target_classes=9))
  predict = jax.jit(lambda xb: jnp.argmax(logits_fn(xb), -1))
  t0 = time.time()
  idx = np.flatnonzero(robust)
  key = jax.random.fold_in(jax.random.PRNGKey(args.seed), 1000)
  for c, lo in enumerate(range(0, len(idx), args.bs)):
    chunk = idx[lo:lo + args.bs]
    pad = np.concatenate([chunk, np.full(args.bs - len(chunk), chunk[0])])
    adv = np.asarray(fab(x[pad], y[pad], jax.random.fold_in(key, c)))
    pred = np.asarray(predict(adv))[: len(chunk)]
    broken = pred != y[chunk]
    robust[chunk[broken]] = False
    x_adv[chunk[broken]] = adv[: len(chunk)][broken]
  secs["fab_t"] = time.time() - t0
  ra["fab_t"] = float(robust.mean())

  if after:
    # Every point still robust is in ``idx``: the cumulative accuracy after a
    # later attack is its accuracy on the sub-run, rescaled to all n points.
    idx = np.flatnonzero(robust)
    if len(idx):
      res = cascade(after, idx)
      robust[idx] = res.robust
      x_adv[idx] = res.x_adv
      for k in after:
        secs[k] = res.seconds.get(k, 0.0)
        ra[k] = res.robust_accuracy[k] * len(idx) / n
    else:
      for k in after:
        secs[k], ra[k] = 0.0, ra["fab_t"]
  return ra, secs, robust, x_adv


# ----------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------

def _arch(args) -> str:
  if args.model != "checkpoint":
    return args.model
  with open(os.path.join(args.workdir, "config.json"), encoding="utf-8") as f:
    return json.load(f)["model"]["name"]


def _attack_list(args):
  """The attacks, registry spelling: the version's list, or the ``--attacks`` list."""
  if args.attacks in ("", "standard", "version", args.version):
    return list(VERSIONS[args.version])
  return [canonical(a) for a in args.attacks.split(",") if a.strip()]


def _common_argv(args):
  return ["--workdir", args.workdir, "--which", args.which, "--n", str(args.n),
          "--bs", str(args.bs), "--model", args.model, "--model_seed", str(args.model_seed),
          "--eps", repr(args.eps), "--seed", str(args.seed), "--attacks", args.attacks,
          "--version", args.version, "--norm", args.norm,
          "--square_queries", str(args.square_queries), "--threads", str(args.threads),
          "--jax_fab", args.jax_fab]


def _delegate_torch(args) -> bool:
  """Whether the torch side must run in another interpreter (``--torch_python``)."""
  # abspath, not realpath: a virtualenv's python is a link to the base interpreter.
  return bool(args.torch_python) and (os.path.abspath(args.torch_python)
                                      != os.path.abspath(sys.executable))


def side_command(args, impl: str, out: str) -> list:
  """The command line of one side's process.

  The jax side runs in this interpreter; the torch side under
  ``--torch_python`` (default: this one), told to export the weights with this
  interpreter (``--jax_python``), so that it never imports jax or jaxrobust.
  """
  python = (args.torch_python or sys.executable) if impl == "torch" else sys.executable
  cmd = [python, os.path.abspath(__file__), "--impl", impl, "--out", out,
         "--aa_path", args.aa_path] + _common_argv(args)
  if impl == "torch":
    cmd += ["--jax_python", args.jax_python if args.impl == "torch" else sys.executable]
  if args.compile_cache:
    cmd += ["--compile_cache", args.compile_cache]
  return cmd


def _run_side(args, impl: str) -> dict:
  with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
    path = f.name
  try:
    subprocess.run(side_command(args, impl, path), check=True)
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  finally:
    os.unlink(path)


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  p.add_argument("--impl", choices=("jax", "torch", "both", "export"), default="both")
  p.add_argument("--aa_path", default="/tmp/aa_ref",
                 help="folder holding the reference 'autoattack' package (not vendored)")
  p.add_argument("--workdir", default=os.path.join(REPO_ROOT, "runs", "local1"))
  p.add_argument("--which", default="best")
  p.add_argument("--model", default="checkpoint",
                 help="'checkpoint' (the --workdir model) or a jaxrobust model name, "
                      "random init (timing only)")
  p.add_argument("--model_seed", type=int, default=0)
  p.add_argument("--n", type=int, default=500, help="first n CIFAR-10 test points")
  p.add_argument("--bs", type=int, default=250)
  p.add_argument("--eps", type=float, default=None,
                 help="budget in pixel units (default 8/255 for linf, 0.5 for l2)")
  p.add_argument("--version", choices=tuple(VERSIONS), default="standard")
  p.add_argument("--norm", choices=tuple(DEFAULT_EPS), default="linf")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--attacks", default="version",
                 help="'version' (the --version's list) or a comma list (a custom cascade, "
                      "standard settings); apgd_ce or apgd-ce")
  p.add_argument("--square_queries", type=int, default=5000)
  p.add_argument("--threads", type=int, default=cpu_threads(),
                 help="torch intra-op threads (XLA:CPU uses the CPUs of the affinity mask)")
  p.add_argument("--jax_fab", choices=("compose", "skip"), default="compose",
                 help="when the jaxrobust cascade lacks FAB-T: run it from fab_targeted in "
                      "its position (compose) or leave it out (skip)")
  p.add_argument("--compile_cache", default="",
                 help="JAX persistent compilation cache dir (a second run is 'warm')")
  p.add_argument("--torch_python", "--torch-python", dest="torch_python", default="",
                 help="interpreter with torch (numpy, no jax needed) for the torch side; "
                      "default: this one")
  p.add_argument("--jax_python", default=sys.executable,
                 help="interpreter with jax and jaxrobust for the weight export of --impl "
                      "torch (default: this one; set by the parent when it runs the torch "
                      "side under --torch_python)")
  p.add_argument("--export_to", default="")
  p.add_argument("--out", default="", help="write the JSON result here")
  args = p.parse_args(argv)
  if args.eps is None:
    args.eps = DEFAULT_EPS[args.norm]
  return args


def main(argv=None) -> int:
  args = parse_args(argv)
  if args.impl == "export":
    run_export(args)
    return 0
  info = dict(cpu=cpu_model(), cpus=os.cpu_count(), affinity=cpu_threads(),
              date=time.strftime("%Y-%m-%d %H:%M:%S"), argv=sys.argv)
  if args.impl == "jax":
    info["source"] = source_info()
  if args.impl == "jax" or args.impl == "torch" and not _delegate_torch(args):
    out = run_jax(args) if args.impl == "jax" else run_torch(args)
    out["machine"] = info
  elif args.impl == "torch":  # run under --torch_python, this interpreter exports.
    out = _run_side(args, "torch")
  else:
    out = {"machine": info}
    for impl in ("jax", "torch"):
      out[impl] = _run_side(args, impl)
    j, t = out["jax"], out["torch"]
    out["speedup_attacks"] = round(t["seconds_attacks"] / j["seconds_attacks"], 2)
    out["speedup_total"] = round(t["seconds_total"] / j["seconds_total"], 2)
    out["robust_accuracy_diff_pp"] = {
        k: round(100 * (j["robust_accuracy"][k] - t["robust_accuracy"][k]), 2)
        for k in t["robust_accuracy"] if j["robust_accuracy"].get(k) is not None}
    jf, tf = j["robust_flags"], t["robust_flags"]
    out["robust_flags_disagree"] = sum(a != b for a, b in zip(jf, tf))
  text = json.dumps(out, indent=2)
  print(text)
  if args.out:
    with open(args.out, "w", encoding="utf-8") as f:
      f.write(text + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
