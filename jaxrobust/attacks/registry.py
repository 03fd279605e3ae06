"""The attack registry: name -> function, accepted settings, validation, aliases.

Each attack registers ONE :class:`AttackSpec` (:func:`register_attack`); every
place that looks an attack up by name uses it: :func:`attack_from_config`
(training, validation and test attacks in configs), the evaluation suite, and
the AutoAttack cascade (:mod:`jaxrobust.evaluate.autoattack`), which runs the
registered entries that carry an :class:`AutoAttackHook`. Names use
underscores (``apgd_ce``, ``fab_t``); other spellings (AutoAttack's
``apgd-ce``, ``fab-t``) are aliases resolved by :func:`resolve_attack_name`.

A user registers a new attack from outside the package with one call::

    from jaxrobust.attacks import AttackSpec, register_attack

    def my_attack(logits_fn, rng, x, y, *, eps, norm='linf'):
      ...                                       # returns x_adv like x

    register_attack(AttackSpec('my_attack', my_attack, settings=('eps', 'norm')))
    attack = attack_from_config(dict(name='my_attack', eps=8 / 255))
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Iterator, Mapping

from jaxrobust.errors import ConfigError
from jaxrobust.types import AttackFn


@dataclasses.dataclass(frozen=True)
class AutoAttackHook:
  """How the AutoAttack cascade runs a registered attack.

  The cascade attacks the still-robust points pass after pass: pass ``sub``
  of attack ``a`` calls ``run(logits_fn, key, x, y, sub, **settings)`` and the
  points it breaks are not attacked again (APGD's, FAB's and Square's restarts
  and APGD-T's and FAB-T's target classes are passes, as in the reference's
  batch loop).

  Attributes:
    settings: ``{attack setting: AutoAttackSettings field}``: the settings
      taken from the version's settings (``eps`` and ``norm`` always are).
    passes: ``passes(settings) -> int``, the number of passes (default 1).
    run: ``run(logits_fn, key, x, y, sub, **settings) -> x_adv``; None: the
      registered function itself, ``fn(logits_fn, key, x, y, **settings)``.
    segments: ``segments(**settings) -> AttackSegments``: the same pass cut into
      segments, so that the cascade can drop the rows a segment finished
      (compaction, ``run_autoattack(compact=True)``); None: not cut.
  """
  settings: Mapping[str, str] = dataclasses.field(default_factory=dict)
  passes: Callable[[Mapping], int] | None = None
  run: Callable | None = None
  segments: Callable[..., "AttackSegments"] | None = None


@dataclasses.dataclass(frozen=True)
class AttackSegments:
  """One AutoAttack pass of an attack, cut into segments (compaction).

  Contract: every per-row quantity depends on that row only, and once
  ``done(state)`` is True for a row its ``result`` never changes. The cascade
  then runs ``init`` on the batch and each ``step`` on the rows not yet done
  only (gathered, padded to a few fixed sizes): the flags and adversarial
  examples equal those of running every step on the whole batch.

  Attributes:
    count: number of segments.
    init: ``init(logits_fn, key, x, y, sub) -> state`` (a pytree of arrays with
      the batch on axis 0).
    step: ``step(logits_fn, key, x, y, sub, state, seg) -> state``, ``seg`` an
      int32 (traced) segment index; ``x``, ``y`` and ``state`` any subset of rows.
    done: ``done(state) -> bool [B]``: rows whose result is final.
    result: ``result(state) -> x_adv`` like ``x``.
  """
  count: int
  init: Callable
  step: Callable
  done: Callable
  result: Callable


@dataclasses.dataclass(frozen=True)
class AttackSpec:
  """One registered attack.

  Attributes:
    name: the canonical name (lower case, underscores), e.g. ``'apgd_t'``.
    fn: ``fn(logits_fn, rng, x, y, **settings) -> x_adv`` (see
      :mod:`jaxrobust.attacks`).
    settings: the keyword settings a config may give (``name`` excluded).
    required: settings a config must give.
    fixed: settings always passed to ``fn`` and not settable (e.g.
      ``loss='ce'`` for ``apgd_ce``).
    validate: ``validate(cfg)`` raising :class:`ConfigError` for a bad value
      (``cfg``: the settings without ``name``); runs after the key checks.
    aliases: other accepted spellings (``'apgd-t'``, ``'apgd_targeted'``).
    autoattack: how the AutoAttack cascade runs it; None: not usable there.
    doc: one line for listings.
  """
  name: str
  fn: AttackFn
  settings: frozenset = frozenset()
  required: frozenset = frozenset({"eps"})
  fixed: Mapping = dataclasses.field(default_factory=dict)
  validate: Callable[[dict], None] | None = None
  aliases: tuple = ()
  autoattack: AutoAttackHook | None = None
  doc: str = ""

  def __post_init__(self):
    object.__setattr__(self, "settings", frozenset(self.settings))
    object.__setattr__(self, "required", frozenset(self.required))
    object.__setattr__(self, "aliases", tuple(self.aliases))
    missing = self.required - self.settings
    if missing:
      raise ValueError(f"attack {self.name!r}: required settings {sorted(missing)} are not "
                       f"among its settings")

  def check(self, cfg: Mapping) -> dict:
    """The settings of ``cfg`` checked against this spec; returns them as a dict.

    Raises:
      ConfigError: an unknown or missing setting, or a value ``validate`` rejects.
    """
    cfg = dict(cfg)
    unknown = set(cfg) - self.settings
    if unknown:
      raise ConfigError(f"unknown setting(s) {sorted(unknown)} for attack {self.name!r}; "
                        f"valid: {sorted(self.settings)}")
    if self.validate is not None:
      self.validate(cfg)
    missing = self.required - set(cfg)
    if missing:
      raise ConfigError(f"attack {self.name!r} needs setting(s) {sorted(missing)}")
    return cfg

  def bind(self, cfg: Mapping) -> Callable:
    """``attack(logits_fn, rng, x, y, **extra) -> x_adv`` with the checked settings bound."""
    cfg = {**self.check(cfg), **self.fixed}
    fn = self.fn

    def attack(logits_fn, rng, x, y, **extra):
      return fn(logits_fn, rng, x, y, **cfg, **extra)

    attack.__name__ = f"{self.name}_attack"
    return attack


_REGISTRY: dict[str, AttackSpec] = {}
_ALIASES: dict[str, str] = {}


def _key(name: str) -> str:
  return str(name).strip().lower()


def register_attack(spec: AttackSpec, *, overwrite: bool = False) -> AttackSpec:
  """Adds ``spec`` to the registry under its name and aliases.

  The attack function should call the model through :func:`call_logits` with a
  key from :func:`model_key` in every forward pass, so that a stochastic model
  (:class:`jaxrobust.types.StochasticLogitsFn`) gets a fresh key each time; a
  plain ``logits_fn(x)`` call works for deterministic models only.

  Args:
    spec: the attack.
    overwrite: replace an attack of the same name (and its aliases).

  Returns:
    ``spec`` (so it can be used as an expression).

  Raises:
    ConfigError: the name or an alias is taken (and ``overwrite`` is False),
      or a name is not a non-empty lower-case identifier-like string.
  """
  if not isinstance(spec, AttackSpec):
    raise ConfigError(f"register_attack wants an AttackSpec, got {type(spec).__name__}")
  name = _key(spec.name)
  if not name or name != spec.name:
    raise ConfigError(f"attack name {spec.name!r} must be non-empty lower case without spaces")
  if overwrite and name in _REGISTRY:
    unregister_attack(name)
  for n in (name,) + tuple(_key(a) for a in spec.aliases):
    if n in _REGISTRY or n in _ALIASES:
      raise ConfigError(f"attack name {n!r} is already registered (by "
                        f"{_ALIASES.get(n, n)!r}); pick another name or pass overwrite=True")
  _REGISTRY[name] = spec
  for a in spec.aliases:
    _ALIASES[_key(a)] = name
  return spec


def unregister_attack(name: str) -> AttackSpec:
  """Removes a registered attack (and its aliases); returns its spec.

  Raises:
    ConfigError: unknown name.
  """
  spec = get_attack(name)
  del _REGISTRY[spec.name]
  for a in spec.aliases:
    _ALIASES.pop(_key(a), None)
  return spec


def resolve_attack_name(name: str) -> str:
  """The canonical name of ``name`` or one of its aliases (``'fab-t'`` -> ``'fab_t'``).

  Raises:
    ConfigError: unknown name; the message lists every valid name.
  """
  key = _key(name) if isinstance(name, str) else name
  if key in _REGISTRY:
    return key
  if key in _ALIASES:
    return _ALIASES[key]
  raise ConfigError(f"unknown attack {name!r}; choose one of {attack_names()} "
                    f"(aliases: {sorted(_ALIASES)})")


def get_attack(name: str) -> AttackSpec:
  """The :class:`AttackSpec` registered as ``name`` (or an alias of it).

  Raises:
    ConfigError: unknown name.
  """
  return _REGISTRY[resolve_attack_name(name)]


def attack_names(autoattack: bool = False) -> list[str]:
  """Sorted canonical names; ``autoattack=True``: only those the AutoAttack cascade can run."""
  return sorted(n for n, s in _REGISTRY.items() if not autoattack or s.autoattack is not None)


def attack_from_config(cfg: Mapping) -> Callable:
  """Returns ``attack(logits_fn, rng, x, y, **extra) -> x_adv`` from plain data.

  Args:
    cfg: mapping with ``name`` (a registered name or alias, e.g. ``'pgd'``,
      ``'apgd_t'``, ``'fab-t'``) and that attack's keyword settings, e.g.
      ``dict(name='pgd', eps=8/255, step_size=2/255, num_steps=10)``.

  Returns:
    The attack with its settings bound; ``extra`` keywords (e.g.
    ``ref_logits``) are passed through to the registered function.

  Raises:
    ConfigError: unknown attack name or setting, a missing setting, or an
      invalid value.
  """
  cfg = dict(cfg)
  name = cfg.pop("name", None)
  if name is None:
    raise ConfigError(f"unknown attack None: the attack config needs a 'name'; choose one of "
                      f"{attack_names()}")
  return get_attack(name).bind(cfg)


class _FunctionView(Mapping):
  """Read-only live view ``{canonical name: function}`` of the registry."""

  def __getitem__(self, name: str) -> AttackFn:
    if name not in _REGISTRY:
      raise KeyError(name)
    return _REGISTRY[name].fn

  def __iter__(self) -> Iterator[str]:
    return iter(sorted(_REGISTRY))

  def __len__(self) -> int:
    return len(_REGISTRY)

  def __repr__(self) -> str:
    return f"ATTACKS({sorted(_REGISTRY)})"


ATTACKS: Mapping[str, AttackFn] = _FunctionView()
