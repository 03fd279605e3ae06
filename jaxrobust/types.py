"""Type aliases shared across jaxrobust."""
from typing import Any, Callable

import jax

Array = jax.Array
PRNGKey = jax.Array
PyTree = Any
# logits_fn(x) -> logits: x float32 [B, H, W, C] in [0, 1]; logits float32 [B, K].
LogitsFn = Callable[[Array], Array]
