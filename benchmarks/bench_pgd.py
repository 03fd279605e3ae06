r"""PGD-10 attack and PGD-AT train-step throughput: jaxrobust vs PyTorch, CPU.

Measures, on one machine in one run, for PreAct-ResNet-18 on CIFAR-shaped
inputs (32x32x3, 10 classes):

* ``jax_pgd``: ``jaxrobust.attacks.pgd`` (L-inf, eps 8/255, step 2/255, CE,
  uniform start) on the eval view of the model, inside ``jax.jit``: images/s.
* ``jax_train``: one PGD-AT step built exactly as ``jaxrobust/train/loop.py``
  does (``make_train_step`` + ``jit_train_step``; PGD-10 on the train-mode BN
  view, SGD with momentum and weight decay): steps/s.
* ``torch_pgd`` / ``torch_train``: the same network (a PreAct-ResNet-18 written
  below, normalisation inside the forward), the same attack loop and the same
  train step (attack with ``model.train()`` as in Rice et al.'s code, then
  SGD(0.9, wd 5e-4)) in PyTorch on CPU, with ``torch.set_num_threads`` equal to
  the number of CPUs XLA uses.

Also reported: compile time (trace + lower + XLA compile) of each jitted
function, and the work in GFLOP from XLA's cost analysis. XLA counts a
while-loop body once, so the flop count is built from single-step programs:
``PGD-k = k * PGD-1`` and ``train(k) = train(PGD-1) + (k - 1) * PGD-1 (train
BN)``. The same flop count is used for the torch rows (same network and
algorithm), so GFLOP/s compares directly.

Every measured configuration runs in its own fresh Python process (XLA flags
are read when JAX starts; torch and JAX never share a process or a thread
pool). Usage::

    # headline table (batch 128):
    python benchmarks/bench_pgd.py --out bench.json
    # quick run:
    python benchmarks/bench_pgd.py --batch 16 --repeats 1
    # what-we-tried sweeps (jax attack only, batch 32):
    python benchmarks/bench_pgd.py --parts jax_pgd --batch 32 --unroll 1,2,5,10
    python benchmarks/bench_pgd.py --parts jax_pgd --batch 32 --xla-variants all

Requires the ``bench`` extra (``pip install -e '.[bench]'``, a CPU torch), or
``--torch_python PATH``: the torch parts then run under PATH (an interpreter with
torch and numpy, e.g. a separate virtualenv), the jax parts under this one.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

PARTS = ("jax_pgd", "jax_train", "torch_pgd", "torch_train")
EPS, STEP_SIZE = 8 / 255, 2 / 255
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)
# Import the checkout's jaxrobust (its __init__ applies the XLA:CPU defaults),
# also when an older editable install registered it as a namespace package.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
  sys.path.insert(0, REPO_ROOT)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _machine import busy_cpu_s, cpu_model, cpu_threads, own_cpu_s  # noqa: E402

# XLA:CPU flag variants for ``--xla-variants``. ``None``: jaxrobust's own
# defaults (``jaxrobust.cli.CPU_XLA_FLAGS``, applied on import). A string is
# used as the whole of XLA_FLAGS with jaxrobust's defaults switched off, so
# each variant is exactly what it says.
YNN_OFF = "--xla_cpu_experimental_ynn_fusion_type="
XLA_VARIANTS = {
    "jaxrobust": None,
    "xla_stock": "",
    "ynn_conv": "--xla_cpu_experimental_ynn_fusion_type=individual_convolution",
    "ynn_stock_plus_conv": "--xla_cpu_experimental_ynn_fusion_type=+individual_convolution",
    "ynn_dot_conv": ("--xla_cpu_experimental_ynn_fusion_type="
                     "individual_dot,individual_convolution"),
    "no_xnnpack": f"{YNN_OFF} --xla_cpu_use_xnnpack=false",
    "onednn": (f"{YNN_OFF} --xla_cpu_use_onednn=true "
               "--xla_cpu_experimental_onednn_custom_call=true"),
    "fast_math": f"{YNN_OFF} --xla_cpu_enable_fast_math=true",
    "single_thread_eigen": f"{YNN_OFF} --xla_cpu_multi_thread_eigen=false",
    "vector_width_512": f"{YNN_OFF} --xla_cpu_prefer_vector_width=512",
    "xnn_off": f"{YNN_OFF} --xla_cpu_experimental_xnn_fusion_type=",
    "xnn_graph_greedy": (f"{YNN_OFF} --xla_cpu_experimental_xnn_graph_fusion_mode="
                         "XNN_GRAPH_FUSION_MODE_GREEDY"),
    "onednn_fusion": (f"{YNN_OFF} --xla_cpu_use_onednn=true "
                      "--xla_cpu_experimental_onednn_fusion_type=dot,eltwise"),
    "concurrency_scheduler": (f"{YNN_OFF} --xla_cpu_scheduler_type="
                              "CPU_SCHEDULER_TYPE_CONCURRENCY_OPTIMIZED"),
    "preset_fast_runtime": f"{YNN_OFF} --xla_cpu_opt_preset=CPU_OPT_PRESET_FAST_RUNTIME",
    "max_isa_avx2": f"{YNN_OFF} --xla_cpu_max_isa=AVX2",
}


def foreign_load(seconds: float = 2.0) -> float:
  """Fraction of the machine's CPUs used by other processes over ``seconds``."""
  b0, o0, t0 = busy_cpu_s(), own_cpu_s(), time.perf_counter()
  time.sleep(seconds)
  busy = (busy_cpu_s() - b0) - (own_cpu_s() - o0)
  return max(0.0, busy) / ((time.perf_counter() - t0) * (os.cpu_count() or 1))


