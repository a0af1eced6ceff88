"""Nested state (an optimizer's ``state_dict``) as JSON plus a flat dict of tensors, and back.

Used so that checkpoints hold only ``safetensors`` and JSON: ``torch.save`` would pickle, and reading a
pickle from a run directory can run arbitrary code.
"""

from __future__ import annotations

from typing import Any

import torch

_TENSOR, _TUPLE, _ITEMS = "__tensor__", "__tuple__", "__items__"


def split_tensors(tree: Any, prefix: str = "t") -> tuple[Any, dict[str, torch.Tensor]]:
    """``(json_tree, tensors)``: every tensor of ``tree`` replaced by a reference into ``tensors``.

    Tensors are copied to contiguous CPU memory (safetensors refuses views and shared storage);
    tuples and mappings with non-string keys are encoded so that :func:`join_tensors` restores them.

    Raises:
        TypeError: a value is neither a tensor, a container, nor a JSON scalar.
    """
    tensors: dict[str, torch.Tensor] = {}

    def walk(node: Any, path: str) -> Any:
        if isinstance(node, torch.Tensor):
            tensors[path] = node.detach().to("cpu", copy=True).contiguous()
            return {_TENSOR: path}
        if isinstance(node, tuple):
            return {_TUPLE: [walk(v, f"{path}.{i}") for i, v in enumerate(node)]}
        if isinstance(node, list):
            return [walk(v, f"{path}.{i}") for i, v in enumerate(node)]
        if isinstance(node, dict):
            if all(isinstance(k, str) for k in node):
                return {k: walk(v, f"{path}.{k}") for k, v in node.items()}
            return {_ITEMS: [[k, walk(v, f"{path}.{k}")] for k, v in node.items()]}
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        raise TypeError(f"cannot store {type(node).__name__} at {path} in a checkpoint")

    return walk(tree, prefix), tensors


def join_tensors(tree: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`split_tensors`."""
    if isinstance(tree, list):
        return [join_tensors(v, tensors) for v in tree]
    if isinstance(tree, dict):
        if _TENSOR in tree:
            return tensors[tree[_TENSOR]]
        if _TUPLE in tree:
            return tuple(join_tensors(v, tensors) for v in tree[_TUPLE])
        if _ITEMS in tree:
            return {k: join_tensors(v, tensors) for k, v in tree[_ITEMS]}
        return {k: join_tensors(v, tensors) for k, v in tree.items()}
    return tree
