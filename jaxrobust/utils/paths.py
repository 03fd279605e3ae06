"""Dotted names of pytree leaves (``'convs.1.kernel'``) and selections by regex."""
from __future__ import annotations

import re
from typing import Any, Sequence

import jax
import numpy as np

from jaxrobust.errors import ConfigError


def param_name(path) -> str:
  """A ``jax.tree_util`` key path of an NNX state -> ``'convs.1.kernel'``."""
  parts = []
  for k in path:
    if isinstance(k, jax.tree_util.GetAttrKey):
      if k.name != "value":
        parts.append(k.name)
    elif isinstance(k, jax.tree_util.DictKey):
      parts.append(str(k.key))
    elif isinstance(k, jax.tree_util.SequenceKey):
      parts.append(str(k.idx))
    else:
      parts.append(str(getattr(k, "key", k)))
  return ".".join(parts)


def named_leaves(tree) -> list[tuple[str, Any]]:
  """``[(dotted name, leaf)]`` in ``jax.tree.leaves`` order."""
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return [(param_name(p), x) for p, x in flat]


def compile_regex(pattern: str, what: str) -> re.Pattern:
  """``re.compile`` with a ConfigError naming the setting on a bad pattern."""
  try:
    return re.compile(pattern)
  except re.error as e:
    raise ConfigError(f"{what}={pattern!r} is not a valid regular expression ({e})") from e


def select_leaves(tree, pattern: str, what: str = "pattern") -> Any:
  """Bools with the structure of ``tree``: True where ``re.search(pattern, name)``.

  Raises:
    ConfigError: an invalid pattern, or one that selects no leaf (the message
      lists the leaf names).
  """
  rx = compile_regex(pattern, what)
  mask = jax.tree_util.tree_map_with_path(lambda p, _: bool(rx.search(param_name(p))), tree)
  if not any(jax.tree.leaves(mask)):
    names = [n for n, _ in named_leaves(tree)]
    raise ConfigError(f"{what}={pattern!r} matches no parameter; names are {names}")
  return mask


def check_compatible(trees: Sequence[Any], what: str = "models") -> None:
  """Refuses trees that cannot be merged leaf by leaf.

  Args:
    trees: pytrees (parameters or BatchNorm statistics of several models).
    what: how the error names them (e.g. ``'soup ingredients'``).

  Raises:
    ConfigError: fewer than one tree, or two trees of different structure
      (layer names) or leaf shapes, i.e. different architectures.
  """
  if not trees:
    raise ConfigError(f"no {what} to merge; give at least one")
  ref = trees[0]
  ref_struct = jax.tree.structure(ref)
  for i, t in enumerate(trees[1:], 1):
    if jax.tree.structure(t) != ref_struct:
      a = {n for n, _ in named_leaves(ref)}
      b = {n for n, _ in named_leaves(t)}
      diff = sorted(a ^ b)[:3]
      raise ConfigError(f"cannot merge {what} of different architectures: {what} 0 and {i} "
                        f"have different layers (e.g. {diff}); merge models of one architecture")
    for (name, x), (_, y) in zip(named_leaves(ref), named_leaves(t)):
      if np.shape(x) != np.shape(y):
        raise ConfigError(f"cannot merge {what} of different architectures: {name} has shape "
                          f"{np.shape(x)} in {what} 0 but {np.shape(y)} in {what} {i}")
