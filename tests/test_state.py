"""Generic state stack / unstack / select: bit-exact round trips for nested states."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode

from asr.state import (
    select_states,
    stack_states,
    state_batch_size,
    state_field,
    stream_field,
    unstack_states,
)


@dataclass(frozen=True)
class Inner:
    cache: Tensor = state_field(batch_dim=1)  # (L, B, T)
    count: Tensor = state_field(batch_dim=0)  # (B,)


@dataclass(frozen=True)
class Outer:
    inner: Inner
    layers: tuple[Inner, ...]
    frames: Tensor = state_field(batch_dim=2)  # (2, 3, B, D)
    optional: Tensor | None = state_field(batch_dim=0, default=None)
    size: int = 4


def _random_state(batch: int, with_optional: bool = True) -> Outer:
    def inner() -> Inner:
        return Inner(cache=torch.randn(3, batch, 5), count=torch.randint(0, 9, (batch,)))

    return Outer(
        inner=inner(),
        layers=(inner(), inner()),
        frames=torch.randn(2, 3, batch, 7),
        optional=torch.randn(batch, 2) if with_optional else None,
    )


def _flatten(state) -> list:
    out = []
    for name in state.__dataclass_fields__:
        value = getattr(state, name)
        if isinstance(value, tuple):
            for item in value:
                out.extend(_flatten(item))
        elif hasattr(value, "__dataclass_fields__"):
            out.extend(_flatten(value))
        else:
            out.append(value)
    return out


def _assert_same(a, b) -> None:
    assert type(a) is type(b)
    for x, y in zip(_flatten(a), _flatten(b), strict=True):
        if isinstance(x, Tensor):
            assert x.shape == y.shape and x.dtype == y.dtype
            assert torch.equal(x, y)
        else:
            assert x == y


def test_unstack_then_stack_is_bit_exact():
    state = _random_state(4)
    parts = unstack_states(state)
    assert len(parts) == 4
    assert all(state_batch_size(p) == 1 for p in parts)
    # stream 2 of the batch is exactly index 2 of each batched dimension
    assert torch.equal(parts[2].frames, state.frames[:, :, 2:3])
    assert torch.equal(parts[2].layers[1].cache, state.layers[1].cache[:, 2:3])
    assert torch.equal(parts[2].inner.count, state.inner.count[2:3])
    _assert_same(stack_states(parts), state)


def test_stack_then_unstack_is_bit_exact_and_handles_none():
    streams = [_random_state(1, with_optional=False) for _ in range(3)]
    batched = stack_states(streams)
    assert batched.optional is None and batched.size == 4
    assert state_batch_size(batched) == 3
    for original, back in zip(streams, unstack_states(batched), strict=True):
        _assert_same(original, back)


def test_stack_accepts_multi_stream_states():
    a, b = _random_state(2), _random_state(3)
    batched = stack_states([a, b])
    assert state_batch_size(batched) == 5
    _assert_same(select_states(batched, [0, 1]), a)
    _assert_same(select_states(batched, torch.tensor([2, 3, 4])), b)


def test_select_reorders_and_repeats():
    state = _random_state(4)
    chosen = select_states(state, [3, 0, 0])
    parts = unstack_states(state)
    _assert_same(chosen, stack_states([parts[3], parts[0], parts[0]]))
    assert torch.equal(chosen.frames[:, :, 0], state.frames[:, :, 3])


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="empty"):
        stack_states([])
    with pytest.raises(ValueError, match="Outer.size"):
        stack_states([_random_state(1), Outer(**{**_random_state(1).__dict__, "size": 5})])
    with pytest.raises(IndexError, match="out of range"):
        select_states(_random_state(2), [2])

    @dataclass(frozen=True)
    class Undeclared:
        cache: Tensor = field(default_factory=lambda: torch.zeros(2, 3))

    with pytest.raises(TypeError, match="Undeclared.cache"):
        unstack_states(Undeclared())
    with pytest.raises(ValueError, match="Inner.cache"):
        stack_states([Inner(torch.zeros(3, 1, 5), torch.zeros(1)),
                      Inner(torch.zeros(3, 1, 6), torch.zeros(1))])


def test_encoder_state_round_trip():
    from asr.encoders import EncoderConfig, build_encoder

    cfg = EncoderConfig(d_model=16, num_layers=2, num_heads=2, ff_dim=32, conv_kernel_size=3,
                        subsampling_channels=4, dropout=0.0, attention_dropout=0.0)
    encoder = build_encoder(cfg, 10).eval()
    state = encoder.init_state(3, left_chunks=2, chunk_size=2)
    feats = torch.randn(3, 20, 10)
    _, _, state = encoder.forward_chunk(feats, torch.tensor([20, 13, 5]), state)
    _assert_same(stack_states(unstack_states(state)), state)
    _assert_same(select_states(state, [2, 1, 0]), stack_states(unstack_states(state)[::-1]))


@dataclass(frozen=True)
class WithObjects:
    """A state with a per-stream Python field beside a tensor."""

    count: Tensor = state_field(batch_dim=0)  # (B,)
    beams: tuple = stream_field()  # one Python object per stream


def test_per_stream_objects_stack_unstack_and_select_with_their_stream():
    a = WithObjects(torch.tensor([1]), (("a", 1),))
    b = WithObjects(torch.tensor([2, 3]), (("b", 2), ("c", 3)))
    both = stack_states([a, b])
    assert both.beams == (("a", 1), ("b", 2), ("c", 3)) and state_batch_size(both) == 3
    split = unstack_states(both)
    assert [s.beams for s in split] == [(("a", 1),), (("b", 2),), (("c", 3),)]
    assert [s.count.tolist() for s in split] == [[1], [2], [3]]
    picked = select_states(both, [2, 0, 2])
    assert picked.beams == (("c", 3), ("a", 1), ("c", 3)) and picked.count.tolist() == [3, 1, 3]


@dataclass(frozen=True)
class OnlyObjects:
    beams: tuple = stream_field()


def test_a_state_of_per_stream_objects_alone_has_a_batch_size():
    state = stack_states([OnlyObjects((1,)), OnlyObjects((2,))])
    assert state_batch_size(state) == 2 and unstack_states(state)[1].beams == (2,)
    with pytest.raises(TypeError, match="must hold a tuple"):
        stack_states([OnlyObjects((1,)), OnlyObjects([2])])


@dataclass(frozen=True)
class Growing:
    """A cache that grows with its stream (time dim 2, right-aligned) beside a fixed field."""

    cache: Tensor = state_field(batch_dim=0, ragged_dim=2)  # (B, H, T, D)
    fixed: Tensor = state_field(batch_dim=0)  # (B, D)


def test_a_ragged_field_stacks_streams_of_different_sizes_left_padded():
    young = Growing(torch.randn(1, 2, 1, 3) + 1, torch.randn(1, 3))
    old = Growing(torch.randn(2, 2, 4, 3) + 1, torch.randn(2, 3))
    both = stack_states([young, old, young])
    assert both.cache.shape == (4, 2, 4, 3)
    assert torch.equal(both.cache[0, :, 3:], young.cache[0]) and not both.cache[0, :, :3].any()
    assert torch.equal(both.cache[1:3], old.cache) and torch.equal(both.cache[3], both.cache[0])
    assert torch.equal(unstack_states(both)[2].cache, old.cache[1:])
    assert torch.equal(select_states(both, [0]).cache[..., 3:, :], young.cache)
    # Only the ragged dimension may differ.
    with pytest.raises(ValueError, match="Growing.cache"):
        stack_states([young, Growing(torch.randn(1, 3, 1, 3), torch.randn(1, 3))])
    with pytest.raises(ValueError, match="Growing.fixed"):
        stack_states([young, Growing(torch.randn(1, 2, 1, 3), torch.randn(1, 4))])
    with pytest.raises(ValueError, match="ragged_dim"):
        state_field(batch_dim=1, ragged_dim=1)


def test_unstacking_with_ragged_sizes_keeps_each_streams_last_entries_in_one_copy():
    """ragged_sizes drops stacking's left padding while splitting: each stream keeps the last
    entries of its ragged fields, in a tensor of exactly that size; the other fields are whole."""
    young = Growing(torch.randn(1, 2, 1, 3) + 1, torch.randn(1, 3))
    old = Growing(torch.randn(2, 2, 4, 3) + 1, torch.randn(2, 3))
    both = stack_states([young, old, young])
    parts = unstack_states(both, copy=True, ragged_sizes=[1, 4, 2, 0])
    assert torch.equal(parts[0].cache, young.cache) and torch.equal(parts[3].fixed, young.fixed)
    assert torch.equal(parts[1].cache, old.cache[:1]) and parts[3].cache.shape == (1, 2, 0, 3)
    assert torch.equal(parts[2].cache, old.cache[1:, :, 2:])
    for part in parts:
        cache = part.cache
        assert cache.untyped_storage().nbytes() == cache.numel() * cache.element_size()
    views = unstack_states(both, ragged_sizes=[1, 4, 2, 0])
    assert views[2].cache.untyped_storage().data_ptr() == both.cache.untyped_storage().data_ptr()
    with pytest.raises(ValueError, match="3 ragged_sizes for 4 streams"):
        unstack_states(both, ragged_sizes=[1, 4, 4])
    with pytest.raises(ValueError, match=r"ragged_sizes\[1\] = 5 is not within \[0, 4\]"):
        unstack_states(both, ragged_sizes=[1, 5, 4, 1])


class _HostReadsAndWrites(TorchDispatchMode):
    """Counts the tensor values read back to the host (``.item()``, ``int()``: a device sync
    each) and the bytes of the new tensors the ops make (views excluded)."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is torch.ops.aten._local_scalar_dense.default:
            self.reads += 1
        inputs = {a.untyped_storage().data_ptr() for a in args if isinstance(a, Tensor)}
        for tensor in out if isinstance(out, (tuple, list)) else [out]:
            if (isinstance(tensor, Tensor) and tensor.numel()
                    and tensor.untyped_storage().data_ptr() not in inputs):
                self.bytes += tensor.numel() * tensor.element_size()
        return out


