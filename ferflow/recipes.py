"""Training recipes as files: a YAML or TOML file maps onto :class:`ferflow.config.TrainConfig`.

    ferflow train --config reference                       # configs/reference.yaml
    ferflow train --config my.toml --set epochs=10 --set augment.erase_prob=0.3

A recipe names only the fields it changes; the rest keep ``TrainConfig``'s defaults. Keys
are the field names (``augment.*`` nested, or dotted in ``--set``). Values are checked against
the field types: an unknown key or a bad value is a :class:`RecipeError` whose one-line message
names the file or the ``--set`` at fault and what it accepts.
"""

from __future__ import annotations

import dataclasses
import enum
import tomllib
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from ferflow.config import MODEL_NAMES, AugmentConfig, LabelScheme, TrainConfig

_CHECKOUT_RECIPES = Path(__file__).resolve().parents[1] / "configs"
_PACKAGED_RECIPES = Path(__file__).resolve().parent / "configs"  # in the wheel
RECIPES_DIR = _CHECKOUT_RECIPES if _CHECKOUT_RECIPES.is_dir() else _PACKAGED_RECIPES
"""Named recipes: ``--config NAME`` reads ``NAME.yaml`` from here."""

SUFFIXES = (".yaml", ".yml", ".toml")


class RecipeError(ValueError):
    """A recipe file or override is unusable; the message says where and how to fix it."""


def recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml")) if RECIPES_DIR.is_dir() else []


def recipe_path(config: str | Path) -> Path:
    """A recipe file path, or the name of a recipe in :data:`RECIPES_DIR`."""
    path = Path(config)
    if path.suffix in SUFFIXES:
        if not path.is_file():
            raise RecipeError(f"recipe file {path} does not exist")
        return path
    named = RECIPES_DIR / f"{config}.yaml"
    if not named.is_file():
        names = ", ".join(recipe_names()) or "none"
        raise RecipeError(f"no recipe {str(config)!r} (a .yaml/.toml path, or one of: {names})")
    return named


def read_recipe(path: Path) -> dict[str, Any]:
    text = path.read_text()
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise RecipeError(f"{path}: not valid {path.suffix[1:].upper()} ({first})") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe is a mapping of TrainConfig fields, got {type(data).__name__}")
    return data


def load_recipe(config: str | Path | None = None, overrides: Iterable[str] = ()) -> TrainConfig:
    """``TrainConfig`` from the recipe ``config`` (defaults when None), then ``KEY=VALUE`` overrides."""
    cfg, where = _load(TrainConfig, recipe_path(config) if config is not None else None, overrides)
    check_train_config(cfg, where)
    return cfg


def load_tune_config(config: str | Path | None = None, overrides: Iterable[str] = ()):
    """``TuneConfig`` from a YAML/TOML file (defaults when None), then ``KEY=VALUE`` overrides.

    Keys are ``TuneConfig`` fields; ``space.*`` is the search space and ``base.*`` the recipe
    every trial starts from (``--set base.model=cnn``).
    """
    from ferflow.config import TuneConfig

    path = Path(config) if config is not None else None
    if path is not None and not path.is_file():
        raise RecipeError(f"tuning config {path} does not exist")
    cfg, where = _load(TuneConfig, path, overrides)
    check_train_config(cfg.base, where)
    return cfg


def tune_config_from_dict(data: Mapping[str, Any], where: str = "tuning config"):
    """``TuneConfig`` from plain data (``to_dict``'s output): how pipeline steps pass a study."""
    from ferflow.config import TuneConfig

    cfg = _build(TuneConfig, data, where)
    check_train_config(cfg.base, where)
    return cfg


def _load(cls: type, path: Path | None, overrides: Iterable[str]) -> tuple[Any, str]:
    """``cls`` from its defaults or the file at ``path``, with overrides; and where it came from."""
    cfg, where = cls(), "defaults"
    if path is not None:
        cfg, where = _build(cls, read_recipe(path), where=str(path)), str(path)
    overrides = list(overrides)
    cfg = apply_overrides(cfg, overrides)
    return cfg, where + (" with --set " + " ".join(overrides) if overrides else "")


def check_train_config(cfg: TrainConfig, where: str = "recipe") -> None:
    """Refuse values no training can use, before any heavy import."""
    problems = []
    if cfg.model not in MODEL_NAMES:
        problems.append(f"model {cfg.model!r} is not one of {', '.join(MODEL_NAMES)}")
    for name in ("width", "epochs", "batch_size", "head_stages", "early_stopping_patience"):
        low = 0 if name in ("head_stages", "early_stopping_patience") else 1
        if getattr(cfg, name) < low:
            problems.append(f"{name} must be >= {low}")
    if not cfg.depths or min(cfg.depths) < 1:
        problems.append("depths must be one or more stages of >= 1 block")
    if not 0 < cfg.tune_fraction < 1:
        problems.append("tune_fraction must be in (0, 1)")
    if not 0 <= cfg.dropout < 1:
        problems.append("dropout must be in [0, 1)")
    if cfg.learning_rate <= 0:
        problems.append("learning_rate must be > 0")
    if any(w < 0 for w in cfg.source_weights.values()):
        problems.append("source_weights must be >= 0")
    problems += _augment_problems(cfg.augment)
    if cfg.init_weights and not Path(cfg.init_weights).is_file():
        problems.append(f"init_weights {cfg.init_weights} is not a file (a .weights.h5 or .keras file)")
    if cfg.teacher and not Path(cfg.teacher).is_file():
        problems.append(f"teacher {cfg.teacher} is not a file (an exported model.onnx)")
    if not 0 <= cfg.teacher_weight <= 1:
        problems.append("teacher_weight must be in [0, 1]")
    if cfg.teacher and LabelScheme(cfg.label_scheme) is LabelScheme.MULTI_TARGET:
        problems.append("a teacher's probabilities need soft targets; use another label_scheme")
    if problems:
        raise RecipeError(f"{where}: " + "; ".join(problems))