def wait_until_quiet(max_load: float, max_wait_s: float = 120.0) -> float:
  """Blocks until other processes use < ``max_load`` of the CPUs; returns the wait."""
  t0 = time.perf_counter()
  while foreign_load() >= max_load and time.perf_counter() - t0 < max_wait_s:
    time.sleep(10.0)
  return time.perf_counter() - t0


def time_calls(fn, repeats: int, warmup: int, max_load: float = 1.0,
               max_tries: int = 0, max_wait_s: float = 120.0) -> dict:
  """Seconds per call of ``fn()`` (which must block until its work is done).

  Each timed call also measures the CPU other processes used meanwhile (as a
  fraction of the machine). With ``max_load < 1`` a call during which that
  fraction reached ``max_load`` is discarded and retried after the machine
  is quiet again (waiting ``max_wait_s`` at most), up to ``max_tries`` calls
  in all; if too few calls were quiet, the least loaded of the rest are kept.

  Returns:
    ``{'times': wall seconds, 'cpu_s': this process's CPU seconds,
    'foreign_load': other processes' share of the CPUs}``, one entry per kept
    call.
  """
  for _ in range(warmup):
    fn()
  calls = []  # (foreign load, wall s, cpu s)
  max_tries = max(max_tries, repeats)
  while sum(c[0] < max_load for c in calls) < repeats and len(calls) < max_tries:
    if max_load < 1.0 and calls:
      wait_until_quiet(max_load, max_wait_s)
    b0, o0, t0 = busy_cpu_s(), own_cpu_s(), time.perf_counter()
    fn()
    dt = time.perf_counter() - t0
    foreign = max(0.0, (busy_cpu_s() - b0) - (own_cpu_s() - o0)) / (
        dt * (os.cpu_count() or 1))
    calls.append((foreign, dt, own_cpu_s() - o0))
    if foreign >= max_load:
      print(f"  (a {dt:.2f} s call ran while other processes used {foreign:.0%} of the "
            f"CPUs)", file=sys.stderr, flush=True)
  kept = sorted(calls)[:repeats]
  return {"times": [c[1] for c in kept], "cpu_s": [c[2] for c in kept],
          "foreign_load": [c[0] for c in kept], "discarded": len(calls) - len(kept)}


def _time(fn, spec):
  return time_calls(fn, spec["repeats"], spec["warmup"], spec["max_load"],
                    spec["max_tries"], spec["max_wait"])