def test_an_encoder_batch_splits_with_one_read_of_its_counts_and_one_copy_per_cache():
    """With unlimited left context, splitting B streams of different ages reads the batch's
    cache counts once (not once per stream and layer: each read is a device sync), and writes
    no byte it does not keep (each stream's valid frames are sliced before the one copy, not
    copied with the batch's padding and then cut); the streams are the generic split's, trimmed."""
    from asr.encoders import EncoderConfig, build_encoder

    cfg = EncoderConfig(d_model=16, num_layers=3, num_heads=2, ff_dim=32, conv_kernel_size=3,
                        subsampling_channels=4, dropout=0.0, attention_dropout=0.0, causal=True)
    encoder = build_encoder(cfg, 10).eval()
    with torch.no_grad():
        states = []
        for frames in (51, 27, 11, 3):
            state = encoder.init_state(1, left_chunks=-1, chunk_size=2)
            _, _, state = encoder.forward_chunk(torch.randn(1, frames, 10),
                                                torch.tensor([frames]), state)
            states.append(state)
        _, _, batch = encoder.forward_chunk(torch.randn(4, 8, 10), torch.full((4,), 8),
                                            stack_states(states))
        with _HostReadsAndWrites() as counter:
            streams = encoder.unstack_state(batch)
    assert batch.attn_cache_len.tolist() == [14, 8, 4, 2]
    assert counter.reads <= 1
    kept = sum(t.numel() * t.element_size() for s in streams for t in _flatten(s)
               if isinstance(t, Tensor))
    assert counter.bytes == kept
    for stream, generic, size in zip(streams, unstack_states(batch), (14, 8, 4, 2)):
        assert stream.layers[0].key.shape[2] == size
        trimmed = [t[:, :, -size:] if t.dim() == 4 else t for t in _flatten(generic)
                   if isinstance(t, Tensor)]
        got = [t for t in _flatten(stream) if isinstance(t, Tensor)]
        assert all(torch.equal(a, b) for a, b in zip(got, trimmed, strict=True))


