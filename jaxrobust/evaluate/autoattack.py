"""AutoAttack (Croce & Hein 2020) over a dataset: the cascade, checks, resume.

Reference: ``fra31/auto-attack:autoattack/autoattack.py`` (``AutoAttack.
run_standard_evaluation``) and ``checks.py``. The cascade:

1. clean predictions; initially misclassified points count as non-robust;
2. for each attack in order, only the points still robust are attacked, each
   attack starting from the clean image; a point whose adversarial example is
   misclassified becomes non-robust and keeps that example;
3. the final robust accuracy is the point-wise worst case; per-attack
   cumulative robust accuracy and wall time are reported.

Versions: ``standard`` = APGD-CE (1 restart) -> APGD-T (9 targets) -> FAB-T
(9 targets) -> Square (5,000 queries); ``plus`` = APGD-CE x5, APGD-DLR x5,
FAB x5, Square x5, APGD-T, FAB-T; ``rand`` = APGD-CE, APGD-DLR with EOT 20
(the model's ``logits_fn`` must then accept ``(x, key)``); ``custom`` = any
list of those names.

Deliberate differences: the still-robust points are gathered on the host and
attacked in fixed-size, device-sharded batches (padding rows are ignored);
APGD-T's target classes and APGD's restarts are each one pass over the points
still robust after the previous pass (the reference does the same inside each
batch of 250), while FAB-T and Square loop over their targets/restarts inside
one jitted call, and so does untargeted FAB (version 'plus': its restarts);
random streams differ from PyTorch's. The
reference's ``check_dynamic`` (Python tracing of backward hooks) has no
meaning for a jitted pure function and is replaced by a batch-independence
check (eval-mode BatchNorm).
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
import warnings
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from jaxrobust.attacks._apgd import apgd_single_run, top_k_target
from jaxrobust.attacks._fab import fab, fab_targeted
from jaxrobust.attacks._square import square
from jaxrobust.attacks._losses import dlr_loss
from jaxrobust.errors import CheckpointError, ConfigError
from jaxrobust.parallel import check_batch_size, data_sharding, replicated

VERSIONS = {
    "standard": ("apgd-ce", "apgd-t", "fab-t", "square"),
    "plus": ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"),
    "rand": ("apgd-ce", "apgd-dlr"),
}
ATTACK_NAMES = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")


@dataclasses.dataclass(frozen=True)
class AutoAttackSettings:
  """Per-version attack settings (reference ``set_version``)."""
  eps: float
  norm: str = "linf"
  version: str = "standard"
  attacks: tuple = ()
  apgd_restarts: int = 1
  apgd_steps: int = 100
  apgd_t_targets: int = 9
  fab_restarts: int = 1
  fab_steps: int = 100
  fab_t_targets: int = 9
  square_queries: int = 5000
  square_restarts: int = 1
  eot_iter: int = 1

  @classmethod
  def for_version(cls, eps: float, norm: str = "linf", version: str = "standard",
                  attacks=None, **overrides) -> "AutoAttackSettings":
    """Settings of ``version``; ``attacks`` is required for ``'custom'``.

    Raises:
      ConfigError: unknown version/attack/norm, invalid eps.
    """
    if norm not in ("linf", "l2"):
      raise ConfigError(f"AutoAttack norm must be 'linf' or 'l2', got {norm!r}")
    if not eps > 0:
      raise ConfigError(f"AutoAttack eps must be > 0 (pixel units), got {eps}")
    if version == "custom":
      if not attacks:
        raise ConfigError("version='custom' needs a list of attacks from " f"{ATTACK_NAMES}")
    elif version in VERSIONS:
      if attacks:
        raise ConfigError(f"attacks are fixed by version={version!r}; use version='custom'")
      attacks = VERSIONS[version]
    else:
      raise ConfigError(f"unknown AutoAttack version {version!r}; use one of "
                        f"{sorted(VERSIONS) + ['custom']}")
    bad = [a for a in attacks if a not in ATTACK_NAMES]
    if bad:
      raise ConfigError(f"unknown AutoAttack attack(s) {bad}; choose from {ATTACK_NAMES}")
    kw = dict(eps=float(eps), norm=norm, version=version, attacks=tuple(attacks))
    if version == "plus":
      kw.update(apgd_restarts=5, fab_restarts=5, square_restarts=5)
    if version == "rand":
      kw.update(eot_iter=20)
    kw.update(overrides)
    return cls(**kw)


def _sub_runs(name: str, s: AutoAttackSettings) -> int:
  """Number of passes of an attack (restarts x target classes)."""
  if name in ("apgd-ce", "apgd-dlr"):
    return s.apgd_restarts
  if name == "apgd-t":
    return s.apgd_t_targets
  if name in ("fab", "fab-t", "square"):
    return 1  # restarts / target classes loop inside the attack
  raise ConfigError(f"unknown attack {name!r}")


def _attack_fn(name: str, s: AutoAttackSettings) -> Callable:
  """``fn(logits_fn, key, x, y, sub) -> x_adv`` for pass ``sub`` of attack ``name``."""
  if name in ("apgd-ce", "apgd-dlr"):
    loss = "ce" if name == "apgd-ce" else "dlr"

    def fn(logits_fn, key, x, y, sub):
      del sub
      return apgd_single_run(logits_fn, key, x, y, eps=s.eps, norm=s.norm,
                             num_steps=s.apgd_steps, loss=loss, eot_iter=s.eot_iter)[0]
    return fn
  if name == "apgd-t":
    def fn(logits_fn, key, x, y, sub):
      target = top_k_target(logits_fn(x), sub + 2)
      return apgd_single_run(logits_fn, key, x, y, eps=s.eps, norm=s.norm,
                             num_steps=s.apgd_steps, loss="dlr_targeted", y_target=target)[0]
    return fn
  if name == "fab-t":
    def fn(logits_fn, key, x, y, sub):
      del sub
      return fab_targeted(logits_fn, key, x, y, eps=s.eps, norm=s.norm, num_steps=s.fab_steps,
                          num_restarts=s.fab_restarts, n_target_classes=s.fab_t_targets)
    return fn
  if name == "fab":
    def fn(logits_fn, key, x, y, sub):
      del sub
      return fab(logits_fn, key, x, y, eps=s.eps, norm=s.norm, num_steps=s.fab_steps,
                 num_restarts=s.fab_restarts)
    return fn
  if name == "square":
    def fn(logits_fn, key, x, y, sub):
      del sub
      return square(logits_fn, key, x, y, eps=s.eps, norm=s.norm, n_queries=s.square_queries,
                    num_restarts=s.square_restarts)
    return fn
  raise ConfigError(f"unknown attack {name!r}")


def sanity_checks(logits_fn: Callable, x: jax.Array, y: jax.Array, s: AutoAttackSettings,
                  n_classes: int) -> list[str]:
  """The reference's checks on one batch; returns (and warns) the messages.

  * non-deterministic outputs (randomised defence -> use version 'rand');
  * outputs that look like probabilities (pass logits);
  * outputs that depend on the rest of the batch (BatchNorm in train mode);
  * too few classes for DLR / APGD-T / FAB-T targets;
  * correctly classified points with zero gradient of the DLR loss (gradient
    masking); the reference counts misclassified points too, for which DLR can
    be constant, so this check is restricted to the points that get attacked.
  """
  msgs = []
  if s.version != "rand":
    outs = [np.asarray(logits_fn(x)) for _ in range(3)]
    if any(not np.allclose(outs[0], o, atol=1e-5) for o in outs[1:]):
      msgs.append("the model's output is not deterministic: it seems to be a randomized "
                  "defense; use version='rand'")
  out = np.asarray(logits_fn(x))
  if out.max() < 1 + 1e-5 and out.min() > -1e-5 and np.all(np.abs(out.sum(-1) - 1) < 1e-5):
    msgs.append("the output looks like a probability distribution: pass logits, not softmax")
  if x.shape[0] > 1:
    single = np.asarray(logits_fn(x[:1]))
    if not np.allclose(single, out[:1], atol=1e-4, rtol=1e-4):
      msgs.append("the output of an example depends on the rest of the batch (BatchNorm in "
                  "train mode?): evaluate the eval view (running averages)")
  if any(a in s.attacks for a in ("apgd-dlr", "apgd-t")) and n_classes <= 3:
    msgs.append(f"with {n_classes} classes the (targeted) DLR loss is not defined")
  if "apgd-t" in s.attacks and s.apgd_t_targets + 1 > n_classes:
    msgs.append(f"APGD-T uses {s.apgd_t_targets} target classes but only {n_classes - 1} exist")
  if "fab-t" in s.attacks and s.fab_t_targets + 1 > n_classes:
    msgs.append(f"FAB-T uses {s.fab_t_targets} target classes but only {n_classes - 1} exist")
  if n_classes >= 3:
    g = jax.grad(lambda z: jnp.sum(dlr_loss(logits_fn(z), y)))(x)
    # Only correctly classified points are attacked; for a misclassified point
    # whose true class ranks third, DLR is constant (= 1) and its gradient 0.
    correct = np.argmax(out, -1) == np.asarray(y)
    zero = int(np.sum((np.abs(np.asarray(g)).reshape(len(x), -1).sum(-1) == 0) & correct))
    if zero:
      msgs.append(f"{zero} points have zero gradient: gradient-based attacks may be unreliable")
  for m in msgs:
    warnings.warn(f"AutoAttack check: {m}", stacklevel=2)
  return msgs


@dataclasses.dataclass
class AutoAttackResult:
  """Outcome of :func:`run_autoattack`.

  Attributes:
    clean_accuracy: fraction of points classified correctly.
    robust_accuracy: ``{'clean': ..., attack: cumulative robust accuracy}`` in
      cascade order; the last value is the AutoAttack robust accuracy.
    robust: bool ``[N]`` point-wise robust flags after all attacks.
    x_adv: float32 ``[N, H, W, C]``: the adversarial example of each broken
      point, the clean image elsewhere.
    seconds: wall time per attack.
    warnings: messages of the sanity checks.
  """
  clean_accuracy: float
  robust_accuracy: dict
  robust: np.ndarray
  x_adv: np.ndarray
  seconds: dict
  warnings: list


def _state_paths(state_dir):
  return os.path.join(state_dir, "aa_state.json"), os.path.join(state_dir, "aa_state.npz")


def _save_state(state_dir, meta, robust, x_adv):
  os.makedirs(state_dir, exist_ok=True)
  js, npz = _state_paths(state_dir)
  tmp = npz + ".tmp.npz"
  np.savez(tmp, robust=robust, x_adv=x_adv)
  os.replace(tmp, npz)
  with open(js + ".tmp", "w", encoding="utf-8") as f:
    json.dump(meta, f, indent=2)
  os.replace(js + ".tmp", js)


def _load_state(state_dir, expect):
  js, npz = _state_paths(state_dir)
  if not os.path.exists(js):
    return None
  try:
    with open(js, encoding="utf-8") as f:
      meta = json.load(f)
    with np.load(npz) as z:
      robust, x_adv = z["robust"], z["x_adv"]
  except Exception as e:  # pylint: disable=broad-except
    raise CheckpointError(f"AutoAttack state in {state_dir} is unreadable ({e}); delete it to "
                          f"start over") from e
  for k, v in expect.items():
    if meta.get(k) != v:
      raise CheckpointError(f"AutoAttack state in {state_dir} was written for {k}="
                            f"{meta.get(k)!r}, not {v!r}; use another --aa_state dir or delete it")
  return meta, robust, x_adv


PAD_QUANTUM = 32  # rows: short chunks are padded to a multiple of this (and of the mesh size).


def run_autoattack(logits_fn: Callable, x: np.ndarray, y: np.ndarray, settings:
                   AutoAttackSettings, *, batch_size: int = 250, mesh=None, seed: int = 0,
                   state_dir: str | None = None, progress: bool = True) -> AutoAttackResult:
  """Runs the AutoAttack cascade on ``(x, y)``.

  Args:
    logits_fn: pure ``x -> logits`` of the eval-mode model, float32
      ``[B, K]``; it is traced inside ``jax.jit`` (close over parameters).
    x: float32 ``[N, H, W, C]`` in [0, 1] (or uint8 0..255).
    y: int ``[N]`` labels.
    settings: from :meth:`AutoAttackSettings.for_version`.
    batch_size: attack batch (sharded over ``mesh``'s ``data`` axis); a
      shorter chunk of still-robust points is padded only to the next multiple
      of :data:`PAD_QUANTUM` (rounded to the mesh size).
    mesh: a ``('data',)`` mesh; None = a single device.
    seed: base seed; attack ``a``'s pass ``p`` on chunk ``c`` uses
      ``fold_in(fold_in(fold_in(key(seed), a), p), c)``.
    state_dir: when given, the state (robust flags, adversarial examples,
      finished passes) is saved there after every pass and an interrupted
      evaluation resumes from it.
    progress: show a progress bar.

  Returns:
    An :class:`AutoAttackResult`.

  Raises:
    ConfigError: batch size not divisible by the mesh size.
    CheckpointError: a state written for other settings or data.
  """
  x = np.asarray(x)
  if x.dtype == np.uint8:
    x = x.astype(np.float32) / 255.0
  x = x.astype(np.float32)
  y = np.asarray(y).astype(np.int32)
  n = len(x)
  if mesh is not None:
    check_batch_size(batch_size, mesh, "AutoAttack batch size")
    rep, dat = replicated(mesh), data_sharding(mesh)
    jit = lambda f: jax.jit(f, in_shardings=(dat, dat, rep, rep), out_shardings=dat)
  else:
    jit = jax.jit

  predict = jax.jit(lambda xb: jnp.argmax(logits_fn(xb), -1))

  n_dev = 1 if mesh is None else mesh.devices.size
  quantum = n_dev * -(-PAD_QUANTUM // n_dev)

  def batches(idx):
    # A short (last or only) chunk is padded to a multiple of `quantum`, not to the full
    # batch: later attacks see only the still-robust points, often far fewer than a batch,
    # and padding rows cost as much as real ones. Each distinct size compiles once.
    for lo in range(0, len(idx), batch_size):
      chunk = idx[lo:lo + batch_size]
      size = min(batch_size, quantum * -(-len(chunk) // quantum))
      pad = np.concatenate([chunk, np.full(size - len(chunk), chunk[0])])
      yield lo // batch_size, chunk, pad

  def predict_all(xs):
    out = np.empty(len(xs), np.int32)
    for _, chunk, pad in batches(np.arange(len(xs))):
      out[chunk] = np.asarray(predict(xs[pad]))[: len(chunk)]
    return out

  fingerprint = {"eps": settings.eps, "norm": settings.norm, "attacks": list(settings.attacks),
                 "n": n, "seed": seed, "labels_sum": int(y.sum()),
                 "x_sum": round(float(x.sum()), 3)}
  restored = _load_state(state_dir, fingerprint) if state_dir else None
  first = x[:min(batch_size, n)]
  n_classes = int(np.asarray(logits_fn(first[:2])).shape[-1])
  msgs = sanity_checks(logits_fn, jnp.asarray(first), jnp.asarray(y[:len(first)]), settings,
                       n_classes)
  if restored is None:
    robust = predict_all(x) == y
    x_adv = x.copy()
    meta = dict(fingerprint, done=[], clean_accuracy=float(robust.mean()),
                robust_accuracy={"clean": float(robust.mean())}, seconds={})
  else:
    meta, robust, x_adv = restored
  key = jax.random.PRNGKey(seed)
  for a_i, name in enumerate(settings.attacks):
    fn = _attack_fn(name, settings)
    run = jit(lambda xb, yb, k, sub, fn=fn: fn(logits_fn, k, xb, yb, sub))
    t0 = time.time()
    n_sub = _sub_runs(name, settings)
    for sub in range(n_sub):
      tag = f"{name}:{sub}"
      if tag in meta["done"]:
        continue
      idx = np.flatnonzero(robust)
      it = batches(idx)
      if progress and len(idx):
        it = tqdm.tqdm(it, total=-(-len(idx) // batch_size), leave=False,
                       desc=f"{name} {sub + 1}/{n_sub}")
      for c, chunk, pad in it:
        k = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(key, a_i), sub), c)
        adv = np.asarray(run(x[pad], y[pad], k, jnp.int32(sub)))[: len(chunk)]
        pred = np.asarray(predict(np.concatenate([adv, x[pad][len(chunk):]])))[: len(chunk)]
        broken = pred != y[chunk]
        robust[chunk[broken]] = False
        x_adv[chunk[broken]] = adv[broken]
      meta["done"].append(tag)
      meta["seconds"][name] = meta["seconds"].get(name, 0.0) + time.time() - t0
      t0 = time.time()
      meta["robust_accuracy"][name] = float(robust.mean())
      if state_dir:
        _save_state(state_dir, meta, robust, x_adv)
    meta["robust_accuracy"][name] = float(robust.mean())
  ra = meta["robust_accuracy"]
  if "square" in ra and len(ra) > 2:
    others = min(v for k, v in ra.items() if k != "square")
    if ra["square"] < others - 0.002:
      m = (f"Square decreased the robust accuracy by {others - ra['square']:.2%} after the "
           f"gradient attacks: possible gradient masking; the AutoAttack evaluation may be "
           f"unreliable")
      warnings.warn(f"AutoAttack check: {m}", stacklevel=2)
      msgs.append(m)
  return AutoAttackResult(meta["clean_accuracy"], dict(ra), robust, x_adv,
                          {k: round(v, 2) for k, v in meta["seconds"].items()}, msgs)
