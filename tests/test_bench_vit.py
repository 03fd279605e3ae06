"""benchmarks/bench_vit.py: the analytic ViT matmul FLOPs against XLA's count, the model table."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from benchmarks.bench_vit import MODELS, PATCH, analytic_flops, vit_matmul_flops
from jaxrobust.models import create_model


def _xla_flops(lowered) -> float:
  cost = lowered.cost_analysis()  # the unoptimised HLO: every op, nothing fused away.
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost["flops"])


# One model dominated by the dense projections (4 x 4 tokens, width 256), one by the two
# attention products (16 x 16 tokens, width 32, one head so the softmax stays small).
@pytest.mark.parametrize("kw", [
    dict(width=256, depth=1, num_heads=4, mlp_ratio=4.0, patch_size=8),
    dict(width=32, depth=1, num_heads=1, mlp_ratio=1.0, patch_size=2),
])
def test_matmul_flops_match_xla_up_to_the_elementwise_ops(kw):
  model = nnx.eval_shape(lambda: create_model("vit_cifar_tiny", normalize="none", **kw))
  graphdef, params = nnx.split(model, nnx.Param)
  x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  w = jnp.linspace(-1.0, 1.0, 10)[None]

  def out(p, xx):
    return jnp.sum(nnx.merge(graphdef, p)(xx) * w)

  xla = {"forward": _xla_flops(jax.jit(lambda p, xx: nnx.merge(graphdef, p)(xx)).lower(params, x)),
         "attack_step": _xla_flops(jax.jit(jax.grad(out, argnums=1)).lower(params, x)),
         "train_fwd_bwd": _xla_flops(jax.jit(jax.grad(out)).lower(params, x))}
  ours = vit_matmul_flops(**kw)
  for key, value in xla.items():
    # XLA also counts LayerNorm / softmax / GELU / the loss: a few per cent more, never less.
    assert 1.0 <= value / ours[key] < 1.12, (key, value, ours[key])


def test_call_flops_scale_with_batch_and_steps():
  f = vit_matmul_flops(**MODELS["vit_cifar_tiny"])
  assert analytic_flops("vit_cifar_tiny", "jax_pgd", 8, 10) == 8 * 10 * f["attack_step"]
  assert analytic_flops("vit_cifar_tiny", "torch_train", 8, 10) == (
      8 * (10 * f["attack_step"] + f["train_fwd_bwd"]))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_table_matches_the_jaxrobust_models(name):
  m = MODELS[name]
  model = nnx.eval_shape(lambda: create_model(name, image_size=32, patch_size=PATCH))
  blocks = model.Transformer.blocks()
  assert (model.width, model.depth) == (m["width"], m["depth"])
  attn, mlp = blocks[0].MultiHeadDotProductAttention_1, blocks[0].MlpBlock_3
  assert attn.num_heads == m["num_heads"]
  assert mlp.Dense_0.kernel.shape == (m["width"], int(m["width"] * m["mlp_ratio"]))