def test_encoder_states_of_unlimited_left_context_round_trip_and_keep_their_limit():
    """Streams of different ages stack (their growing caches left-padded) and split again;
    a state with a bounded cache does not stack with an unbounded one."""
    from asr.encoders import EncoderConfig, build_encoder

    cfg = EncoderConfig(d_model=16, num_layers=2, num_heads=2, ff_dim=32, conv_kernel_size=3,
                        subsampling_channels=4, dropout=0.0, attention_dropout=0.0, causal=True)
    encoder = build_encoder(cfg, 10).eval()
    state = encoder.init_state(3, left_chunks=-1, chunk_size=2)
    assert state.cache_limit is None and state.layers[0].key.shape[2] == 0
    _, _, state = encoder.forward_chunk(torch.randn(3, 20, 10), torch.tensor([20, 13, 5]), state)
    old, young, fresh = unstack_states(state)
    _, _, old = encoder.forward_chunk(torch.randn(1, 8, 10), torch.tensor([8]), old)
    assert old.layers[0].key.shape[2] == 6 and old.attn_cache_len.tolist() == [6]
    mixed = stack_states([fresh, old, young])
    assert mixed.layers[1].value.shape[2] == 6
    _assert_same(unstack_states(mixed)[1], old)
    bounded = encoder.init_state(1, left_chunks=2, chunk_size=2)
    with pytest.raises(ValueError, match="cache_limit"):
        stack_states([bounded, fresh])


