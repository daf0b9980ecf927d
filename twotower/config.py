"""Start-up validation of the composed config (torchtune-style): every `_target_` node's keys must be
arguments of its target, with values of the annotated type, so a typo fails before any work starts."""

from __future__ import annotations

import inspect
import logging
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Union

from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A config key or value is wrong; the message names the key and says how to fix it."""


def check_k_values(values: Iterable[Any], key: str = "k_values") -> list[int]:
    """The ranking cutoffs ``values`` sorted and de-duplicated; raises naming ``key`` unless each is an int >= 1.

    Used at start-up by `python -m twotower.evaluate`; the module and the core metric keep their own
    Hydra-free check, since this module imports Hydra.
    """
    items = list(values) if values is not None else []
    if not items or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in items):
        raise ConfigError(f"{key} must be a non-empty list of integers >= 1, e.g. [10, 50, 100]; got {items}")
    return sorted(set(items))


MATMUL_PRECISIONS = ("highest", "high", "medium")


def check_matmul_precision(value: Any, key: str = "float32_matmul_precision") -> str:
    """``value`` if torch.set_float32_matmul_precision takes it; torch itself only warns and ignores a typo."""
    if value not in MATMUL_PRECISIONS:
        raise ConfigError(f"{key} must be one of {', '.join(MATMUL_PRECISIONS)}; got {value!r}")
    return value


def check_epoch_budget(value: Any, key: str = "epoch_budget_targets") -> int | None:
    """``value`` if it is a number of training targets (an int >= 1) or None (train ``trainer.max_epochs``)."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ConfigError(
            f"{key} must be a number of training targets >= 1 (e.g. 1100000), or null to train exactly "
            f"trainer.max_epochs; got {value!r}"
        )
    return value


def epochs_for_budget(
    budget: int | None, train_targets: int, min_epochs: int | None, max_epochs: int | None
) -> int | None:
    """Epochs that show the model about ``budget`` training targets in all, within [min_epochs, max_epochs].

    A small shop gets more passes over its data than a large one (early stopping may still end a run sooner);
    ``budget`` None, or no training targets, gives ``max_epochs`` unchanged (None or -1: Lightning's own meaning).
    """
    if budget is None or train_targets < 1:
        return max_epochs
    epochs = max(min_epochs or 1, round(budget / train_targets))
    return epochs if max_epochs is None or max_epochs < 0 else min(max_epochs, epochs)


def _matches(value: Any, annotation: Any) -> bool:
    if annotation is Any or annotation is inspect.Parameter.empty:
        return True
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(annotation))
    if annotation is None or annotation is type(None):
        return value is None
    if origin is typing.Literal:
        return value in typing.get_args(annotation)
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    target = origin or annotation
    if target in (list, tuple, Sequence, typing.Sequence):
        return isinstance(value, list | tuple | ListConfig)
    if target in (dict, Mapping, typing.Mapping):
        return isinstance(value, dict | DictConfig)
    if target in (Callable, typing.Callable) or (
        isinstance(target, type) and target.__module__ == "collections.abc"
    ):
        return True  # callables come from _partial_ nodes, checked as their own nodes
    return True  # objects (nested _target_ nodes) and anything exotic are checked where they are built


def _type_hints(target: Any) -> dict[str, Any]:
    function = target.__init__ if inspect.isclass(target) else target
    try:
        return typing.get_type_hints(function)
    except Exception:  # noqa: BLE001 - unresolvable annotations: skip type checks for this target
        return {}


def _check_node(node: DictConfig, path: str, provided_at_runtime: Mapping[str, set[str]]) -> None:
    target_name = node.get("_target_")
    try:
        target = get_object(target_name)
    except Exception as error:  # noqa: BLE001
        raise ConfigError(f"{path}._target_={target_name!r} cannot be imported: {error}") from error
    signature = inspect.signature(target)
    params = signature.parameters
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    hints = _type_hints(target)
    is_partial = bool(node.get("_partial_", False))
    for key in node:
        if str(key).startswith("_"):
            continue
        full = f"{path}.{key}" if path else str(key)
        if key not in params and not accepts_any:
            valid = ", ".join(p for p in params if p not in ("self", "args", "kwargs"))
            raise ConfigError(f"config key '{full}' is not an argument of {target_name}; valid keys: {valid}")
        if OmegaConf.is_missing(node, key):
            raise ConfigError(f"config key '{full}' is required but not set (???); set it with {full}=...")
        value = node[key]
        if isinstance(value, DictConfig) and "_target_" in value:
            continue
        plain = (
            OmegaConf.to_container(value, resolve=True)
            if isinstance(value, DictConfig | ListConfig)
            else value
        )
        if plain is None and key in hints and not _matches(None, hints[key]):
            raise ConfigError(f"config key '{full}' is required but not set (null); set it with {full}=...")
        if key in hints and not _matches(plain, hints[key]):
            raise ConfigError(
                f"config key '{full}' should be {hints[key]}, got {type(plain).__name__} {plain!r}"
            )
    if not is_partial:
        given = {str(k) for k in node if not str(k).startswith("_")} | provided_at_runtime.get(path, set())
        for name, param in params.items():
            if name == "self" or param.kind in (
                inspect.Parameter.VAR_KEYWORD,
                inspect.Parameter.VAR_POSITIONAL,
            ):
                continue
            if param.default is inspect.Parameter.empty and name not in given:
                raise ConfigError(f"config node '{path}' ({target_name}) lacks required key '{name}'")


def validate_config(cfg: DictConfig, provided_at_runtime: Mapping[str, set[str]] | None = None) -> None:
    """Check every `_target_` node in cfg; `provided_at_runtime` names arguments the entry point passes itself."""
    provided = provided_at_runtime or {}

    def walk(node: Any, path: str) -> None:
        if isinstance(node, DictConfig | ListConfig) and (node._is_none() or node._is_missing()):
            return
        if isinstance(node, DictConfig):
            if "_target_" in node:
                _check_node(node, path, provided)
            for key in node:
                if not OmegaConf.is_missing(node, key) and not str(key).startswith("_"):
                    child = node._get_node(key)
                    if isinstance(child, DictConfig | ListConfig):
                        walk(child, f"{path}.{key}" if path else str(key))
        elif isinstance(node, ListConfig):
            for i, child in enumerate(node):
                walk(child, f"{path}[{i}]")

    walk(cfg, "")
