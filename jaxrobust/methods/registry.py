"""The method registry: each training objective registers its name, settings and constructor.

A method module (e.g. :mod:`jaxrobust.methods.trades`) calls
:func:`register_method` once::

    register_method(
        "trades",
        settings=dict(beta=6.0, kl_reduction="batchmean", attack_bn="eval",
                      bn_updates="official"),               # official defaults
        attack=dict(name="pgd", loss="kl", random_start="normal",
                    step_size=0.007, num_steps=10),          # eps / norm: config.eps
        build=lambda s, ctx: TRADES(ctx.attack(s, kl=True), beta=s["beta"], ...))

and ``config.method`` of a training config is ``method_config(name,
**overrides)``: ``name``, ``attack`` (methods that attack) and the method's
own settings with their official values, so a resolved config shows them and
``--config.method.<key>=...`` overrides parse. :func:`method_from_config`
builds the method; a key that is not a setting of the method is refused with
the method's valid keys. Adding an objective is adding one module that calls
:func:`register_method` (or one call from user code, before the config is
built).

Settings are keyed by the method's config names; a method whose official
defaults depend on another setting (AWP's base method, IAD-II's second
teacher) passes ``settings`` as a function of the given overrides.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import ml_collections

from jaxrobust.attacks import attack_from_config, resolve_attack_name
from jaxrobust.attacks.threat import attack_config
from jaxrobust.errors import ConfigError

# The ``teacher_*`` keys of every distillation method (see jaxrobust.train.loop.load_teachers).
TEACHER_SETTINGS = dict(
    teacher_workdir="",  # workdir of a finished python -m jaxrobust.train run.
    teacher_which="best",  # its 'best' or 'latest' checkpoint.
    teacher_dtype="",  # teacher compute dtype: '' as trained, or 'bfloat16'.
)
BN_VIEWS = ("train", "eval")
BN_UPDATES = ("official", "once")
# config.train.attack_bn_updates: 'none' (attack passes leave the running averages alone) or
# 'official' (each train-view attack pass updates them, in order, as PyTorch's train mode).
ATTACK_BN_UPDATES = ("none", "official")
# Loop unroll of a training attack whose config leaves ``unroll`` unset (BuildContext.attack):
# a fori_loop, whatever the backend. Standalone attacks and evaluation keep
# jaxrobust.attacks.default_unroll (straight-line code on CPU). Measured in the PGD-AT step of
# PreAct-ResNet-18 on CPU (benchmarks/bench_pgd.py --parts jax_train, BENCHMARKS.md): the
# straight-line PGD-10 compiles 4-5x longer and runs no faster.
TRAIN_UNROLL = 1
# Random-crop padding of the training images (``config.data.pad_mode``): torchvision's
# ``RandomCrop(padding=4)`` pads with zeros (``'constant'``); Rice et al. / AT-AWP pad the
# whole training set with ``np.pad(mode='reflect')`` once (``AT_AWP/utils.py`` ``pad``).
PAD_MODES = ("constant", "reflect")


@dataclasses.dataclass(frozen=True)
class BuildContext:
  """What a method's constructor gets besides its settings.

  Attributes:
    steps_per_epoch: optimiser steps per epoch; converts epoch settings (IAD's
      begin, AWP's warm-up) to steps. None (e.g. ``validate_config``) leaves
      them unresolved.
    teachers: the distillation teachers' :class:`~jaxrobust.methods.base.
      ModelFns`, in ``num_teachers`` order; empty builds a method that raises
      when used.
    weight_decay: the trainer's coupled weight decay (``config.train.
      weight_decay``; AWP applies it at the perturbed point).
    method: the method's name (error messages).
    attack_bn_updates: ``config.train.attack_bn_updates`` (one of
      :data:`ATTACK_BN_UPDATES`; see :meth:`attack_passes_update_bn`).
    train_unroll: the loop unroll of a training attack that takes ``unroll``
      (PGD) when ``config.method.attack.unroll`` is unset (:meth:`attack`);
      None keeps the attack's own default.
  """
  steps_per_epoch: int | None = None
  teachers: tuple = ()
  weight_decay: float = 0.0
  method: str = ""
  attack_bn_updates: str = "official"
  train_unroll: int | None = TRAIN_UNROLL

  def attack_passes_update_bn(self, method, extra_passes: int = 0):
    """``method``, wrapped so that its train-view attack passes update BatchNorm running averages.

    With ``attack_bn_updates='official'`` and ``method.attack_bn == 'train'``:
    :class:`jaxrobust.methods.base.AttackBNUpdates` (every attack pass, plus
    ``extra_passes`` on ``x_adv``, updates them in order, as PyTorch's
    train-mode attack); otherwise ``method`` unchanged (an eval-view attack
    updates nothing, as ``model.eval()``).

    Raises:
      ConfigError: ``attack_bn_updates`` is not one of :data:`ATTACK_BN_UPDATES`.
    """
    if self.attack_bn_updates not in ATTACK_BN_UPDATES:
      raise ConfigError(f"config.train.attack_bn_updates={self.attack_bn_updates!r}; use one "
                        f"of {ATTACK_BN_UPDATES}")
    if self.attack_bn_updates == "none" or getattr(method, "attack_bn", None) != "train":
      return method
    from jaxrobust.methods.base import AttackBNUpdates  # pylint: disable=g-import-not-at-top
    return AttackBNUpdates(method, extra_passes=int(extra_passes))

  def epochs_to_steps(self, epochs: float) -> int | None:
    """``round(epochs * steps_per_epoch)``; 0 for 0 epochs; None when unresolved."""
    if not epochs:
      return 0
    if self.steps_per_epoch is None:
      return None
    return int(round(epochs * self.steps_per_epoch))

  def teacher(self, i: int = 0):
    """The ``i``-th teacher's ModelFns, or None."""
    return self.teachers[i] if len(self.teachers) > i else None

  def attack(self, settings: Mapping[str, Any], names=("pgd",), kl: bool = False,
             kl_attacks: tuple[str, ...] = ()) -> Callable:
    """The training attack ``attack(logits_fn, rng, x, y, **extra) -> x_adv``.

    A PGD attack whose config leaves ``unroll`` unset runs its loop with
    ``unroll=train_unroll`` (:data:`TRAIN_UNROLL`: a ``fori_loop``, compiled
    once whatever ``num_steps`` is) instead of the standalone attack's
    :func:`jaxrobust.attacks.default_unroll`: the same iteration in another
    program (results equal up to float rounding). An explicit
    ``config.method.attack.unroll`` wins.

    Args:
      settings: the method's resolved settings; ``settings['attack']`` is the
        attack config with ``eps`` / ``norm`` filled
        (:func:`jaxrobust.train.resolve_config`).
      names: attack names this method accepts.
      kl: the method maximises a KL divergence in its inner max (needs
        ``loss='kl'``, except for the names in ``kl_attacks``).
      kl_attacks: registered attacks (also accepted) whose objective is a KL
        divergence by construction (TRADES's ``trades_l2``).

    Raises:
      ConfigError: an attack this method does not run, a non-KL inner max for
        a KL method, unset ``eps``, or invalid attack settings.
    """
    cfg = {k: v for k, v in dict(settings.get("attack") or {}).items() if v is not None}
    name = cfg.get("name")
    if "eps" not in cfg:
      raise ConfigError(f"config.method.attack.eps is unset for method {self.method!r}: set "
                        f"config.eps (filled in by jaxrobust.train.resolve_config) or the "
                        f"attack's own eps")
    if kl and name not in kl_attacks and cfg.get("loss", "ce") != "kl":
      raise ConfigError(f"method {self.method!r} maximises a KL divergence in its inner max: "
                        f"set config.method.attack.loss='kl' (got {cfg.get('loss', 'ce')!r}); "
                        f"the official settings are in the configs/cifar10_*.py of the method")
    if name not in tuple(names) + tuple(kl_attacks):
      raise ConfigError(f"method {self.method!r} needs config.method.attack.name in "
                        f"{tuple(names) + tuple(kl_attacks)}, got {name!r}")
    if (self.train_unroll is not None and "unroll" not in cfg
        and resolve_attack_name(name) == "pgd"):
      cfg["unroll"] = int(self.train_unroll)
    return attack_from_config(cfg)


@dataclasses.dataclass(frozen=True)
class MethodSpec:
  """A registered method.

  Attributes:
    name: the ``config.method.name``.
    build: ``build(settings, ctx) -> method``; ``settings`` maps every key of
      :meth:`defaults` (plus ``'attack'`` when the method attacks) to its
      value, ``ctx`` is a :class:`BuildContext`.
    settings: the official defaults of the method's own config keys, or a
      function ``given -> defaults`` of the user's settings (base-dependent
      defaults).
    attack: the official training attack (without ``eps`` / ``norm``), a
      function of the resolved settings, or None for a method without attack.
    teachers: how many teacher workdirs the method loads, or a function of
      the settings.
    doc: one line for listings.
    pad_mode: the random crop's padding in the method's official code (one of
      :data:`PAD_MODES`), or a function of the settings; what an unset
      ``config.data.pad_mode`` resolves to.
  """
  name: str
  build: Callable[[Mapping[str, Any], BuildContext], Any]
  settings: Mapping[str, Any] | Callable[[Mapping[str, Any]], Mapping[str, Any]]
  attack: Mapping[str, Any] | Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None
  teachers: int | Callable[[Mapping[str, Any]], int] = 0
  doc: str = ""
  pad_mode: str | Callable[[Mapping[str, Any]], str] = "constant"

  def defaults(self, given: Mapping[str, Any] | None = None) -> dict:
    """The official value of every own setting, given the user's ``given`` settings."""
    given = dict(given or {})
    out = self.settings(given) if callable(self.settings) else self.settings
    return dict(out)

  def default_attack(self, settings: Mapping[str, Any]) -> dict | None:
    if self.attack is None:
      return None
    return dict(self.attack(settings) if callable(self.attack) else self.attack)

  def valid_keys(self, given: Mapping[str, Any] | None = None) -> tuple[str, ...]:
    keys = ("name",) + (("attack",) if self.attack is not None else ())
    return keys + tuple(self.defaults(given))

  def num_teachers(self, settings: Mapping[str, Any]) -> int:
    return int(self.teachers(settings) if callable(self.teachers) else self.teachers)

  def official_pad_mode(self, settings: Mapping[str, Any]) -> str:
    return str(self.pad_mode(settings) if callable(self.pad_mode) else self.pad_mode)


_REGISTRY: dict[str, MethodSpec] = {}


def register_method(name: str, *, build: Callable, settings=None, attack=None, teachers=0,
                    doc: str = "", pad_mode="constant", replace: bool = False) -> MethodSpec:
  """Registers a training method under ``name`` (one call per method module).

  Args:
    name: the ``config.method.name``.
    build: ``build(settings, ctx) -> method`` (see :class:`MethodSpec`); the
      method object has ``perturb`` and ``loss`` (:mod:`jaxrobust.methods.base`).
    settings: dict of the method's own config keys and official defaults
      (``attack_bn``, ``bn_updates``, hyperparameters; ``name`` and ``attack``
      are added), or a function of the given settings returning it.
    attack: official training attack config without ``eps`` / ``norm`` (the
      threat model comes from ``config.eps`` / ``config.norm``), a function
      of the settings, or None when the method does not attack.
    teachers: number of teacher workdirs (``teacher_*`` keys belong in
      ``settings``; see :data:`TEACHER_SETTINGS`), or a function of the
      settings.
    doc: one line for listings.
    pad_mode: the random-crop padding of the method's official training data
      pipeline, ``'constant'`` (zeros, torchvision's ``RandomCrop(padding=4)``;
      the default) or ``'reflect'``, or a function of the settings; an unset
      ``config.data.pad_mode`` takes it (:func:`official_pad_mode`).
    replace: allow re-registering an existing name.

  Returns:
    The :class:`MethodSpec`.

  Raises:
    ConfigError: ``name`` is already registered (and not ``replace``), a
      setting is called ``name`` / ``attack``, or ``pad_mode`` is not one of
      :data:`PAD_MODES`.
  """
  if name in _REGISTRY and not replace:
    raise ConfigError(f"method {name!r} is already registered; pass replace=True to override")
  if not callable(pad_mode) and pad_mode not in PAD_MODES:
    raise ConfigError(f"method {name!r}: pad_mode must be one of {PAD_MODES}, got {pad_mode!r}")
  spec = MethodSpec(name, build, settings if settings is not None else {}, attack, teachers,
                    doc, pad_mode)
  if {"name", "attack"} & set(spec.defaults({})):
    raise ConfigError(f"method {name!r}: 'name' and 'attack' are not settings")
  _REGISTRY[name] = spec
  return spec


def get_method(name: str) -> MethodSpec:
  """The :class:`MethodSpec` of ``name``.

  Raises:
    ConfigError: unknown name (the message lists the registered ones).
  """
  if name not in _REGISTRY:
    raise ConfigError(f"unknown method {name!r}; choose one of {registered_methods()}")
  return _REGISTRY[name]


def registered_methods() -> tuple[str, ...]:
  """The registered method names, in registration order."""
  return tuple(_REGISTRY)


def _as_dict(cfg) -> dict:
  if hasattr(cfg, "to_dict"):
    cfg = cfg.to_dict()
  return dict(cfg or {})


def method_settings(cfg) -> tuple[MethodSpec, dict]:
  """``config.method`` -> (spec, every setting of the method with its value).

  Keys ``cfg`` leaves out take the method's official default (so plain dicts
  such as ``dict(name='trades', attack=...)`` work); ``attack`` is the given
  attack config or the method's official one.

  Raises:
    ConfigError: unknown method, or a key that is not a setting of it (the
      message lists the method's valid keys).
  """
  given = _as_dict(cfg)
  name = given.pop("name", None)
  spec = get_method(name)
  defaults = spec.defaults(given)
  valid = spec.valid_keys(given)
  unknown = sorted(set(given) - set(valid))
  if unknown:
    raise ConfigError(f"config.method has {unknown}, not settings of method {name!r}; its "
                      f"valid keys: {list(valid)}")
  out = {"name": name, **defaults, **{k: v for k, v in given.items() if k != "attack"}}
  if spec.attack is not None:
    out["attack"] = given["attack"] if given.get("attack") is not None else (
        spec.default_attack(out))
  return spec, out


def method_config(name: str, **overrides) -> ml_collections.ConfigDict:
  """``config.method`` for method ``name``: its official settings, then ``overrides``.

  Config files call it (``c.method = method_config('trades', beta=6.0)``);
  every key exists in the returned config, so ``--config.method.<key>=...``
  overrides work. ``attack`` (a dict or :func:`jaxrobust.attacks.threat.
  attack_config`) replaces the official attack; its ``eps`` / ``norm`` stay
  unset unless given, and come from ``config.eps`` / ``config.norm``.

  Returns:
    A locked ConfigDict with ``name``, ``attack`` (methods that attack) and
    the method's settings.

  Raises:
    ConfigError: unknown method, or an override that is not one of its keys.
  """
  _, settings = method_settings({"name": name, **overrides})
  if "attack" in settings:
    attack = dict(_as_dict(settings["attack"]))
    settings["attack"] = attack_config(attack.pop("name"), **attack)
  c = ml_collections.ConfigDict(settings)
  c.lock()
  return c


def method_from_config(cfg, *, steps_per_epoch: int | None = None, teachers=(),
                       weight_decay: float = 0.0, attack_bn_updates: str = "official"):
  """Builds the training method named ``cfg['name']`` from ``config.method``.

  Args:
    cfg: the method config (ConfigDict or dict): ``name``, ``attack`` (eps /
      norm filled, see :func:`jaxrobust.train.resolve_config`) and the
      method's settings (:func:`method_config`; missing keys take the
      official defaults).
    steps_per_epoch: converts epoch settings (IAD's begin, AWP's warm-up) to
      optimiser steps; None (e.g. for validation) leaves them unresolved.
    teachers: the distillation teachers' ``ModelFns`` (IAD-II: the
      adversarially then the naturally trained one); empty builds a method
      that raises when used (for validation).
    weight_decay: the trainer's coupled weight decay (AWP applies it at the
      perturbed point, as PyTorch does).
    attack_bn_updates: ``config.train.attack_bn_updates``: ``'official'``
      (the default: the passes of a train-view attack update the BatchNorm
      running averages, as PyTorch's train mode in the official code;
      :class:`BuildContext.attack_passes_update_bn`) or ``'none'`` (attack
      passes leave them alone).

  Returns:
    The method (``perturb`` / ``loss``; see :mod:`jaxrobust.methods.base`).

  Raises:
    ConfigError: unknown method, a key that is not one of its settings, or an
      invalid value.
  """
  spec, settings = method_settings(cfg)
  ctx = BuildContext(steps_per_epoch, tuple(teachers), float(weight_decay), spec.name,
                     attack_bn_updates)
  return spec.build(settings, ctx)


def num_teachers(cfg) -> int:
  """How many teacher workdirs the method of ``config.method`` loads (0, 1, or 2 for IAD-II).

  Raises:
    ConfigError: unknown method or key.
  """
  spec, settings = method_settings(cfg)
  return spec.num_teachers(settings)


def official_pad_mode(cfg) -> str:
  """The random-crop padding of the official code of the method of ``config.method``.

  ``'reflect'`` for PGD-AT (Rice et al.) and AT-AWP (``csdongxian/AWP:
  AT_AWP/utils.py`` pads the training set with ``np.pad(mode='reflect')``),
  ``'constant'`` (zeros, torchvision's ``RandomCrop(32, padding=4)``) for
  TRADES, MART, TRADES-AWP, ARD, IAD, RSLAD, FGSM-AT (``locuslab/
  fast_adversarial:CIFAR10/utils.py``) and the others. An unset
  ``config.data.pad_mode`` resolves to it (:func:`jaxrobust.train.resolve_config`).

  Raises:
    ConfigError: unknown method or key, or a registered function that returns
      a mode outside :data:`PAD_MODES`.
  """
  spec, settings = method_settings(cfg)
  mode = spec.official_pad_mode(settings)
  if mode not in PAD_MODES:
    raise ConfigError(f"method {spec.name!r} gives pad_mode {mode!r}; use one of {PAD_MODES}")
  return mode


# Value checks for constructors: each raises ConfigError naming config.method.<key>.


def choice(settings: Mapping[str, Any], key: str, options) -> Any:
  """``settings[key]`` if it is one of ``options``."""
  value = settings[key]
  if value not in tuple(options):
    raise ConfigError(f"config.method.{key} must be one of {tuple(options)}, got {value!r}")
  return value


def positive(settings: Mapping[str, Any], key: str, allow_zero: bool = False) -> float:
  """``float(settings[key])`` if > 0 (or >= 0 with ``allow_zero``)."""
  value = settings[key]
  if not (value > 0 or (allow_zero and value == 0)):
    raise ConfigError(f"config.method.{key} must be {'>=' if allow_zero else '>'} 0, "
                      f"got {value}")
  return float(value)


def unit_interval(settings: Mapping[str, Any], key: str, method: str) -> float:
  """``float(settings[key])`` if in [0, 1]."""
  value = float(settings[key])
  if not 0 <= value <= 1:
    raise ConfigError(f"config.method.{key} must be in [0, 1] for {method}, got {value}")
  return value


__all__ = ["ATTACK_BN_UPDATES", "BN_UPDATES", "BN_VIEWS", "BuildContext", "MethodSpec", "PAD_MODES",
           "TEACHER_SETTINGS", "TRAIN_UNROLL", "choice", "get_method", "method_config", "method_from_config", "method_settings",
           "num_teachers", "official_pad_mode", "positive", "register_method",
           "registered_methods", "unit_interval"]