def test_unstacked_copies_share_no_memory_with_the_batch():
    """copy=True: each stream's tensors are its own, so a stream at rest does not keep the
    batched tensors (every other stream's memory) alive; the values are the views'."""
    state = _random_state(3)
    views = unstack_states(state)
    copies = unstack_states(state, copy=True)
    for view, copy in zip(views, copies):
        _assert_same(copy, view)
        assert view.frames.untyped_storage().data_ptr() == state.frames.untyped_storage().data_ptr()
        for tensor in _flatten(copy):
            if isinstance(tensor, Tensor):
                assert tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size()


def test_an_encoder_stream_split_from_a_batch_holds_only_its_own_cache():
    """After a batch with an older stream, a young stream with unlimited left context keeps
    its own valid frames (not the padding up to the old one's), in tensors of its own; with a
    bounded cache it keeps its fixed-size cache, also no view of the batch. Each continues
    exactly as the generic split would."""
    from asr.encoders import EncoderConfig, build_encoder

    cfg = EncoderConfig(d_model=16, num_layers=2, num_heads=2, ff_dim=32, conv_kernel_size=3,
                        subsampling_channels=4, dropout=0.0, attention_dropout=0.0, causal=True)
    encoder = build_encoder(cfg, 10).eval()
    for left_chunks, young_size, old_len in ((-1, 2, 10), (3, 6, 6)):
        state = encoder.init_state(2, left_chunks=left_chunks, chunk_size=2)
        _, _, state = encoder.forward_chunk(torch.randn(2, 43, 10), torch.tensor([43, 11]), state)
        old, young = encoder.unstack_state(state)
        assert young.attn_cache_len.tolist() == [2] and old.attn_cache_len.tolist() == [old_len]
        for layer in young.layers:
            for cache in (layer.key, layer.value, layer.conv):
                assert cache.untyped_storage().nbytes() == cache.numel() * cache.element_size()
            assert layer.key.shape[2] == young_size
        pending = young.subsampling.cache
        assert pending.untyped_storage().nbytes() == pending.numel() * pending.element_size()
        feats = torch.randn(1, 8, 10)
        expected, _, _ = encoder.forward_chunk(feats, torch.tensor([8]), unstack_states(state)[1])
        got, _, _ = encoder.forward_chunk(feats, torch.tensor([8]), young)
        assert torch.equal(got, expected)