def make_data(batch: int, seed: int = 0):
  """A fixed random CIFAR-shaped batch: uint8 NHWC images and int labels."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  rs = np.random.RandomState(seed)
  images = rs.randint(0, 256, size=(batch, 32, 32, 3), dtype=np.uint8)
  labels = rs.randint(0, 10, size=(batch,)).astype(np.int32)
  return images, labels


# ----------------------------------------------------------------------------
# jaxrobust.
# ----------------------------------------------------------------------------


def _flops(compiled) -> float:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  return float(cost.get("flops", 0.0)) if cost else 0.0


def _compile(jitted, *args):
  """``jitted.lower(*args).compile()``; returns it, its seconds and the foreign load."""
  b0, o0, t0 = busy_cpu_s(), own_cpu_s(), time.perf_counter()
  compiled = jitted.lower(*args).compile()
  dt = time.perf_counter() - t0
  foreign = max(0.0, (busy_cpu_s() - b0) - (own_cpu_s() - o0)) / (dt * (os.cpu_count() or 1))
  return compiled, dt, foreign


def _vjp_pgd(logits_fn, rng, x, y, *, eps, step_size, num_steps):
  """PGD-k L-inf written with ``jax.vjp`` (a what-we-tried variant)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  def per_example_ce(xa):
    logp = jax.nn.log_softmax(logits_fn(xa), -1)
    return -jnp.take_along_axis(logp, y[:, None], -1)[:, 0]

  x_adv = jnp.clip(x + jnp.clip(jax.random.uniform(rng, x.shape, x.dtype, -eps, eps),
                                -eps, eps), 0.0, 1.0)
  for _ in range(num_steps):
    loss, vjp = jax.vjp(per_example_ce, x_adv)
    (g,) = vjp(jnp.ones_like(loss))
    x_adv = x_adv + step_size * jnp.sign(g)
    x_adv = jnp.clip(x + jnp.clip(x_adv - x, -eps, eps), 0.0, 1.0)
  return jax.lax.stop_gradient(x_adv)


