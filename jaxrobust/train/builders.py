"""Config -> data splits and model; shared by the trainer and the evaluation CLI."""
from __future__ import annotations

import dataclasses
import functools
import inspect

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxrobust.data import (ArrayDataset, check_image_shape, dataset_info, load_split,
                            train_val_split)
from jaxrobust.errors import ConfigError, DataError
from jaxrobust.models import MODELS, SWIN_MODELS, VIT_MODELS, create_model
from jaxrobust.models.layers import linear

# Auxiliary heads a method may need on the penultimate features (config.model.aux_heads):
# name -> outputs. 'rotation': the 4-way rotation head of Hendrycks et al. 2019.
AUX_HEADS = {"rotation": 4}

# Constructor arguments the trainer sets from the data and config.model (never from
# config.model.kwargs): classes, channels and image size come from the dataset, mean/std from
# config.model.normalize, dtype from config.model.dtype, rngs/seed from config.seed.
RESERVED_MODEL_KWARGS = ("num_classes", "in_channels", "image_size", "normalize", "mean",
                         "std", "dtype", "rngs", "seed")


@dataclasses.dataclass
class Splits:
  """The train split (minus validation), the class-balanced validation split, the test split."""
  train: ArrayDataset
  val: ArrayDataset
  test: ArrayDataset


def build_splits(config, with_test: bool = True) -> Splits:
  """Train / validation (held out from train) / test[:test_size] from config.data.

  Raises:
    DataError: missing data, or images whose shape contradicts the dataset's
      metadata (:mod:`jaxrobust.data.info`) or the run's recorded
      ``config.data.image_shape``.
  """
  d = config.data
  image_size = d.get("image_size", 0)
  full = load_split(d.name, "train", d.source, d.data_dir or None, image_size)
  check_image_shape(dataset_info(d.name), full.image_shape)
  recorded = tuple(d.get("image_shape", ()) or ())
  if recorded and tuple(full.image_shape) != recorded:
    raise DataError(f"{d.name}: the loaded images are {full.image_shape}, but this run was "
                    f"trained on {recorded} (config.data.image_shape)")
  train_idx, val_idx, _ = train_split_indices(config, full.labels)
  test = None
  if with_test:
    test = load_split(d.name, "test", d.source, d.data_dir or None, image_size)
    if d.test_size:
      test = test.take(slice(0, d.test_size))
  return Splits(full.take(train_idx), full.take(val_idx), test)


