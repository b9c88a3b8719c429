"""Generic batching of streaming states: one stack / unstack / select for every state type.

A *State* is a frozen dataclass whose fields are

* tensors that carry a batch dimension, declared ONCE with :func:`state_field` (its metadata key
  ``"batch_dim"``); a cache that grows with its stream also declares the dimension along which
  it grows (``ragged_dim``): its size may then differ between streams, its valid entries are the
  last ones (right-aligned), and stacking left-pads each stream's tensor with zeros to the
  largest size (the owner masks the padding with its per-stream counts and drops it again);
* nested State dataclasses, or tuples of them (e.g. one state per layer);
* ``None`` (an absent optional cache: it stays ``None``);
* per-stream Python objects, declared with :func:`stream_field`: a tuple with one entry per
  stream (e.g. the hypotheses of a beam search, or a stream's hotword graph), which stacking
  concatenates, unstacking splits into 1-tuples and selection indexes;
* plain Python values (ints, strings) that are the same for every stream, e.g. a cache size.

Per-stream progress (frames processed, number of valid cached frames) is stored in ordinary
``(B,)`` tensor fields, so streams at different positions can share one batch: the models read
those counts to mask what is not valid.

Shape legend: B batch (streams).

Example:
    >>> @dataclass(frozen=True)
    ... class CacheState:
    ...     keys: Tensor = state_field(batch_dim=1)  # (L, B, T, D)
    ...     cache_len: Tensor = state_field(batch_dim=0)  # (B,)
    >>> batched = stack_states([stream_a, stream_b])
    >>> stream_a2, stream_b2 = unstack_states(batched)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, TypeVar

import torch
from torch import Tensor

__all__ = [
    "BATCH_DIM_KEY",
    "RAGGED_DIM_KEY",
    "is_stream_field",
    "state_batch_size",
    "select_states",
    "stack_states",
    "state_field",
    "stream_field",
    "unstack_states",
]

#: Field metadata key that declares the batch dimension of a tensor field.
BATCH_DIM_KEY = "batch_dim"
#: Field metadata key that declares the dimension along which a tensor field's size may differ
#: between streams (a growing, right-aligned cache).
RAGGED_DIM_KEY = "ragged_dim"
#: Field metadata key that declares a tuple with one Python object per stream.
PER_STREAM_KEY = "per_stream"

S = TypeVar("S")


def state_field(batch_dim: int, ragged_dim: int | None = None, **kwargs: Any) -> Any:
    """A dataclass field for a tensor whose dimension ``batch_dim`` indexes streams.

    Args:
        batch_dim: the batch (stream) dimension of the tensor stored in this field.
        ragged_dim: a dimension whose size may differ between streams (a cache that grows with
            its stream, valid entries last): :func:`stack_states` left-pads with zeros to the
            largest size along it; None: every stream has the same shape.
        **kwargs: passed on to :func:`dataclasses.field` (e.g. ``default=None``).
    """
    metadata = dict(kwargs.pop("metadata", {}) or {})
    metadata[BATCH_DIM_KEY] = batch_dim
    if ragged_dim is not None:
        if ragged_dim == batch_dim:
            raise ValueError(f"state_field: ragged_dim={ragged_dim} is the batch dimension")
        metadata[RAGGED_DIM_KEY] = ragged_dim
    return dataclasses.field(metadata=metadata, **kwargs)


def stream_field(**kwargs: Any) -> Any:
    """A dataclass field holding a tuple with one Python object per stream.

    The objects are never looked into: :func:`stack_states` concatenates the tuples,
    :func:`unstack_states` gives each stream its 1-tuple and :func:`select_states` indexes them
    (so they should be immutable, as the states are).

    Args:
        **kwargs: passed on to :func:`dataclasses.field`.
    """
    metadata = dict(kwargs.pop("metadata", {}) or {})
    metadata[PER_STREAM_KEY] = True
    return dataclasses.field(metadata=metadata, **kwargs)


def is_stream_field(f: dataclasses.Field) -> bool:
    """Whether ``f`` was declared with :func:`stream_field`."""
    return bool(f.metadata.get(PER_STREAM_KEY))


def _check_state(state: Any) -> None:
    if not (dataclasses.is_dataclass(state) and not isinstance(state, type)):
        raise TypeError(f"expected a State dataclass instance, got {type(state).__name__}")


def _batch_dim(state: Any, f: dataclasses.Field) -> int:
    if BATCH_DIM_KEY not in f.metadata:
        raise TypeError(
            f"{type(state).__name__}.{f.name} is a tensor but declares no batch dimension; "
            f"declare it with state_field(batch_dim=...)"
        )
    return int(f.metadata[BATCH_DIM_KEY])


def _is_state(value: Any) -> bool:
    return dataclasses.is_dataclass(value) and not isinstance(value, type)


def state_batch_size(state: Any) -> int:
    """Number of streams in ``state`` (read from its first batched tensor)."""
    _check_state(state)
    for f in dataclasses.fields(state):
        value = getattr(state, f.name)
        if is_stream_field(f):
            return len(value)
        if isinstance(value, Tensor):
            return value.shape[_batch_dim(state, f)]
        if _is_state(value):
            return state_batch_size(value)
        if isinstance(value, tuple) and value and _is_state(value[0]):
            return state_batch_size(value[0])
    raise ValueError(f"{type(state).__name__} holds no batched tensor")


def _map_fields(states: Sequence[Any], tensor_fn, tuple_fn, name: str) -> Any:
    """Builds one state from aligned ``states`` applying ``tensor_fn(tensors, batch_dim,
    ragged_dim)`` to tensor fields and ``tuple_fn(tuples)`` to per-stream fields."""
    first = states[0]
    _check_state(first)
    for other in states[1:]:
        if type(other) is not type(first):
            raise TypeError(
                f"{name}: cannot combine {type(first).__name__} with {type(other).__name__}"
            )
    values = {}
    for f in dataclasses.fields(first):
        items = [getattr(s, f.name) for s in states]
        where = f"{type(first).__name__}.{f.name}"
        head = items[0]
        if is_stream_field(f):
            if any(not isinstance(item, tuple) for item in items):
                raise TypeError(f"{name}: per-stream field {where} must hold a tuple")
            values[f.name] = tuple_fn(items)
        elif isinstance(head, Tensor):
            dim = _batch_dim(first, f)
            try:
                values[f.name] = tensor_fn(items, dim, f.metadata.get(RAGGED_DIM_KEY))
            except RuntimeError as err:
                raise ValueError(f"{name}: field {where}: {err}") from err
        elif _is_state(head):
            values[f.name] = _map_fields(items, tensor_fn, tuple_fn, name)
        elif isinstance(head, tuple) and head and _is_state(head[0]):
            if any(len(item) != len(head) for item in items):
                raise ValueError(f"{name}: field {where} has tuples of different lengths")
            values[f.name] = tuple(
                _map_fields([item[i] for item in items], tensor_fn, tuple_fn, name)
                for i in range(len(head))
            )
        else:
            if any(item is not head and item != head for item in items):
                raise ValueError(
                    f"{name}: unbatched field {where} differs between states: {items!r}"
                )
            values[f.name] = head
    return type(first)(**{f.name: values[f.name] for f in dataclasses.fields(first) if f.init})


def _left_pad(tensor: Tensor, dim: int, size: int) -> Tensor:
    """``tensor`` with zeros prepended along ``dim`` up to ``size``."""
    missing = size - tensor.shape[dim]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


def _concat(items: list[Tensor], dim: int, ragged_dim: int | None) -> Tensor:
    """Concatenates along ``dim``, first left-padding a ragged dimension to the largest size."""
    if ragged_dim is not None:
        size = max(item.shape[ragged_dim] for item in items)
        items = [_left_pad(item, ragged_dim, size) for item in items]
    return torch.cat(items, dim=dim)


def stack_states(states: Sequence[S]) -> S:
    """Concatenates states along their batch dimensions (bit-exact, any batch sizes).

    Tensors of a ragged field (``state_field(ragged_dim=...)``) are first left-padded with
    zeros to the largest size along that dimension.

    Args:
        states: states of the same type; each may hold one or several streams.

    Returns:
        One state holding all streams in order.

    Raises:
        ValueError: on an empty list, mismatching shapes or differing unbatched values.
    """
    if len(states) == 0:
        raise ValueError("stack_states: got an empty list of states")
    if len(states) == 1:
        return states[0]
    return _map_fields(
        list(states),
        _concat,
        lambda tuples: tuple(x for t in tuples for x in t),
        "stack_states",
    )


def unstack_states(
    state: S, copy: bool = False, ragged_sizes: Sequence[int] | None = None
) -> list[S]:
    """Splits a batched state into one state per stream (each keeps a batch dimension of 1).

    Args:
        state: a batched state.
        copy: give each stream copies of its slices. By default they are views of ``state``'s
            tensors (states are never modified in place), and a view keeps the whole batched
            tensor alive: a stream kept at rest between batches would hold every other
            stream's memory of that batch.
        ragged_sizes: per stream, how many entries of each ragged dimension
            (``state_field(ragged_dim=...)``) it keeps: the last ones, its valid entries
            (stacking's left padding is dropped, in the same slice, before any copy); None:
            every stream keeps the batch's size.

    Raises:
        ValueError: when ``ragged_sizes`` does not give one size within the batch's per stream.
    """
    batch_size = state_batch_size(state)
    if ragged_sizes is not None and len(ragged_sizes) != batch_size:
        raise ValueError(f"unstack_states: {len(ragged_sizes)} ragged_sizes for {batch_size} "
                         f"streams")

    def take(tensor: Tensor, dim: int, ragged: int | None, i: int) -> Tensor:
        part = tensor.narrow(dim, i, 1)
        if ragged is not None and ragged_sizes is not None:
            size, keep = part.shape[ragged], int(ragged_sizes[i])
            if not 0 <= keep <= size:
                raise ValueError(f"ragged_sizes[{i}] = {keep} is not within [0, {size}]")
            part = part.narrow(ragged, size - keep, keep)
        return part.clone() if copy else part

    return [
        _map_fields(
            [state],
            lambda items, dim, ragged, i=i: take(items[0], dim, ragged, i),
            lambda tuples, i=i: (tuples[0][i],),
            "unstack_states",
        )
        for i in range(batch_size)
    ]


def select_states(state: S, indices: Sequence[int] | Tensor) -> S:
    """Selects (and reorders / repeats) streams of a batched state.

    Args:
        state: a batched state.
        indices: stream indices, a list or a 1-D int tensor.
    """
    batch_size = state_batch_size(state)
    index = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
    if index.numel() and (int(index.min()) < -batch_size or int(index.max()) >= batch_size):
        raise IndexError(
            f"select_states: indices {index.tolist()} out of range for {batch_size} streams"
        )
    index = index % max(batch_size, 1)

    def take(items: list[Tensor], dim: int, _ragged: int | None) -> Tensor:
        return items[0].index_select(dim, index.to(items[0].device))

    positions = index.tolist()
    return _map_fields(
        [state], take, lambda tuples: tuple(tuples[0][i] for i in positions), "select_states"
    )
