"""Training: config schema, optimiser, state, jitted steps, the trainer loop, restoring runs.

Entry point: ``python -m jaxrobust.train --config configs/<name>.py[:arg] --workdir DIR``.
"""
from jaxrobust.train.defaults import (default_config, effective_attacks, parse_arg,
                                      resolve_config, validate_config)
from jaxrobust.train.loop import train_and_evaluate
from jaxrobust.train.optim import make_optimizer, make_schedule
from jaxrobust.train.restore import TrainedModel, load_config, load_trained
from jaxrobust.train.state import TrainState, create_train_state, split_model
from jaxrobust.train.step import jit_train_step, make_train_step

__all__ = ["TrainState", "TrainedModel", "load_config", "load_trained", "create_train_state", "default_config", "effective_attacks",
           "jit_train_step", "resolve_config",
           "make_optimizer", "parse_arg", "make_schedule", "make_train_step",
           "split_model", "train_and_evaluate", "validate_config"]