def train_split_indices(config, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """``(train_idx, val_idx, rest_idx)``: indices into the full train split of ``config.data``.

  ``val_idx`` is the class-balanced validation split (``val_size``,
  ``split_seed``); ``train_idx`` the rest, or a seeded subset of
  ``train_size`` of it; ``rest_idx`` the training examples outside that
  subset (empty when ``train_size`` is 0): the pool a semi-supervised run
  uses without its labels (:mod:`jaxrobust.train.semisup`). Sorted int64,
  disjoint, together all of ``labels``.
  """
  d = config.data
  train_idx, val_idx = train_val_split(labels, d.val_size, d.split_seed)
  rest_idx = np.zeros(0, np.int64)
  if d.train_size and d.train_size < len(train_idx):
    rng = np.random.default_rng([d.split_seed, 1])
    kept = np.sort(rng.choice(train_idx, size=d.train_size, replace=False))
    rest_idx = np.setdiff1d(train_idx, kept)
    train_idx = kept
  return train_idx, val_idx, rest_idx


def image_shape_of(config) -> tuple[int, int, int]:
  """``(H, W, C)`` of the run's images, without loading them.

  ``config.data.image_shape`` when set (the trainer records the loaded shape
  there, so a run on any image size restores with the right model), else the
  dataset's metadata (:func:`jaxrobust.data.dataset_info`).

  Raises:
    DataError: an unknown dataset, or one of varying image size with no
      recorded shape.
  """
  recorded = tuple(config.data.get("image_shape", ()) or ())
  if recorded:
    return tuple(int(s) for s in recorded)
  info = dataset_info(config.data.name)
  if info.image_shape is None:
    raise DataError(f"{info.name} images vary in size and config.data.image_shape is not "
                    f"set; set it to the (H, W, C) the model was trained on")
  return tuple(info.image_shape)


_KEYWORD_KINDS = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def constructor_keywords(ctor) -> set[str] | None:
  """The keyword arguments a model constructor takes, or None when it cannot be told.

  Looks through ``functools.partial`` (bound keywords stay overridable, bound
  positional arguments are consumed) to the class's ``__init__``; a
  constructor with ``**kwargs`` that wraps another one given positionally
  (:class:`jaxrobust.models.noisy.InputNoise`) also takes the wrapped one's.
  """
  args, func = (), ctor
  while isinstance(func, functools.partial):
    args, func = func.args + args, func.func
  target = func.__init__ if inspect.isclass(func) else func
  params = {k: p for k, p in inspect.signature(target).parameters.items() if k != "self"}
  positional = [k for k, p in params.items() if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
  names = {k for k, p in params.items() if p.kind in _KEYWORD_KINDS} - set(positional[:len(args)])
  if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
    return names
  wrapped = [a for a in args if callable(a)]
  inner = constructor_keywords(wrapped[0]) if wrapped else None
  return None if inner is None else names | inner


def check_model_kwargs(name: str, kwargs) -> dict:
  """``kwargs`` (``config.model.kwargs``) as a plain dict, checked against model ``name``.

  Every key must be a keyword argument of the registered constructor
  (:data:`jaxrobust.models.MODELS`, e.g. ``patch_size`` / ``depth`` /
  ``width`` of a ViT) and not one the trainer sets itself
  (:data:`RESERVED_MODEL_KWARGS`). Values are checked by the constructor when
  the model is built.

  Args:
    name: ``config.model.name``.
    kwargs: a mapping (ConfigDict or dict), or None / empty.

  Returns:
    ``dict(kwargs)`` (ConfigDicts converted; JSON lists stay lists).

  Raises:
    ConfigError: an unknown model, a key the constructor does not take, or a
      reserved key.
  """
  if name not in MODELS:
    raise ConfigError(f"config.model.name={name!r} is unknown; choose one of {sorted(MODELS)}")
  if hasattr(kwargs, "to_dict"):
    kwargs = kwargs.to_dict()
  kwargs = dict(kwargs or {})
  accepted = constructor_keywords(MODELS[name])
  open_ended = accepted is None
  valid = sorted(set(accepted or ()) - set(RESERVED_MODEL_KWARGS))
  for key in sorted(kwargs):
    if key in RESERVED_MODEL_KWARGS:
      raise ConfigError(f"config.model.kwargs.{key} is set by the trainer (classes, channels "
                        f"and image size from the data, normalize/dtype from config.model, the "
                        f"seed from config.seed); remove it from config.model.kwargs")
    if key not in valid and not open_ended:
      raise ConfigError(f"config.model.kwargs.{key} is not an argument of model {name!r}; "
                        f"its arguments: {valid}")
  return kwargs


def model_kwargs(config, image_shape) -> dict:
  """Constructor arguments: those implied by the data (classes, channels, image size), then
  ``config.model.kwargs`` (checked by :func:`check_model_kwargs`).

  Raises:
    ConfigError: a bad ``config.model.kwargs`` key.
  """
  kw = dict(num_classes=dataset_info(config.data.name).num_classes,
            in_channels=image_shape[-1],
            normalize=config.model.normalize,
            dtype=None if config.model.dtype == "float32" else jnp.dtype(config.model.dtype))
  if config.model.name.startswith("small_cnn"):
    kw["image_size"] = image_shape[0]
  elif config.model.name in VIT_MODELS or config.model.name in SWIN_MODELS:  # token grid
    kw["image_size"] = tuple(int(s) for s in image_shape[:2])
  kw.update(check_model_kwargs(config.model.name, config.model.get("kwargs", None)))
  return kw


def aux_heads_of(config) -> tuple[str, ...]:
  """``config.model.aux_heads`` checked against :data:`AUX_HEADS` (``()`` when unset).

  Raises:
    ConfigError: an unknown or repeated head name.
  """
  heads = tuple(config.model.get("aux_heads", ()) or ())
  unknown = [h for h in heads if h not in AUX_HEADS]
  if unknown or len(set(heads)) != len(heads):
    raise ConfigError(f"config.model.aux_heads={heads}: give distinct names among "
                      f"{sorted(AUX_HEADS)}")
  return heads


def add_aux_heads(model, heads, image_shape, seed: int, dtype=None):
  """Attaches a linear head ``<name>_head`` per name on the penultimate features, in place.

  Each head is ``nnx.Linear(D, AUX_HEADS[name])`` on the ``[B, D]`` features
  of ``model(x, return_features=True)`` (as the official code sets
  ``net.rot_pred = nn.Linear(D, 4)``); its parameters are part of the
  model's (trained, decayed, checkpointed like the rest); the model's own
  call ignores them. Returns ``model``.
  """
  if not heads:
    return model
  x = jnp.zeros((1, *image_shape), jnp.float32)
  dim = jax.eval_shape(lambda: model(x, train=False, return_features=True)[1]).shape[-1]
  rngs = nnx.Rngs(seed + 7919)  # not the model's own stream: its weights stay as without.
  for name in heads:
    setattr(model, f"{name}_head", linear(dim, AUX_HEADS[name], rngs=rngs, dtype=dtype))
  return model


def build_model(config, image_shape, seed: int | None = None):
  """The NNX model named by ``config.model`` for images of ``image_shape`` (H, W, C).

  With ``config.model.aux_heads`` the model carries those heads
  (:func:`add_aux_heads`).
  """
  seed = config.seed if seed is None else seed
  kw = model_kwargs(config, image_shape)
  model = create_model(config.model.name, seed=seed, **kw)
  return add_aux_heads(model, aux_heads_of(config), image_shape, seed, kw["dtype"])


def model_fingerprint(config, image_shape) -> str:
  """A string identifying the architecture, stored in checkpoints.

  ``config.model.kwargs`` is part of it when set (``|kwargs=k1=v1,k2=v2``,
  sorted), so a run restores only into a model of the same shape; runs
  without kwargs keep the fingerprint they always had.
  """
  kw = model_kwargs(config, image_shape)
  heads = aux_heads_of(config)
  out = (f"{config.model.name}|classes={kw['num_classes']}|in={tuple(image_shape)}"
         + (f"|heads={','.join(heads)}" if heads else ""))
  extra = check_model_kwargs(config.model.name, config.model.get("kwargs", None))
  if extra:
    out += "|kwargs=" + ",".join(f"{k}={_plain(v)}" for k, v in sorted(extra.items()))
  return out


def _plain(v):
  """Lists and tuples print alike (a JSON round trip turns tuples into lists)."""
  return tuple(_plain(u) for u in v) if isinstance(v, (list, tuple)) else v