def apply_overrides(cfg: TrainConfig, overrides: Iterable[str]) -> TrainConfig:
    """Apply ``--set KEY=VALUE`` strings (``augment.erase_prob=0.3``); values parse as YAML."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise RecipeError(f"--set {item!r}: expected KEY=VALUE, e.g. --set epochs=10")
        where = f"--set {item}"
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            value = text
        cfg = _replace_path(cfg, key.strip().split("."), value, where)
    return cfg


def to_dict(cfg: Any) -> dict[str, Any]:
    """A config as plain data (enums as values, tuples as lists): what a recipe file holds.

    An unset optional field (``None``) is left out: a recipe need not name it, and Kubeflow
    pipeline parameters cannot carry ``None``.
    """
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if value is None:
            continue
        if dataclasses.is_dataclass(value):
            value = to_dict(value)
        elif isinstance(value, enum.Enum):
            value = value.value
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out


def dump_recipe(cfg: TrainConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=None)


# --- typed construction -----------------------------------------------------------------------


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unknown(cls: type, key: str, where: str) -> RecipeError:
    known = ", ".join(f.name for f in dataclasses.fields(cls))
    return RecipeError(f"{where}: unknown key {key!r} (known: {known})")


def _build(cls: type, data: Mapping[str, Any], where: str, base: Any = None) -> Any:
    if not isinstance(data, Mapping):
        raise RecipeError(f"{where}: expected a mapping of {cls.__name__} fields, got {data!r}")
    types_ = _field_types(cls)
    base = cls() if base is None else base  # a nested mapping layers onto the enclosing default
    values: dict[str, Any] = {}
    for key, raw in data.items():
        if key not in types_:
            raise _unknown(cls, str(key), where)
        values[key] = _coerce(raw, types_[key], f"{where}: {key}", getattr(base, key))
    try:
        return dataclasses.replace(base, **values)
    except (TypeError, ValueError) as exc:
        raise RecipeError(f"{where}: {exc}") from exc


def _replace_path(obj: Any, keys: list[str], value: Any, where: str) -> Any:
    head, rest = keys[0], keys[1:]
    types_ = _field_types(type(obj))
    if head not in types_:
        raise _unknown(type(obj), head, where)
    current = getattr(obj, head)
    if rest:
        if not dataclasses.is_dataclass(current):
            raise RecipeError(f"{where}: {head} has no fields ({'.'.join(keys)} is not a key)")
        new = _replace_path(current, rest, value, where)
    else:
        new = _coerce(value, types_[head], f"{where}: {head}", current)
    return dataclasses.replace(obj, **{head: new})


def _augment_problems(aug: AugmentConfig) -> list[str]:
    problems = [
        f"augment.{name} must be in [0, 1]"
        for name in ("erase_prob", "blur_prob", "downscale_prob", "noise_prob")
        if not 0 <= getattr(aug, name) <= 1
    ]
    if not 0 < aug.scale_range[0] <= aug.scale_range[1]:
        problems.append("augment.scale_range must be [low, high] with 0 < low <= high")
    if not 4 <= aug.downscale_side <= 40:
        problems.append("augment.downscale_side must be in [4, 40]")
    if aug.blur_sigma < 0.3:
        problems.append("augment.blur_sigma must be >= 0.3")
    return problems


def _coerce(value: Any, tp: Any, where: str, current: Any = None) -> Any:
    """``value`` as type ``tp``, or a RecipeError saying what the field accepts."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (tp,) = [a for a in args if a is not type(None)]
        return _coerce(value, tp, where, current)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where, base=current)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        choices = [e.value for e in tp]
        if value not in choices:
            raise RecipeError(f"{where}: {value!r} is not one of {', '.join(map(str, choices))}")
        return tp(value)
    if origin is tuple:
        return _coerce_tuple(value, args, where)
    if origin is dict:
        if not isinstance(value, Mapping):
            raise RecipeError(f"{where}: expected a mapping such as {{photos: 2.0}}, got {value!r}")
        key_type, value_type = args
        return {
            _coerce_scalar(k, key_type, where): _coerce(v, value_type, f"{where}.{k}")
            for k, v in value.items()
        }
    return _coerce_scalar(value, tp, where)


def _coerce_tuple(value: Any, args: tuple, where: str) -> tuple:
    if isinstance(value, str):
        value = [yaml.safe_load(v) for v in value.split(",") if v.strip()]
    if not isinstance(value, list | tuple):
        raise RecipeError(f"{where}: expected a list, got {value!r}")
    if len(args) == 2 and args[1] is Ellipsis:
        item_types = [args[0]] * len(value)
    else:
        item_types = list(args)
        if len(value) != len(item_types):
            raise RecipeError(f"{where}: expected {len(item_types)} values, got {len(value)}")
    return tuple(_coerce(v, t, where) for v, t in zip(value, item_types, strict=True))


def _coerce_scalar(value: Any, tp: Any, where: str) -> Any:
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise RecipeError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():  # JSON between KFP steps: 40 -> 40.0
            return int(value)
        raise RecipeError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise RecipeError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise RecipeError(f"{where}: expected a string, got {value!r}")
    raise RecipeError(f"{where}: unsupported field type {tp}")  # pragma: no cover - a new field type
