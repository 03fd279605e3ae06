r"""PGD-10 attack and AT train-step throughput of a ViT: jaxrobust vs timm (PyTorch), CPU.

Measures, on one machine in one run, for the same Vision Transformer on
CIFAR-shaped inputs (32x32x3, 10 classes), by default the ViT recipe's DeiT-Ti
with 4x4 patches (what ``configs/cifar10_vit_pgd_at.py`` builds: width 192,
depth 12, 3 heads, MLP 4, an 8 x 8 token grid plus the class token):

* ``jax_pgd``: ``jaxrobust.attacks.pgd`` (L-inf, eps 8/255, step 2/255, CE,
  uniform start) on the eval view of the model, inside ``jax.jit``: images/s.
* ``jax_train``: one adversarial-training step built exactly as
  ``jaxrobust/train/loop.py`` does for the ViT recipe (``configs/
  cifar10_vit_pgd_at.py``, method ``vit_pgd_at``; ``make_train_step`` +
  ``jit_train_step``; PGD-10 in the eval view, CE of the train view, the
  recipe's optax chain: global-norm clipping 1.0, SGD(0.9), weight decay 1e-4
  on every parameter). By default without attention random dropping,
  perturbation random masking and Mixup (``--recipe-args``), so that both
  sides do the same work: steps/s.
* ``torch_pgd`` / ``torch_train``: the same architecture built with timm
  (``timm.create_model('deit_tiny_patch16_224', img_size=32, patch_size=4,
  num_classes=10, ...)``, the CIFAR-10 normalisation inside the forward), the
  same attack loop, and the same train step (attack in ``model.eval()`` as the
  official code, CE in ``model.train()``, ``clip_grad_norm_(1.0)``, SGD with the
  recipe's momentum and weight decay) in PyTorch on CPU, with
  ``torch.set_num_threads`` equal to the number of CPUs XLA uses.

Both sides compute the same function: a torch process builds the timm model
(seed 0) and writes its ``state_dict``; every jax process loads it with
``jaxrobust.models.convert_timm.load_timm_into`` and every torch process with
``load_state_dict``. Before measuring, the script checks that the parameter
counts are equal and that the jaxrobust logits (float32) agree with timm's
(float32 and float64) to ``--logits-tol`` (default 1e-4) on random inputs.

Also reported: compile time (trace + lower + XLA compile) of each jitted
function; the work in GFLOP from XLA's cost analysis (XLA counts a while-loop
body once, so it is built from single-step programs: ``PGD-k = k * PGD-1``,
``train(k) = train(PGD-1) + (k - 1) * PGD-1``, as ``bench_pgd.py``), used for
both sides; the analytic matmul GFLOP (:func:`vit_matmul_flops`) as a cross-
check; and GFLOP/s as a percentage of the machine's FP32 SGEMM rate (a square
``--sgemm`` matmul, jitted in JAX, as ``bench_conv.py``; torch's rate is
reported beside it).

Every measured configuration runs in its own fresh Python process (XLA flags
are read when JAX starts; torch and JAX never share a process or a thread
pool). torch and timm need not be importable in the library's environment:
the torch parts run under ``--torch-python``. Usage::

    # headline table (DeiT-Ti, batch 64):
    python benchmarks/bench_vit.py --torch-python /path/to/venv/bin/python --out vit.json
    # quick run:
    python benchmarks/bench_vit.py --torch-python /path/to/venv/bin/python \
        --model vit_cifar_tiny --batch 16 --repeats 1 --sgemm 1024
    # the recipe's full training step (ARD + PRM; the torch side stays plain PGD-AT):
    python benchmarks/bench_vit.py --parts jax_train --recipe-args ard=true,prm=true

Requires torch (CPU) and timm under ``--torch-python`` (default: this
interpreter) for the torch parts and the weight export.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# bench_pgd imports only the standard library and _machine at module level (also under
# --torch-python); it puts the checkout's jaxrobust first on sys.path.
from _machine import cpu_threads  # noqa: E402
from bench_pgd import (_compile, _flops, make_data, time_calls, versions,  # noqa: E402
                       wait_until_quiet)

PARTS = ("jax_pgd", "jax_train", "torch_pgd", "torch_train")
EPS, STEP_SIZE = 8 / 255, 2 / 255
IMAGE_SIZE, PATCH, NUM_CLASSES, IN_CHANNELS = 32, 4, 10, 3
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)  # the jax model's normalize='cifar10'; the logits
CIFAR10_STD = (0.2471, 0.2435, 0.2616)   # check fails if they ever differ.
RECIPE_CONFIG = "cifar10_vit_pgd_at"
# Plain PGD-AT of the recipe: the work the timm peer does too.
DEFAULT_RECIPE_ARGS = "ard=false,prm=false,mixup=false"

# --model: the recipe config's model name, the timm constructor, and the dims passed to
# timm explicitly (they are jaxrobust's defaults for that name; the parameter-count and
# logits checks catch any difference).
MODELS = {
    "deit_ti": dict(timm="deit_tiny_patch16_224", width=192, depth=12, num_heads=3,
                    mlp_ratio=4.0),
    "deit_s": dict(timm="deit_small_patch16_224", width=384, depth=12, num_heads=6,
                   mlp_ratio=4.0),
    # The recipe's CPU-scale model (:local): width 128, depth 4, 4 heads, MLP 2.
    "vit_cifar_tiny": dict(timm="deit_tiny_patch16_224", width=128, depth=4, num_heads=4,
                           mlp_ratio=2.0),
}


def timm_kwargs(model: str) -> dict:
  """``timm.create_model`` keyword arguments of ``MODELS[model]`` at CIFAR size."""
  m = MODELS[model]
  return dict(img_size=IMAGE_SIZE, patch_size=PATCH, num_classes=NUM_CLASSES,
              embed_dim=m["width"], depth=m["depth"], num_heads=m["num_heads"],
              mlp_ratio=m["mlp_ratio"])


def vit_matmul_flops(*, width: int, depth: int, mlp_ratio: float, image_size: int = IMAGE_SIZE,
                     patch_size: int = PATCH, in_channels: int = IN_CHANNELS,
                     num_classes: int = NUM_CLASSES, **_) -> dict:
  """Matrix-multiply FLOPs (2 per multiply-add) of one image through a class-token ViT.

  With ``G = (image_size / patch_size)^2`` patches, ``N = G + 1`` tokens,
  width ``D`` and MLP width ``M = int(D * mlp_ratio)``: the patch embedding
  ``2 G (p^2 C) D``; per block the qkv ``2 N D 3D``, output ``2 N D D`` and
  MLP ``2 * 2 N D M`` projections (``dense``: activation x weight) and the
  two attention products ``Q K^T`` and ``A V``, ``2 * 2 N^2 D``
  (``attention``: activation x activation; independent of the head count);
  the head ``2 D K``. LayerNorm, softmax, GELU and the like are not counted.

  Returns:
    ``{'forward', 'attack_step', 'train_fwd_bwd'}`` FLOPs per image:
    ``forward``; ``attack_step`` = forward + the input gradient (each dense
    product once more for ``dX``, each attention product twice, for both
    operands); ``train_fwd_bwd`` = forward + the parameter gradient without
    the input gradient (dense products twice more except the patch
    embedding's once, attention products twice more).
  """
  grid = (image_size // patch_size) ** 2
  n, d, m = grid + 1, width, int(width * mlp_ratio)
  patch = 2 * grid * patch_size ** 2 * in_channels * d
  blocks = depth * (2 * n * d * 3 * d + 2 * n * d * d + 2 * 2 * n * d * m)
  attention = depth * 2 * 2 * n * n * d
  head = 2 * d * num_classes
  dense = patch + blocks + head
  return {"forward": dense + attention,
          "attack_step": 2 * dense + 3 * attention,
          "train_fwd_bwd": 3 * dense - patch + 3 * attention}


def analytic_flops(model: str, part: str, batch: int, steps: int) -> float:
  """Matmul FLOPs of one call of ``part`` (PGD-``steps`` or one AT step) at ``batch``."""
  f = vit_matmul_flops(**MODELS[model])
  if part.endswith("pgd"):
    return batch * steps * f["attack_step"]
  return batch * (steps * f["attack_step"] + f["train_fwd_bwd"])


def _time(fn, spec):
  return time_calls(fn, spec["repeats"], spec["warmup"], spec["max_load"],
                    spec["max_tries"], spec["max_wait"])


# ----------------------------------------------------------------------------
# jaxrobust.
# ----------------------------------------------------------------------------


def _recipe_config(spec: dict, num_steps: int):
  """The resolved ViT recipe config for ``spec['model']`` with PGD-``num_steps`` training."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  from jaxrobust.train.defaults import resolve_config  # pylint: disable=g-import-not-at-top
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  path = os.path.join(repo, "configs", f"{RECIPE_CONFIG}.py")
  module_spec = importlib.util.spec_from_file_location(f"cfg_{RECIPE_CONFIG}", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  arg = ",".join(a for a in (f"model={spec['model']}", spec["recipe_args"]) if a)
  c = module.get_config(arg)
  c.method.attack.num_steps = num_steps
  c.train.batch_size = spec["batch"]
  return resolve_config(c)


def _jax_model(config, weights: str):
  """The recipe's model (as the trainer builds it) holding the timm weights."""
  # pylint: disable=g-import-not-at-top
  from jaxrobust.models.convert_timm import load_state_dict_npz, load_timm_into
  from jaxrobust.train.builders import build_model
  # pylint: enable=g-import-not-at-top
  model = build_model(config, (IMAGE_SIZE, IMAGE_SIZE, IN_CHANNELS))
  sd = {k: v for k, v in load_state_dict_npz(weights).items() if not k.startswith("__")}
  report = load_timm_into(model, sd)
  if report["kept"] or report["resized"]:
    raise RuntimeError(f"the timm state dict did not fit the jaxrobust model: {report}")
  return model


def run_jax_check(spec: dict) -> dict:
  """Child: parameter count and logits of the converted model against timm's."""
  import jaxrobust  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import (XLA defaults)
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top

  config = _recipe_config(spec, spec["steps"])
  model = _jax_model(config, spec["weights"])
  count = int(sum(np.size(v) for v in jax.tree.leaves(nnx.state(model, nnx.Param))))
  with np.load(spec["weights"]) as f:
    x, want32, want64 = f["__x__"], f["__logits32__"], f["__logits64__"]
  got = np.asarray(model(x), np.float64)
  t = config.train
  return {"jax_params": count, "jax_model": config.model.name,
          "logits_maxabs": float(np.max(np.abs(want64))),
          "diff_vs_torch32": float(np.max(np.abs(got - want32))),
          "diff_vs_torch64": float(np.max(np.abs(got - want64))),
          "torch32_vs_torch64": float(np.max(np.abs(want32 - want64))),
          "method": config.method.name,
          "optim": dict(optimizer=t.optimizer, lr=float(t.lr), momentum=float(t.momentum),
                        weight_decay=float(t.weight_decay),
                        clip=float(t.clip_by_global_norm),
                        weight_decay_mask=str(t.weight_decay_mask))}


def _jax_attack_fn(model_fns, num_steps):
  import jax  # pylint: disable=g-import-not-at-top
  from jaxrobust.attacks import pgd  # pylint: disable=g-import-not-at-top

  def attack(params, batch_stats, rng, x, y):
    logits_fn = model_fns.logits_fn(params, batch_stats, bn="eval")
    return pgd(logits_fn, rng, x, y, eps=EPS, step_size=STEP_SIZE, num_steps=num_steps,
               norm="linf", loss="ce", random_start="uniform")

  return jax.jit(attack)


def _jax_attack_args(spec, model):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from jaxrobust.methods import ModelFns  # pylint: disable=g-import-not-at-top
  graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
  images, labels = make_data(spec["batch"])
  x = jnp.asarray(images, jnp.float32) / 255.0
  return ModelFns(graphdef), (params, batch_stats, jax.random.PRNGKey(0), x,
                              jnp.asarray(labels))


def run_jax_pgd(spec: dict) -> dict:
  """Child: the jaxrobust PGD attack on the eval view of the converted ViT."""
  import jaxrobust  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import (XLA defaults)
  from jaxrobust.attacks import default_unroll  # pylint: disable=g-import-not-at-top

  k = spec["steps"]
  model = _jax_model(_recipe_config(spec, k), spec["weights"])
  model_fns, args = _jax_attack_args(spec, model)
  compiled, compile_s, compile_load = _compile(_jax_attack_fn(model_fns, k), *args)
  res = {"compile_s": compile_s, "compile_foreign_load": compile_load,
         "flops_compiled": _flops(compiled), "unroll_used": default_unroll(k)}
  if spec["flops"]:
    one, _, _ = _compile(_jax_attack_fn(model_fns, 1), *args)
    res["flops"] = k * _flops(one)
  res.update(_time(lambda: compiled(*args).block_until_ready(), spec))
  return res


def run_jax_train(spec: dict) -> dict:
  """Child: one AT step of the ViT recipe, built as ``train/loop.py`` does."""
  # pylint: disable=g-import-not-at-top
  import jaxrobust  # noqa: F401  pylint: disable=unused-import  (XLA defaults)
  import jax
  from jaxrobust import parallel
  from jaxrobust.methods import ModelFns, method_from_config
  from jaxrobust.train.optim import make_optimizer
  from jaxrobust.train.state import create_train_state
  from jaxrobust.train.step import jit_train_step, make_train_step
  # pylint: enable=g-import-not-at-top

  steps_per_epoch = 50_000 // spec["batch"]  # CIFAR-10's training set (r(t), schedules).

  def build(num_steps):
    config = _recipe_config(spec, num_steps)
    mesh = parallel.make_mesh()
    model = _jax_model(config, spec["weights"])
    tx = make_optimizer(config.train, config.train.num_epochs * steps_per_epoch,
                        steps_per_epoch)
    graphdef, state = create_train_state(model, tx, config.seed,
                                         ema=config.train.ema_decay > 0)
    model_fns = ModelFns(graphdef)
    method = method_from_config(config.method, steps_per_epoch=steps_per_epoch,
                                weight_decay=config.train.weight_decay,
                                attack_bn_updates=config.train.get("attack_bn_updates",
                                                                   "none"))
    state = parallel.replicate(state, mesh)
    step = jit_train_step(make_train_step(model_fns, method, tx, config.train.ema_decay),
                          mesh)
    images, labels = make_data(spec["batch"])
    batch = parallel.global_batch({"image": images, "label": labels}, mesh)
    return step, state, batch, model

  k = spec["steps"]
  step, state, batch, _ = build(k)
  compiled, compile_s, compile_load = _compile(step, state, batch)
  res = {"compile_s": compile_s, "compile_foreign_load": compile_load,
         "flops_compiled": _flops(compiled)}
  if spec["flops"]:
    step1, state1, batch1, model1 = build(1)
    train1, _, _ = _compile(step1, state1, batch1)
    model_fns, args = _jax_attack_args(spec, model1)
    one, _, _ = _compile(_jax_attack_fn(model_fns, 1), *args)
    res["flops"] = _flops(train1) + (k - 1) * _flops(one)
    del state1

  holder = {"state": state}

  def call():
    holder["state"], metrics = compiled(holder["state"], batch)
    jax.block_until_ready((holder["state"], metrics))

  res.update(_time(call, spec))
  return res


def run_jax_sgemm(spec: dict) -> dict:
  """Child: FP32 GFLOP/s of a square ``spec['sgemm']`` matmul, jitted (as bench_conv.py)."""
  import jaxrobust  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import (XLA defaults)
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  s = spec["sgemm"]
  a = jax.random.uniform(jax.random.PRNGKey(0), (s, s), jnp.float32)
  mm = jax.jit(lambda p, q: p @ q)
  t = _time(lambda: mm(a, a).block_until_ready(), spec)
  return dict(t, gflop_per_s=2 * s ** 3 / min(t["times"]) / 1e9)


# ----------------------------------------------------------------------------
# timm / PyTorch peer.
# ----------------------------------------------------------------------------


def _torch_model(spec: dict, load: bool = True):
  """The timm ViT of ``spec['model']`` with the CIFAR-10 normalisation inside the forward."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import timm  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top

  class Normalized(nn.Module):
    """``net((x - mean) / std)`` for NCHW ``x`` in [0, 1]."""

    def __init__(self, net):
      super().__init__()
      self.net = net
      self.register_buffer("mean", torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1))
      self.register_buffer("std", torch.tensor(CIFAR10_STD).view(1, 3, 1, 1))

    def forward(self, x):
      return self.net((x - self.mean) / self.std)

  torch.set_num_threads(spec["threads"])
  torch.manual_seed(0)
  net = timm.create_model(MODELS[spec["model"]]["timm"], pretrained=False,
                          **timm_kwargs(spec["model"]))
  if load:
    with np.load(spec["weights"]) as f:
      sd = {k: torch.from_numpy(f[k]) for k in f.files if not k.startswith("__")}
    net.load_state_dict(sd, strict=True)
  return Normalized(net)


def run_torch_export(spec: dict) -> dict:
  """Child: builds the timm model (seed 0), writes its state dict, an input and its logits."""
  import copy  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import timm  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  model = _torch_model(spec, load=False).eval()
  x = np.random.default_rng(0).uniform(size=(4, IMAGE_SIZE, IMAGE_SIZE, IN_CHANNELS))
  x = x.astype(np.float32)
  xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
  with torch.no_grad():
    logits32 = model(xt).numpy()
    logits64 = copy.deepcopy(model).double()(xt.double()).numpy()
  sd = {k: v.detach().float().numpy() for k, v in model.net.state_dict().items()}
  np.savez(spec["weights"], __x__=x, __logits32__=logits32, __logits64__=logits64, **sd)
  return {"torch_params": int(sum(p.numel() for p in model.parameters())),
          "torch": torch.__version__, "timm": timm.__version__,
          "timm_model": MODELS[spec["model"]]["timm"], "timm_kwargs": timm_kwargs(spec["model"])}


def _torch_inputs(spec):
  import torch  # pylint: disable=g-import-not-at-top
  images, labels = make_data(spec["batch"])
  x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().float().div_(255.0)
  return x, torch.from_numpy(labels).long()


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


def run_torch_pgd(spec: dict) -> dict:
  """Child: the PGD attack on the timm model in eval mode."""
  import torch  # pylint: disable=g-import-not-at-top
  model = _torch_model(spec).eval()
  x, y = _torch_inputs(spec)
  k = spec["steps"]
  return dict(_time(lambda: _torch_pgd(model, x, y, k), spec),
              torch_threads=torch.get_num_threads())


def run_torch_train(spec: dict) -> dict:
  """Child: an AT step of the timm model as the official recipe (eval-mode attack, clipped SGD)."""
  import torch  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top,invalid-name
  model = _torch_model(spec)
  x, y = _torch_inputs(spec)
  o = spec["optim"]
  opt = torch.optim.SGD(model.parameters(), lr=o["lr"], momentum=o["momentum"],
                        weight_decay=o["weight_decay"])
  k = spec["steps"]

  def step():
    model.eval()
    x_adv = _torch_pgd(model, x, y, k)
    model.train()
    loss = F.cross_entropy(model(x_adv), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if o["clip"] > 0:
      torch.nn.utils.clip_grad_norm_(model.parameters(), o["clip"])
    opt.step()
    return loss.item()

  return dict(_time(step, spec), torch_threads=torch.get_num_threads())


def run_torch_sgemm(spec: dict) -> dict:
  """Child: FP32 GFLOP/s of a square ``spec['sgemm']`` matmul in torch."""
  import torch  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(spec["threads"])
  s = spec["sgemm"]
  a = torch.rand(s, s)
  t = _time(lambda: a @ a, spec)
  return dict(t, gflop_per_s=2 * s ** 3 / min(t["times"]) / 1e9,
              torch_threads=torch.get_num_threads())


CHILDREN = {"jax_check": run_jax_check, "jax_pgd": run_jax_pgd, "jax_train": run_jax_train,
            "jax_sgemm": run_jax_sgemm, "torch_export": run_torch_export,
            "torch_pgd": run_torch_pgd, "torch_train": run_torch_train,
            "torch_sgemm": run_torch_sgemm}


# ----------------------------------------------------------------------------
# Driver.
# ----------------------------------------------------------------------------


def run_child(spec: dict, python: str) -> dict:
  """Runs one configuration in a fresh ``python``; returns its result dict."""
  cmd = [python, os.path.abspath(__file__), "--child", json.dumps(spec)]
  proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
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


def _csv(s: str) -> list[str]:
  return [t.strip() for t in s.split(",") if t.strip()]


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--model", default="deit_ti", choices=sorted(MODELS),
                 help="the ViT (default deit_ti, the recipe's DeiT-Ti with 4x4 patches; "
                      "vit_cifar_tiny for a quick run)")
  p.add_argument("--batch", type=int, default=64, help="batch size (default 64)")
  p.add_argument("--steps", type=int, default=10, help="PGD steps (default 10)")
  p.add_argument("--repeats", type=int, default=3, help="timed calls per configuration")
  p.add_argument("--warmup", type=int, default=1, help="untimed calls after compiling")
  p.add_argument("--rounds", type=int, default=1,
                 help="run every configuration this many times, interleaved (each in a "
                      "fresh process); times are pooled")
  p.add_argument("--parts", default=",".join(PARTS),
                 help=f"comma-separated subset of {','.join(PARTS)}")
  p.add_argument("--torch-python", "--torch_python", dest="torch_python",
                 default=sys.executable,
                 help="interpreter with torch and timm for the torch parts and the weight "
                      "export (default: this one)")
  p.add_argument("--recipe-args", default=DEFAULT_RECIPE_ARGS,
                 help=f"arguments of configs/{RECIPE_CONFIG}.py for the jax parts besides "
                      f"model= (default {DEFAULT_RECIPE_ARGS!r}: plain PGD-AT, the timm "
                      f"peer's work; the torch side does not follow other settings)")
  p.add_argument("--sgemm", type=int, default=4096,
                 help="size of the square SGEMM whose rate is the reference (0: skip)")
  p.add_argument("--logits-tol", type=float, default=1e-4,
                 help="largest |jaxrobust - timm| logit difference accepted before measuring")
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
                 help="timed calls at most per configuration (default 2 x repeats)")
  p.add_argument("--no-flops", action="store_true", help="skip the cost-analysis compiles")
  p.add_argument("--out", default="", help="write all results to this JSON file")
  p.add_argument("--child", default="", help=argparse.SUPPRESS)
  return p.parse_args(argv)


def _summarise(res: dict, args) -> None:
  """Median over the quiet calls, throughput and unit, in place."""
  quiet = [t for t, f in zip(res["times"], res["foreign_load"]) if f < args.max_load]
  res["contended"] = not quiet
  med = statistics.median(quiet or res["times"])
  res["s_per_call"] = med
  per = args.batch if res["part"].endswith("pgd") else 1
  res["throughput"] = per / med
  res["unit"] = "images/s" if res["part"].endswith("pgd") else "steps/s"


def main(argv=None) -> int:
  args = parse_args(argv)
  if args.child:
    _child_main(args.child)
    return 0
  parts = _csv(args.parts)
  bad = [p for p in parts if p not in PARTS]
  if bad:
    print(f"unknown part(s): {bad}; choose from {PARTS}", file=sys.stderr)
    return 2
  threads = args.threads or cpu_threads()
  info = versions()
  info.update(model=args.model, batch=args.batch, steps=args.steps, repeats=args.repeats,
              rounds=args.rounds, max_load=args.max_load, warmup=args.warmup,
              torch_threads=threads, xla_threads=cpu_threads(), recipe_args=args.recipe_args,
              torch_python=args.torch_python,
              command=" ".join([os.path.basename(sys.executable)] + sys.argv))
  workdir = tempfile.mkdtemp(prefix="bench_vit_")
  base = {"model": args.model, "batch": args.batch, "steps": args.steps,
          "repeats": args.repeats, "warmup": args.warmup, "flops": not args.no_flops,
          "threads": threads, "max_load": args.max_load,
          "max_tries": args.max_tries or 2 * args.repeats, "max_wait": args.max_wait,
          "weights": os.path.join(workdir, "timm_state_dict.npz"),
          "recipe_args": args.recipe_args}

  # Same function on both sides: timm's weights into jaxrobust, checked.
  print(f"exporting the timm model ({args.torch_python}) ...", flush=True)
  export = run_child(dict(base, part="torch_export"), args.torch_python)
  if "error" in export:
    print(f"error: the timm export failed: {export['error']}", file=sys.stderr)
    return 1
  check = run_child(dict(base, part="jax_check"), sys.executable)
  if "error" in check:
    print(f"error: the jaxrobust check failed: {check['error']}", file=sys.stderr)
    return 1
  info.update(torch=export["torch"], timm=export["timm"], timm_model=export["timm_model"],
              timm_kwargs=export["timm_kwargs"], jax_model=check["jax_model"],
              method=check["method"], optim=check["optim"])
  info["check"] = {k: export[k] for k in ("torch_params",)}
  info["check"].update({k: check[k] for k in ("jax_params", "logits_maxabs", "diff_vs_torch32",
                                             "diff_vs_torch64", "torch32_vs_torch64")})
  print(f"# {info}", flush=True)
  c = info["check"]
  print(f"parameters: jaxrobust {c['jax_params']:,}, timm {c['torch_params']:,}; max |logit "
        f"difference| jaxrobust vs timm float32 {c['diff_vs_torch32']:.2e}, vs float64 "
        f"{c['diff_vs_torch64']:.2e} (timm float32 vs float64 {c['torch32_vs_torch64']:.2e}; "
        f"logits up to {c['logits_maxabs']:.2f})", flush=True)
  if c["jax_params"] != c["torch_params"] or c["diff_vs_torch32"] > args.logits_tol:
    print(f"error: jaxrobust's {args.model} and timm's {export['timm_model']} do not compute "
          f"the same function (parameters / logits above; --logits-tol {args.logits_tol})",
          file=sys.stderr)
    return 1

  sgemm = {}
  if args.sgemm:
    for side, python in (("jax", sys.executable), ("torch", args.torch_python)):
      res = run_child(dict(base, part=f"{side}_sgemm", sgemm=args.sgemm, flops=False), python)
      sgemm[side] = res.get("gflop_per_s")
      print(f"SGEMM {args.sgemm}^2 FP32 {side}: " + (
          f"{res['gflop_per_s']:.1f} GFLOP/s" if "gflop_per_s" in res else res["error"]),
            flush=True)
  info["sgemm"] = dict(size=args.sgemm, **{f"{k}_gflop_per_s": v for k, v in sgemm.items()})

  merged = {}
  for rnd in range(args.rounds):
    for idx, part in enumerate(parts):
      waited = (wait_until_quiet(args.max_load, args.max_wait) if args.max_load < 1
                else 0.0)
      print(f"running {part}" + (f" round {rnd + 1}/{args.rounds}" if args.rounds > 1
                                 else "") + " ..." +
            (f" (waited {waited:.0f} s for other processes)" if waited > 5 else ""),
            flush=True)
      spec = dict(base, part=part, flops=base["flops"] and rnd == 0, optim=check["optim"])
      python = sys.executable if part.startswith("jax") else args.torch_python
      res = run_child(spec, python)
      res["part"] = part
      if "times" in res:
        print("  " + _row(dict(res, **_quick(res, args))), flush=True)
      else:
        print(f"  {part}: ERROR {res.get('error')}", flush=True)
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
      _summarise(res, args)
    if "compile_s_all" in res:
      res["compile_s"] = statistics.median(res["compile_s_all"])

  # torch rows get the GFLOP count of the matching jax program (same work).
  flops = {r["part"]: r["flops"] for r in results if r.get("flops")}
  peak = sgemm.get("jax")
  for r in results:
    r["analytic_gflop"] = analytic_flops(args.model, r["part"], args.batch, args.steps) / 1e9
    f = flops.get(r["part"].replace("torch", "jax"))
    if f and r.get("s_per_call"):
      r["gflop"] = f / 1e9
      r["gflop_per_s"] = f / 1e9 / r["s_per_call"]
      if peak:
        r["pct_of_sgemm"] = 100 * r["gflop_per_s"] / peak

  print()
  print(table(results, info))
  if args.out:
    with open(args.out, "w", encoding="utf-8") as f:
      json.dump({"info": info, "results": results}, f, indent=2)
    print(f"wrote {args.out}")
  try:
    os.remove(base["weights"])
    os.rmdir(workdir)
  except OSError:
    pass
  return 0


def _quick(res: dict, args) -> dict:
  r = dict(res)
  _summarise(r, args)
  return {k: r[k] for k in ("s_per_call", "throughput", "unit")}


def _row(r: dict) -> str:
  comp = f"{r['compile_s']:.1f}" if "compile_s" in r else "-"
  return (f"{r['part']:<12} {r['s_per_call']:8.3f} s/call  {r['throughput']:9.3f} "
          f"{r['unit']:<9} compile {comp:>6} s  times {[round(t, 3) for t in r['times']]}  "
          f"other-process load {max(r.get('foreign_load') or [0]):.0%}")


def table(results: list, info: dict) -> str:
  """A Markdown table of the results (and jax/torch ratios per part)."""
  sg = info.get("sgemm", {})
  ref = (f"; SGEMM {sg['size']}^2 FP32: jax {sg.get('jax_gflop_per_s') or 0:.1f}, torch "
         f"{sg.get('torch_gflop_per_s') or 0:.1f} GFLOP/s" if sg.get("size") else "")
  lines = [f"{info['model']} (jaxrobust {info['jax_model']} / timm {info['timm_model']}, "
           f"{info['check']['jax_params']:,} parameters), batch {info['batch']}, "
           f"PGD-{info['steps']}; median over the calls during which other processes used "
           f"< {info['max_load']:.0%} of the CPUs ({info['repeats']} per configuration x "
           f"{info['rounds']} round(s), each after {info['warmup']} warm-up; 'contended': no "
           f"such call, median of all); XLA threads {info['xla_threads']}, torch threads "
           f"{info['torch_threads']}{ref}",
           "",
           "| part | s/call | throughput | compile s | GFLOP/call (XLA) | matmul GFLOP "
           "(analytic) | GFLOP/s | % of SGEMM |",
           "|---|---:|---:|---:|---:|---:|---:|---:|"]
  for r in results:
    if "error" in r:
      lines.append(f"| {r['part']} | error: {r['error'][:80]} | | | | | | |")
      continue
    comp = f"{r['compile_s']:.1f}" if "compile_s" in r else "-"
    gf = f"{r['gflop']:.1f}" if "gflop" in r else "-"
    gfs = f"{r['gflop_per_s']:.1f}" if "gflop_per_s" in r else "-"
    pct = f"{r['pct_of_sgemm']:.0f}" if "pct_of_sgemm" in r else "-"
    flag = " (contended)" if r.get("contended") else ""
    lines.append(f"| {r['part']}{flag} | {r['s_per_call']:.3f} | {r['throughput']:.2f} "
                 f"{r['unit']} | {comp} | {gf} | {r['analytic_gflop']:.1f} | {gfs} | {pct} |")
  for kind in ("pgd", "train"):
    jx = [r for r in results if r["part"] == f"jax_{kind}" and "throughput" in r]
    th = [r for r in results if r["part"] == f"torch_{kind}" and "throughput" in r]
    if jx and th:
      lines.append(f"\n{kind}: jaxrobust / torch = "
                   f"{jx[0]['throughput'] / th[0]['throughput']:.2f}x")
  return "\n".join(lines)


if __name__ == "__main__":
  sys.exit(main())
