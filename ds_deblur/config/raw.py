"""Dotted paths (``TRAIN.OPTIM.LR``) in raw config dicts, before they become the schema's dataclasses."""
from __future__ import annotations

from typing import Any

from ds_deblur.errors import ConfigError


def deep_copy(data: dict) -> dict:
    return {k: deep_copy(v) if isinstance(v, dict) else v for k, v in data.items()}


def set_path(raw: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = raw
    for part in parents:
        if node.get(part) is None:
            node[part] = {}
        node = node[part]
        if not isinstance(node, dict):
            raise ConfigError(f"{dotted}: {part} is not a section")
    node[leaf] = value


def _parent(raw: dict, dotted: str) -> tuple[Any, str]:
    """The section holding ``dotted`` (None when a section on the way is missing) and the key's last part."""
    *parents, leaf = dotted.split(".")
    node: Any = raw
    for part in parents:
        node = node.get(part)
        if not isinstance(node, dict):
            return None, leaf
    return node, leaf


def pop_path(raw: dict, dotted: str) -> tuple[bool, Any]:
    node, leaf = _parent(raw, dotted)
    return (True, node.pop(leaf)) if node is not None and leaf in node else (False, None)


def get_path(raw: dict, dotted: str) -> tuple[bool, Any]:
    node, leaf = _parent(raw, dotted)
    return (True, node[leaf]) if node is not None and leaf in node else (False, None)