def _use_lax_conv(model):
  """Swaps jaxrobust's conv (custom VJP, see models/layers.py) for plain lax."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from jax import lax  # pylint: disable=g-import-not-at-top
  for _, module in nnx.iter_graph(model):
    if isinstance(module, nnx.Conv):
      module.conv_general_dilated = lax.conv_general_dilated


def _jax_attack_fn(model_fns, *, num_steps, unroll, impl, bn="eval"):
  import jax  # pylint: disable=g-import-not-at-top
  from jaxrobust.attacks import pgd  # pylint: disable=g-import-not-at-top

  def attack(params, batch_stats, rng, x, y):
    logits_fn = model_fns.logits_fn(params, batch_stats, bn=bn)
    if impl == "vjp":
      return _vjp_pgd(logits_fn, rng, x, y, eps=EPS, step_size=STEP_SIZE,
                      num_steps=num_steps)
    return pgd(logits_fn, rng, x, y, eps=EPS, step_size=STEP_SIZE, num_steps=num_steps,
               norm="linf", loss="ce", random_start="uniform", unroll=unroll)

  return jax.jit(attack)


def run_jax_pgd(spec: dict) -> dict:
  """Child: the jaxrobust PGD attack on the eval-mode model."""
  import jaxrobust  # pylint: disable=g-import-not-at-top,unused-import  (XLA defaults)
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from jaxrobust.attacks import default_unroll  # pylint: disable=g-import-not-at-top
  from jaxrobust.methods import ModelFns  # pylint: disable=g-import-not-at-top
  from jaxrobust.models import create_model  # pylint: disable=g-import-not-at-top

  k, unroll = spec["steps"], spec["unroll"]
  model = create_model("preact_resnet18")
  if spec["impl"] == "lax_conv":
    _use_lax_conv(model)
  graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
  model_fns = ModelFns(graphdef)
  images, labels = make_data(spec["batch"])
  x = jnp.asarray(images, jnp.float32) / 255.0
  y = jnp.asarray(labels)
  rng = jax.random.PRNGKey(0)
  args = (params, batch_stats, rng, x, y)

  jitted = _jax_attack_fn(model_fns, num_steps=k, unroll=unroll, impl=spec["impl"])
  compiled, compile_s, compile_load = _compile(jitted, *args)
  res = {"compile_s": compile_s, "compile_foreign_load": compile_load,
         "flops_compiled": _flops(compiled),
         "unroll_used": default_unroll(k) if unroll is None else unroll}
  if spec["flops"]:
    one, _, _ = _compile(_jax_attack_fn(model_fns, num_steps=1, unroll=1, impl="library"),
                         *args)
    res["flops"] = k * _flops(one)
  res.update(_time(lambda: compiled(*args).block_until_ready(), spec))
  return res


def run_jax_train(spec: dict) -> dict:
  """Child: one jaxrobust PGD-AT train step, built as ``train/loop.py`` does."""
  import jaxrobust  # pylint: disable=g-import-not-at-top,unused-import  (XLA defaults)
  import jax  # pylint: disable=g-import-not-at-top
  from jaxrobust import parallel  # pylint: disable=g-import-not-at-top
  from jaxrobust.methods import ModelFns, method_from_config  # pylint: disable=g-import-not-at-top
  from jaxrobust.models import create_model  # pylint: disable=g-import-not-at-top
  from jaxrobust.train.defaults import default_config  # pylint: disable=g-import-not-at-top
  from jaxrobust.train.optim import make_optimizer  # pylint: disable=g-import-not-at-top
  from jaxrobust.train.state import create_train_state  # pylint: disable=g-import-not-at-top
  from jaxrobust.train.step import jit_train_step, make_train_step  # pylint: disable=g-import-not-at-top

  def build(num_steps, unroll):
    from jaxrobust.train.defaults import resolve_config  # pylint: disable=g-import-not-at-top
    config = resolve_config(default_config())  # PGD-AT of PreAct-ResNet-18, attack_bn='train'.
    config.unlock()
    attack = dict(config.method.attack)
    attack["num_steps"] = num_steps
    if unroll is not None:
      attack["unroll"] = unroll
    config.method.attack = attack
    mesh = parallel.make_mesh()
    model = create_model("preact_resnet18")
    tx = make_optimizer(config.train, total_steps=1000, steps_per_epoch=100)
    graphdef, state = create_train_state(model, tx, 0)
    model_fns = ModelFns(graphdef)
    method = method_from_config(config.method)
    state = parallel.replicate(state, mesh)
    step = jit_train_step(make_train_step(model_fns, method, tx, config.train.ema_decay), mesh)
    images, labels = make_data(spec["batch"])
    batch = parallel.global_batch({"image": images, "label": labels}, mesh)
    return step, state, batch, model_fns, config.method.attack_bn

  k = spec["steps"]
  step, state, batch, model_fns, attack_bn = build(k, spec["unroll"])
  compiled, compile_s, compile_load = _compile(step, state, batch)
  res = {"compile_s": compile_s, "compile_foreign_load": compile_load,
         "flops_compiled": _flops(compiled)}
  if spec["flops"]:
    step1, state1, batch1, _, _ = build(1, 1)
    train1, _, _ = _compile(step1, state1, batch1)
    x = jax.numpy.asarray(batch1["image"], jax.numpy.float32) / 255.0
    atk = _jax_attack_fn(model_fns, num_steps=1, unroll=1, impl="library", bn=attack_bn)
    one, _, _ = _compile(atk, state1.params, state1.batch_stats, state1.rng, x,
                      batch1["label"])
    res["flops"] = _flops(train1) + (k - 1) * _flops(one)
    del state1

  holder = {"state": state}

  def call():
    holder["state"], metrics = compiled(holder["state"], batch)
    jax.block_until_ready((holder["state"], metrics))

  res.update(_time(call, spec))
  return res


# ----------------------------------------------------------------------------
# PyTorch peer.
# ----------------------------------------------------------------------------


def _torch_model(channels_last: bool):
  """PreAct-ResNet-18 (CIFAR stem), the architecture of jaxrobust's model."""
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top,invalid-name

  class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3, 1x1 projection shortcut when needed."""

    def __init__(self, cin, cout, stride):
      super().__init__()
      self.bn1 = nn.BatchNorm2d(cin)
      self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
      self.bn2 = nn.BatchNorm2d(cout)
      self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
      self.shortcut = (nn.Conv2d(cin, cout, 1, stride, bias=False)
                       if stride != 1 or cin != cout else None)

    def forward(self, x):
      out = F.relu(self.bn1(x))
      sc = self.shortcut(out) if self.shortcut is not None else x
      out = self.conv1(out)
      out = self.conv2(F.relu(self.bn2(out)))
      return out + sc

  class PreActResNet18(nn.Module):
    """Normalise, 3x3 stem conv 64, blocks [2, 2, 2, 2] x (64, 128, 256, 512), BN-ReLU,
    global average pool, linear."""

    def __init__(self, num_classes=10, widths=(64, 128, 256, 512), num_blocks=(2, 2, 2, 2)):
      super().__init__()
      self.register_buffer("mean", torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1))
      self.register_buffer("std", torch.tensor(CIFAR10_STD).view(1, 3, 1, 1))
      self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
      blocks, cin = [], widths[0]
      for i, (n, w) in enumerate(zip(num_blocks, widths)):
        for j in range(n):
          blocks.append(PreActBlock(cin, w, 2 if (i > 0 and j == 0) else 1))
          cin = w
      self.blocks = nn.Sequential(*blocks)
      self.bn = nn.BatchNorm2d(cin)
      self.linear = nn.Linear(cin, num_classes)

    def forward(self, x):
      out = self.conv1((x - self.mean) / self.std)
      out = F.relu(self.bn(self.blocks(out)))
      out = torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)
      return self.linear(out)

  torch.manual_seed(0)
  model = PreActResNet18()
  if channels_last:
    model = model.to(memory_format=torch.channels_last)
  return model


def _torch_pgd(model, x, y, num_steps):
  """PGD-k L-inf, CE summed over the batch, uniform start: jaxrobust's loop."""
  import torch  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top,invalid-name
  delta = torch.empty_like(x).uniform_(-EPS, EPS)
  x_adv = torch.clamp(x + delta, 0.0, 1.0)
  for _ in range(num_steps):
    x_adv.requires_grad_(True)
    loss = F.cross_entropy(model(x_adv), y, reduction="sum")
    (g,) = torch.autograd.grad(loss, [x_adv])
    with torch.no_grad():
      x_adv = x_adv + STEP_SIZE * torch.sign(g)
      x_adv = torch.clamp(torch.min(torch.max(x_adv, x - EPS), x + EPS), 0.0, 1.0)
  return x_adv.detach()


