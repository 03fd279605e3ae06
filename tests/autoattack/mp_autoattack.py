"""AutoAttack on a fixed linear model, run by tests/autoattack/test_multiprocess.py.

Run as one process or as several under ``jax.distributed``
(``JAXROBUST_DISTRIBUTED=1`` and ``JAX_COORDINATOR_ADDRESS`` etc.); every
process writes its own result to ``OUT_DIR/result_<process index>.npz``.
"""
import json
import os
import sys

import numpy as np


def main(out_dir):
  from jaxrobust import parallel
  parallel.init_distributed()
  import jax
  import jax.numpy as jnp
  from jaxrobust.evaluate.autoattack import AutoAttackSettings, run_autoattack

  rng = np.random.RandomState(0)
  h, k = 6, 5
  w = jnp.asarray(rng.normal(0, 1, (h * h * 3, k)).astype(np.float32))
  x = rng.uniform(0, 1, (20, h, h, 3)).astype(np.float32)

  def logits_fn(z):
    return z.reshape(z.shape[0], -1) @ w

  y = np.asarray(jnp.argmax(logits_fn(jnp.asarray(x)), -1)).astype(np.int32)
  y[:3] = (y[:3] + 1) % k  # three points misclassified from the start
  settings = AutoAttackSettings.for_version(
      0.06, "linf", "custom", attacks=("apgd-ce", "apgd-t", "square"), apgd_steps=12,
      apgd_t_targets=2, square_queries=40)
  res = run_autoattack(logits_fn, x, y, settings, batch_size=8, mesh=parallel.make_mesh(),
                       seed=3, progress=False, state_dir=os.path.join(out_dir, "state"))
  np.savez(os.path.join(out_dir, f"result_{jax.process_index()}.npz"), robust=res.robust,
           x_adv=res.x_adv, robust_accuracy=json.dumps(res.robust_accuracy),
           process_count=jax.process_count(), device_count=jax.device_count())


if __name__ == "__main__":
  main(sys.argv[1])
