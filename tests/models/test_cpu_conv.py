"""The CPU convolution with a custom VJP equals lax.conv_general_dilated in value and gradient."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxrobust.models.layers import _NHWC_HWIO, conv_general_dilated


@pytest.mark.parametrize("strides,padding,dilation", [
    ((1, 1), [(1, 1), (1, 1)], None), ((2, 2), [(1, 1), (1, 1)], None),
    ((2, 2), "SAME", None), ((1, 1), "VALID", None), ((1, 1), [(2, 2), (2, 2)], (2, 2)),
    ((2, 1), [(0, 1), (1, 0)], None)])
def test_value_and_gradients_match_lax(strides, padding, dilation):
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 9, 8, 4))
  w = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 4, 5))

  def loss(conv):
    def f(x, w):
      out = conv(x, w, strides, padding, rhs_dilation=dilation, dimension_numbers=_NHWC_HWIO)
      return jnp.sum(jnp.sin(out) * jnp.arange(out.size).reshape(out.shape) / out.size)
    return f

  ours, ref = loss(conv_general_dilated), loss(lax.conv_general_dilated)
  np.testing.assert_allclose(ours(x, w), ref(x, w), rtol=1e-6)
  for a, b in zip(jax.grad(ours, (0, 1))(x, w), jax.grad(ref, (0, 1))(x, w)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  # Inside a while loop (where the custom VJP matters) the result is the same too.
  def loop(conv):
    def body(_, z):
      return z - 0.01 * jax.grad(loss(conv))(z, w)
    return jax.jit(lambda z: jax.lax.fori_loop(0, 3, body, z))
  np.testing.assert_allclose(loop(conv_general_dilated)(x), loop(lax.conv_general_dilated)(x),
                             rtol=1e-5, atol=1e-6)