def _torch_inputs(spec):
  import torch  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(spec["threads"])
  images, labels = make_data(spec["batch"])
  img = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()  # uint8 NCHW
  if spec["channels_last"]:
    img = img.contiguous(memory_format=torch.channels_last)
  return img, torch.from_numpy(labels).long()


def _to_float(img):
  return img.float().div_(255.0)


def run_torch_pgd(spec: dict) -> dict:
  """Child: the PGD attack in PyTorch, eval-mode BN."""
  import torch  # pylint: disable=g-import-not-at-top
  img, y = _torch_inputs(spec)
  model = _torch_model(spec["channels_last"]).eval()
  x = _to_float(img)
  k = spec["steps"]
  return dict(_time(lambda: _torch_pgd(model, x, y, k), spec),
              torch_threads=torch.get_num_threads())


def run_torch_train(spec: dict) -> dict:
  """Child: a PGD-AT step in PyTorch (Rice et al.: attack in train mode, SGD)."""
  import torch  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top,invalid-name
  img, y = _torch_inputs(spec)
  model = _torch_model(spec["channels_last"]).train()
  opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
  k = spec["steps"]

  def step():
    x = _to_float(img)
    x_adv = _torch_pgd(model, x, y, k)
    loss = F.cross_entropy(model(x_adv), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.item()

  return dict(_time(step, spec), torch_threads=torch.get_num_threads())


CHILDREN = {"jax_pgd": run_jax_pgd, "jax_train": run_jax_train, "torch_pgd": run_torch_pgd,
            "torch_train": run_torch_train}


# ----------------------------------------------------------------------------
# Driver.
# ----------------------------------------------------------------------------


def _child_env(xla_variant: str | None) -> dict:
  env = dict(os.environ)
  flags = XLA_VARIANTS[xla_variant] if xla_variant else None
  if flags is not None:
    env["XLA_FLAGS"] = flags
    env["JAXROBUST_XLA_DEFAULTS"] = "0"
  return env


def run_child(spec: dict, xla_variant: str | None = None, torch_python: str = "") -> dict:
  """Runs one configuration in a fresh interpreter; returns its result dict.

  ``torch_python``: interpreter of the torch parts (one with torch and numpy;
  they import nothing else); default this one.
  """
  python = torch_python if torch_python and spec["part"].startswith("torch") else sys.executable
  cmd = [python, os.path.abspath(__file__), "--child", json.dumps(spec)]
  proc = subprocess.run(cmd, env=_child_env(xla_variant), capture_output=True, text=True,
                        check=False)
  for line in proc.stderr.splitlines():
    if line.startswith("  (a "):
      print(line, file=sys.stderr, flush=True)
  for line in proc.stdout.splitlines():
    if line.startswith("@@RESULT "):
      return json.loads(line[len("@@RESULT "):])
  tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
  return {"error": f"exit {proc.returncode}: " + " | ".join(tail)}


def _child_main(spec_json: str) -> None:
  spec = json.loads(spec_json)
  res = CHILDREN[spec["part"]](spec)
  if spec["part"].startswith("jax"):
    import jax  # pylint: disable=g-import-not-at-top
    res["xla_flags"] = os.environ.get("XLA_FLAGS", "")
    res["backend"] = jax.default_backend()
  print("@@RESULT " + json.dumps(res), flush=True)


def versions(torch_python: str = "") -> dict:
  """Library versions, without importing JAX into the driver (it runs no work); torch's
  from ``torch_python`` when given."""
  from importlib import metadata  # pylint: disable=g-import-not-at-top
  out = {}
  for pkg in ("jax", "jaxlib", "flax", "torch", "numpy"):
    try:
      out[pkg] = metadata.version(pkg)
    except metadata.PackageNotFoundError:
      out[pkg] = None
  if torch_python:
    proc = subprocess.run([torch_python, "-c", "import torch; print(torch.__version__)"],
                          capture_output=True, text=True, check=False)
    out["torch"] = proc.stdout.strip() or None
    out["torch_python"] = torch_python
  out["python"] = platform.python_version()
  out["cpu"] = cpu_model()
  out["cpus"] = cpu_threads()
  return out


def _csv(s: str) -> list[str]:
  return [t.strip() for t in s.split(",") if t.strip()]


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--batch", type=int, default=128, help="batch size (default 128)")
  p.add_argument("--steps", type=int, default=10, help="PGD steps (default 10)")
  p.add_argument("--repeats", type=int, default=3, help="timed calls per configuration")
  p.add_argument("--warmup", type=int, default=1, help="untimed calls after compiling")
  p.add_argument("--rounds", type=int, default=1,
                 help="run every configuration this many times, interleaved (each in a "
                      "fresh process); times are pooled")
  p.add_argument("--parts", default=",".join(PARTS),
                 help=f"comma-separated subset of {','.join(PARTS)}")
  p.add_argument("--unroll", default="default",
                 help="jax_pgd/jax_train unroll factors, comma-separated; 'default' is "
                      "jaxrobust's own (jax_pgd: default_unroll; jax_train: the train "
                      "step's jaxrobust.methods.registry.TRAIN_UNROLL)")
  p.add_argument("--jax-impl", default="library",
                 help="jax_pgd variant(s): 'library' (jaxrobust.attacks.pgd, jax.grad of "
                      "the summed loss), 'vjp' (jax.vjp with a ones cotangent) and/or "
                      "'lax_conv' (the library attack on a model whose convs use plain "
                      "lax.conv_general_dilated instead of jaxrobust's CPU conv VJP)")
  p.add_argument("--xla-variants", default="jaxrobust",
                 help=f"XLA_FLAGS variants for the jax parts: 'all' or a comma list of "
                      f"{','.join(XLA_VARIANTS)}")
  p.add_argument("--torch-layouts", default="nchw,channels_last",
                 help="torch memory formats to run: nchw and/or channels_last")
  p.add_argument("--threads", type=int, default=0,
                 help="torch threads (default: the CPUs XLA uses)")
  p.add_argument("--max-load", type=float, default=0.1,
                 help="discard and retry a timed call during which other processes used "
                      "this fraction of the CPUs or more (and wait for the machine to be "
                      "quiet before each configuration); 1 disables")
  p.add_argument("--max-wait", type=float, default=120.0,
                 help="seconds to wait at most for a quiet machine before a configuration "
                      "or a retried call")
  p.add_argument("--max-tries", type=int, default=0,
                 help="timed calls at most per configuration (default 3 x repeats)")
  p.add_argument("--no-flops", action="store_true", help="skip the cost-analysis compiles")
  p.add_argument("--torch_python", "--torch-python", dest="torch_python", default="",
                 help="interpreter of the torch parts (a virtualenv with a CPU torch and "
                      "numpy); default: this one, which then needs the 'bench' extra")
  p.add_argument("--out", default="", help="write all results to this JSON file")
  p.add_argument("--child", default="", help=argparse.SUPPRESS)
  return p.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(argv)
  if args.child:
    _child_main(args.child)
    return 0
  parts = _csv(args.parts)
  bad = [p for p in parts if p not in PARTS]
  variants = list(XLA_VARIANTS) if args.xla_variants == "all" else _csv(args.xla_variants)
  bad += [v for v in variants if v not in XLA_VARIANTS]
  if bad:
    print(f"unknown part(s)/variant(s): {bad}", file=sys.stderr)
    return 2
  unrolls = [None if u == "default" else int(u) for u in _csv(args.unroll)]
  threads = args.threads or cpu_threads()
  info = versions(args.torch_python)
  info.update(batch=args.batch, steps=args.steps, repeats=args.repeats, rounds=args.rounds,
              max_load=args.max_load,
              warmup=args.warmup, torch_threads=threads, xla_threads=cpu_threads(),
              command=" ".join([os.path.basename(sys.executable)] + sys.argv))
  print(f"# {info}", flush=True)
  base = {"batch": args.batch, "steps": args.steps, "repeats": args.repeats,
          "warmup": args.warmup, "flops": not args.no_flops, "threads": threads,
          "max_load": args.max_load, "max_tries": args.max_tries or 2 * args.repeats,
          "max_wait": args.max_wait}

  configs = []
  for part in parts:
    if part.startswith("jax"):
      impls = _csv(args.jax_impl) if part == "jax_pgd" else ["library"]
      for variant in variants:
        for unroll in unrolls:
          for impl in impls:
            name = f"{variant}" + (f" unroll={unroll}" if unroll is not None else "") + (
                f" {impl}" if impl != "library" else "")
            configs.append((part, name, variant, dict(base, part=part, unroll=unroll,
                                                      impl=impl)))
    else:
      for layout in _csv(args.torch_layouts):
        configs.append((part, layout, None,
                        dict(base, part=part, channels_last=layout == "channels_last")))

  merged = {}
  for rnd in range(args.rounds):
    for idx, (part, name, variant, spec) in enumerate(configs):
      waited = (wait_until_quiet(args.max_load, args.max_wait) if args.max_load < 1
                else 0.0)
      print(f"running {part} [{name}]" + (f" round {rnd + 1}/{args.rounds}"
                                          if args.rounds > 1 else "") + " ..." +
            (f" (waited {waited:.0f} s for other processes)" if waited > 5 else ""),
            flush=True)
      res = run_child(dict(spec, flops=spec["flops"] and rnd == 0), variant, args.torch_python)
      res.update(part=part, config=name)
      print("  " + _row(res), flush=True)
      if "compile_s" in res:
        res["compile_s_all"] = [res["compile_s"]]
      prev = merged.get(idx)
      if prev is None or "error" in prev:
        merged[idx] = res
      elif "error" not in res:
        prev["discarded"] = prev.get("discarded", 0) + res.get("discarded", 0)
        for key in ("times", "cpu_s", "foreign_load", "compile_s_all"):
          if key in res:
            prev[key] = prev[key] + res[key]
  results = [merged[i] for i in sorted(merged)]
  for res in results:
    if "times" in res:
      # Summarise the calls that ran on a quiet machine; all calls if none did.
      quiet = [t for t, f in zip(res["times"], res["foreign_load"]) if f < args.max_load]
      res["contended"] = not quiet
      med = statistics.median(quiet or res["times"])
      res["s_per_call"] = med
      per = args.batch if res["part"].endswith("pgd") else 1
      res["throughput"] = per / med
      res["unit"] = "images/s" if res["part"].endswith("pgd") else "steps/s"
    if "compile_s_all" in res:
      res["compile_s"] = statistics.median(res["compile_s_all"])

  # torch rows get the GFLOP count of the matching jax program (same work).
  flops = {p: r["flops"] for r in results for p in (r["part"],)
           if r.get("flops") and p.startswith("jax")}
  for r in results:
    f = r.get("flops") or flops.get(r["part"].replace("torch", "jax"))
    if f and r.get("s_per_call"):
      r["gflop"] = f / 1e9
      r["gflop_per_s"] = f / 1e9 / r["s_per_call"]

  print()
  print(table(results, info))
  if args.out:
    with open(args.out, "w", encoding="utf-8") as f:
      json.dump({"info": info, "results": results}, f, indent=2)
    print(f"wrote {args.out}")
  return 0


def _row(r: dict) -> str:
  if "error" in r:
    return f"{r['part']:<12} {r['config']:<32} ERROR {r['error']}"
  if "s_per_call" not in r:
    r = dict(r, s_per_call=statistics.median(r["times"]))
    r["throughput"], r["unit"] = 1 / r["s_per_call"], "calls/s"
  comp = f"{r['compile_s']:.1f}" if "compile_s" in r else "-"
  return (f"{r['part']:<12} {r['config']:<32} {r['s_per_call']:8.3f} s/call  "
          f"{r['throughput']:9.3f} {r['unit']:<9} compile {comp:>6} s  "
          f"times {[round(t, 3) for t in r['times']]}  other-process load "
          f"{max(r.get('foreign_load') or [0]):.0%}"
          + (f" (compile {r['compile_foreign_load']:.0%})" if "compile_foreign_load" in r
             else ""))


def table(results: list, info: dict) -> str:
  """A Markdown table of the results (and jax/torch ratios per part)."""
  lines = [f"batch {info['batch']}, PGD-{info['steps']}, median over the calls during which "
           f"other processes used < {info['max_load']:.0%} of the CPUs ({info['repeats']} per "
           f"configuration x {info['rounds']} round(s), each after {info['warmup']} warm-up; "
           f"'contended': no such call, median of all); XLA threads {info['xla_threads']}, "
           f"torch threads {info['torch_threads']}",
           "",
           "| part | config | s/call | throughput | compile s | GFLOP/call | GFLOP/s |",
           "|---|---|---:|---:|---:|---:|---:|"]
  for r in results:
    if "error" in r:
      lines.append(f"| {r['part']} | {r['config']} | error: {r['error'][:80]} | | | | |")
      continue
    comp = f"{r['compile_s']:.1f}" if "compile_s" in r else "-"
    gf = f"{r['gflop']:.0f}" if "gflop" in r else "-"
    gfs = f"{r['gflop_per_s']:.1f}" if "gflop_per_s" in r else "-"
    flag = " (contended)" if r.get("contended") else ""
    lines.append(f"| {r['part']} | {r['config']}{flag} | {r['s_per_call']:.3f} | "
                 f"{r['throughput']:.2f} {r['unit']} | {comp} | {gf} | {gfs} |")
  for kind in ("pgd", "train"):
    jx = [r for r in results if r["part"] == f"jax_{kind}" and "throughput" in r]
    th = [r for r in results if r["part"] == f"torch_{kind}" and "throughput" in r]
    if jx and th:
      bj = max(jx, key=lambda r: r["throughput"])
      bt = max(th, key=lambda r: r["throughput"])
      lines.append(f"\n{kind}: best jaxrobust [{bj['config']}] / best torch [{bt['config']}]"
                   f" = {bj['throughput'] / bt['throughput']:.2f}x")
  return "\n".join(lines)


if __name__ == "__main__":
  sys.exit(main())
