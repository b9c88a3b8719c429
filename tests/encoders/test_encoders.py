"""Conformer and Transformer: shapes, streaming == full under the same chunk mask, invariance to
batch composition and padding, dynamic chunk training, state handling."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch

from asr.config import load_config
from asr.encoders import build_encoder
from asr.encoders.attention import RelativePositions
from asr.encoders.base import Encoder, EncoderConfig, StreamingEncoder
from asr.encoders.layers import ConvolutionModule
from asr.encoders.subsampling import RECEPTIVE_FIELD, subsampled_length
from asr.experiment import ExperimentConfig
from asr.state import select_states, stack_states, unstack_states

FEAT_DIM = 20
KINDS = ["conformer", "transformer"]


def _tiny(kind: str, **overrides) -> EncoderConfig:
    base = dict(kind=kind, d_model=32, num_layers=2, num_heads=4, ff_dim=64, conv_kernel_size=5,
                subsampling_channels=8, dropout=0.0, attention_dropout=0.0)
    base.update(overrides)
    return EncoderConfig(**base)


def _encoder(kind: str, **overrides):
    torch.manual_seed(0)
    return build_encoder(_tiny(kind, **overrides), FEAT_DIM).eval()


def _batch(lens: list[int]):
    feats = torch.randn(len(lens), max(lens), FEAT_DIM)
    for b, n in enumerate(lens):
        feats[b, n:] = 0.0
    return feats, torch.tensor(lens)


def _stream(encoder, feats, lens, chunk_size, left_chunks, start_delay=None, on_step=None,
            **state_options):
    """Feeds each stream ``frames_needed`` frames per call; stream b joins after start_delay[b]
    calls; ``on_step(state)`` sees the state after each call. Returns per-stream concatenated
    outputs and the final state."""
    batch = feats.shape[0]
    delay = torch.tensor(start_delay or [0] * batch)
    state = encoder.init_state(batch, left_chunks=left_chunks, chunk_size=chunk_size,
                               **state_options)
    pos = torch.zeros(batch, dtype=torch.long)
    outs = [[] for _ in range(batch)]
    for step in range(1000):
        need = encoder.frames_needed(state, chunk_size)
        count = torch.minimum(need, lens - pos).clamp(min=0)
        count = torch.where(delay > step, torch.zeros_like(count), count)
        if int(count.max()) == 0 and step >= int(delay.max()):
            break
        width = max(int(count.max()), 1)
        idx = (pos[:, None] + torch.arange(width)[None]).clamp(max=feats.shape[1] - 1)
        chunk = feats.gather(1, idx[:, :, None].expand(-1, -1, FEAT_DIM))
        out, out_lens, state = encoder.forward_chunk(chunk, count, state)
        assert out_lens.tolist() == [min(n, chunk_size) for n in out_lens.tolist()]
        if on_step is not None:
            on_step(state)
        for b in range(batch):
            outs[b].append(out[b, : out_lens[b]])
        pos += count
    return [torch.cat(o) for o in outs], state


def test_protocols_and_factory():
    encoder = _encoder("conformer")
    assert isinstance(encoder, Encoder) and isinstance(encoder, StreamingEncoder)
    assert encoder.output_dim == 32 and encoder.right_context == 0
    with pytest.raises(ValueError, match="num_heads"):
        EncoderConfig(d_model=30, num_heads=4)


@pytest.mark.parametrize("kind", KINDS)
def test_shapes_and_lengths(kind):
    encoder = _encoder(kind)
    feats, lens = _batch([50, 31, 7])
    enc, enc_lens = encoder(feats, lens)
    assert enc.shape == (3, subsampled_length(50), 32)
    assert enc_lens.tolist() == [subsampled_length(n) for n in (50, 31, 7)]
    assert torch.isfinite(enc).all()
    assert (enc[1, enc_lens[1]:] == 0).all() and (enc[2, 1:] == 0).all()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("chunk_size,left_chunks",
                         [(1, 3), (4, 2), (5, 1), (3, 0), (16, 1), (1, -1), (4, -1)])
def test_streaming_equals_full_under_same_mask(kind, chunk_size, left_chunks):
    encoder = _encoder(kind)
    # 93 frames -> 22 encoder frames: the last chunk is partial for every chunk size above.
    feats, lens = _batch([93, 58, 20])
    full, full_lens = encoder(feats, lens, chunk_size=chunk_size, left_chunks=left_chunks)
    streamed, state = _stream(encoder, feats, lens, chunk_size, left_chunks)
    for b in range(3):
        assert streamed[b].shape[0] == full_lens[b]
        torch.testing.assert_close(streamed[b], full[b, : full_lens[b]], atol=1e-5, rtol=0)
    assert state.processed_frames.tolist() == full_lens.tolist()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("left_chunks", [2, -1])
def test_streams_at_different_positions_share_a_batch(kind, left_chunks):
    encoder = _encoder(kind)
    feats, lens = _batch([70, 70, 45])
    full, full_lens = encoder(feats, lens, chunk_size=3, left_chunks=left_chunks)
    streamed, _ = _stream(encoder, feats, lens, 3, left_chunks, start_delay=[0, 3, 1])
    for b in range(3):
        torch.testing.assert_close(streamed[b], full[b, : full_lens[b]], atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_streaming_survives_unstack_regroup_stack(kind):
    encoder = _encoder(kind)
    feats, lens = _batch([60, 60])
    full, full_lens = encoder(feats, lens, chunk_size=4, left_chunks=1)
    state = encoder.init_state(2, left_chunks=1, chunk_size=4)
    first, first_lens, state = encoder.forward_chunk(feats[:, :19], torch.tensor([19, 19]), state)
    # Continue stream 1 alone, then rejoin both in swapped order.
    one, two = unstack_states(state)
    second_b, _, two = encoder.forward_chunk(feats[1:, 19:35], torch.tensor([16]), two)
    second_a, _, one = encoder.forward_chunk(feats[:1, 19:35], torch.tensor([16]), one)
    state = select_states(stack_states([one, two]), [1, 0])
    rest, rest_lens, _ = encoder.forward_chunk(
        feats.flip(0)[:, 35:51], torch.tensor([16, 16]), state
    )
    assert rest_lens.tolist() == [4, 4]
    stream_a = torch.cat([first[0], second_a[0], rest[1]])
    stream_b = torch.cat([first[1], second_b[0], rest[0]])
    n = 12
    torch.testing.assert_close(stream_a[:n], full[0, :n], atol=1e-5, rtol=0)
    torch.testing.assert_close(stream_b[:n], full[1, :n], atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "kind,causal", [("conformer", True), ("conformer", False), ("transformer", True)]
)
@pytest.mark.parametrize("chunking", [(0, -1), (3, 1)])
def test_invariant_to_batch_composition_and_padding(kind, chunking, causal):
    encoder = _encoder(kind, causal=causal)
    feats, lens = _batch([41, 77, 60])
    feats[0, 41:] = 3.0  # garbage in the padding must not leak
    batched, batched_lens = encoder(feats, lens, *chunking)
    alone, alone_lens = encoder(feats[:1, :41], lens[:1], *chunking)
    assert batched_lens[0] == alone_lens[0]
    torch.testing.assert_close(batched[0, : alone_lens[0]], alone[0], atol=1e-5, rtol=0)
    reordered, _ = encoder(feats[[2, 1]], lens[[2, 1]], *chunking)
    torch.testing.assert_close(reordered[0, :14], batched[2, :14], atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_one_chunk_covering_everything_is_full_context(kind):
    encoder = _encoder(kind, causal=True)
    feats, lens = _batch([48])
    full, _ = encoder(feats, lens, chunk_size=0)
    one_chunk, _ = encoder(feats, lens, chunk_size=100, left_chunks=0)
    torch.testing.assert_close(full, one_chunk, atol=1e-6, rtol=0)
    chunked, _ = encoder(feats, lens, chunk_size=2, left_chunks=0)
    assert not torch.allclose(full, chunked, atol=1e-3)


@pytest.mark.parametrize("prob,low,high", [(0.0, 0, 0), (0.2, 50, 110), (1.0, 400, 400)])
def test_full_context_prob_is_the_chance_of_a_full_context_batch(prob, low, high):
    """Dynamic chunk training draws full context (chunk size 0) with probability
    ``full_context_prob``: never at 0, always at 1, about 80 times in 400 at 0.2."""
    encoder = _encoder("conformer", dynamic_chunk_training=True, dynamic_chunk_sizes=(2, 5),
                       full_context_prob=prob).train()
    torch.manual_seed(0)
    full = sum(encoder._chunking(None, None)[0] == 0 for _ in range(400))
    assert low <= full <= high


def test_dynamic_chunk_training_draws_from_configured_choices():
    encoder = _encoder("conformer", dynamic_chunk_training=True, dynamic_chunk_sizes=(2, 5),
                       dynamic_left_chunks=(1, -1), full_context_prob=0.3,
                       chunk_size=4, left_chunks=3)
    encoder.train()
    draws = {encoder._chunking(None, None) for _ in range(200)}
    assert draws == {(0, 1), (0, -1), (2, 1), (2, -1), (5, 1), (5, -1)}
    assert encoder._chunking(7, 0) == (7, 0)
    # a left context given explicitly is kept while the chunk size is drawn
    assert {encoder._chunking(None, 3)[1] for _ in range(50)} == {3}
    encoder.eval()
    assert encoder._chunking(None, None) == (4, 3)
    # Training forward equals the eval forward under the drawn chunking (dropout is 0).
    feats, lens = _batch([40, 33])
    encoder.train()
    torch.manual_seed(5)
    trained, _ = encoder(feats, lens)
    torch.manual_seed(5)
    drawn = encoder._chunking(None, None)
    encoder.eval()
    expected, _ = encoder(feats, lens, *drawn)
    torch.testing.assert_close(trained, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_each_block_is_the_documented_sum_of_its_modules(kind):
    """A Conformer block is ``x + FFN/2 -> x + MHSA -> x + Conv -> x + FFN/2`` and a Transformer
    block ``x + MHSA(LN(x)) -> x + FFN(x)`` (the feed-forward modules hold their own
    LayerNorm): the weights of a trained package are only meaningful under that composition."""
    torch.manual_seed(0)
    layer = _encoder(kind, num_layers=1).layers[0]
    x = torch.randn(2, 9, 32)
    valid = torch.ones(2, 9, dtype=torch.bool)
    mask = torch.ones(2, 9, 9, dtype=torch.bool)
    rel_pos = RelativePositions.build(9, 0, 32, torch.device("cpu"))
    with torch.no_grad():
        out, _ = layer(x, mask, rel_pos, valid)

        def attend(h):
            return h + layer.attn(layer.norm_attn(h), mask, rel_pos)[0]

        if kind == "conformer":
            h = attend(x + 0.5 * layer.ff_first(x))
            h = h + layer.conv(h, valid)[0]
            expected = h + 0.5 * layer.ff_last(h)
        else:
            h = attend(x)
            expected = h + layer.ff(h)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_reach_every_parameter(kind):
    """The loss weighs each output by a random number: the plain sum of the encoder's last
    LayerNorm (weight 1, bias 0) is the same for every input, its gradient to every parameter
    before the norm zero up to rounding (which some CPUs' kernels round to exactly 0)."""
    encoder = _encoder(kind)
    encoder.train()
    feats, lens = _batch([40, 30])
    enc, _ = encoder(feats, lens, chunk_size=2, left_chunks=1)
    (enc * torch.randn(enc.shape)).sum().backward()
    missing = [n for n, p in encoder.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert missing == []


@pytest.mark.parametrize("kind", KINDS)
def test_unlimited_left_context_streams_of_any_age_regrouped_equal_full(kind):
    """left_chunks=-1 (WeNet's num_decoding_left_chunks=-1): every earlier frame stays cached.
    Streams of different lengths and ages are fed in pieces of varying size (a chunk's frames,
    or a piece too short to emit a frame), in random groups that stack and unstack; each
    equals the full forward under the same chunk mask, long past any fixed cache."""
    chunk = 2
    encoder = _encoder(kind)
    lens = [150, 97, 61]
    feats, lens_t = _batch(lens)
    full, full_lens = encoder(feats, lens_t, chunk_size=chunk, left_chunks=-1)
    limited, _ = encoder(feats, lens_t, chunk_size=chunk, left_chunks=4)
    assert not torch.allclose(full[0, 30:36], limited[0, 30:36], atol=1e-3)
    states = unstack_states(encoder.init_state(3, left_chunks=-1, chunk_size=chunk))
    pos, outs = [0, 0, 0], [[], [], []]
    rng = torch.Generator().manual_seed(0)
    for step in range(200):
        # Streams 1 and 2 start late; each step a random subset goes, some with a short piece.
        group = [b for b in range(3) if step >= (0, 4, 9)[b] and pos[b] < lens[b]
                 and float(torch.rand((), generator=rng)) < 0.7]
        if not any(pos[b] < lens[b] for b in range(3)):
            break
        if not group:
            continue
        state = stack_states([states[b] for b in group])
        need = encoder.frames_needed(state, chunk).tolist()
        pending = state.subsampling.cache_len.tolist()
        counts, shorts = [], []
        for b, n, held in zip(group, need, pending):
            # A short piece: fewer input frames than one encoder frame reads, so none is emitted.
            short = float(torch.rand((), generator=rng)) < 0.3 and held < RECEPTIVE_FIELD - 1
            if short:
                n = int(torch.randint(1, RECEPTIVE_FIELD - held, (), generator=rng))
            counts.append(min(n, lens[b] - pos[b]))
            shorts.append(short)
        piece = torch.zeros(len(group), max(counts), FEAT_DIM)
        for i, (b, n) in enumerate(zip(group, counts)):
            piece[i, :n] = feats[b, pos[b]: pos[b] + n]
        out, out_lens, state = encoder.forward_chunk(piece, torch.tensor(counts), state)
        cached = state.attn_cache_len.tolist()
        assert state.layers[0].key.shape[2] == max(cached)  # padding never outgrows the batch
        for i, (b, n) in enumerate(zip(group, counts)):
            emitted = int(out_lens[i])
            assert emitted == 0 if shorts[i] else emitted == chunk or pos[b] + n == lens[b]
            outs[b].append(out[i, :emitted])
            pos[b] += n
        states = [*states]
        for i, single in zip(group, encoder.unstack_state(state)):
            # each stream keeps its own frames, not the batch's padding to its oldest stream
            assert single.layers[0].key.shape[2] == int(single.attn_cache_len)
            states[i] = single
    for b in range(3):
        streamed = torch.cat(outs[b])
        assert streamed.shape[0] == full_lens[b] and states[b].attn_cache_len.item() == full_lens[b]
        torch.testing.assert_close(streamed, full[b, : full_lens[b]], atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_a_growth_limited_unlimited_cache_stays_bounded_and_slides_as_left_chunks(kind):
    """left_chunks=-1 with max_left_chunks=m: the cache grows to m chunks and no further,
    however long the stream. A stream of at most m + 1 chunks equals the unlimited forward;
    any stream equals the forward with left_chunks=m (streams of different ages batched)."""
    chunk, m = 2, 3
    encoder = _encoder(kind)
    # 150 input frames -> 36 encoder frames (18 chunks, far past m); 35 -> 8 = (m + 1) chunks
    feats, lens = _batch([150, 35, 120])
    unlimited, full_lens = encoder(feats, lens, chunk_size=chunk, left_chunks=-1)
    windowed, _ = encoder(feats, lens, chunk_size=chunk, left_chunks=m)
    assert full_lens[1] == (m + 1) * chunk
    sizes = []
    streamed, state = _stream(encoder, feats, lens, chunk, -1, start_delay=[0, 5, 2],
                              on_step=lambda s: sizes.append(s.layers[0].key.shape[2]),
                              max_left_chunks=m)
    assert state.cache_limit is None and state.growth_limit == m * chunk
    assert max(sizes) == m * chunk and sizes[:3] == [2, 4, 6]  # grows, then stays
    assert state.attn_cache_len.tolist() == [m * chunk] * 3
    for b in range(3):
        torch.testing.assert_close(streamed[b], windowed[b, : full_lens[b]], atol=1e-5, rtol=0)
    torch.testing.assert_close(streamed[1], unlimited[1, : full_lens[1]], atol=1e-5, rtol=0)
    assert not torch.allclose(streamed[0], unlimited[0, : full_lens[0]], atol=1e-3)
    with pytest.raises(ValueError, match="max_left_chunks"):
        encoder.init_state(1, left_chunks=-1, chunk_size=chunk, max_left_chunks=0)
    with pytest.raises(ValueError, match="growth_limit"):  # only states of one limit stack
        stack_states([state, encoder.init_state(1, left_chunks=-1, chunk_size=chunk)])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("chunk_size,left_chunks", [(3, 1), (2, 0), (4, 2), (3, -1)])
def test_context_chunks_and_feature_lookahead_are_the_exact_reach_of_a_chunk(
        kind, chunk_size, left_chunks):
    """What sizes the windows of long inputs (asr.runtime.offline): by the gradients, the first
    frame of a chunk reads, through every layer, the frames of the chunk ``context_chunks``
    before its own and none before that (every earlier frame when unlimited), and a chunk's
    frames read the feature frames up to ``feature_lookahead`` past its end and none after."""
    encoder = _encoder(kind).train()  # dropout 0: train() only keeps the autograd graph
    captured = {}

    def keep(module, inputs, output):
        output[0].retain_grad()
        captured["x"] = output[0]

    hook = encoder.subsampling.register_forward_hook(keep)
    feats, lens = _batch([143])  # 34 encoder frames
    feats.requires_grad_(True)
    enc, _ = encoder(feats, lens, chunk_size=chunk_size, left_chunks=left_chunks)
    hook.remove()
    reach = encoder.context_chunks(chunk_size, left_chunks)
    chunk = enc.shape[1] // chunk_size - 1  # the last whole chunk
    assert left_chunks < 0 or chunk - reach >= 1  # room to see that nothing before is read
    weights = torch.randn(enc.shape[2])  # a plain sum through the final LayerNorm is constant
    frames = slice(chunk * chunk_size, (chunk + 1) * chunk_size)
    (enc[0, chunk * chunk_size] @ weights).backward(retain_graph=True)
    read = captured["x"].grad[0].abs().sum(dim=1).nonzero().flatten()
    if left_chunks < 0:
        assert reach == math.inf and int(read[0]) == 0
    else:
        assert int(read[0]) // chunk_size == chunk - reach
    feats.grad = None
    (enc[0, frames] @ weights).sum().backward()
    last_read = int(feats.grad[0].abs().sum(dim=1).nonzero().max())
    end = (chunk + 1) * chunk_size * encoder.subsampling_factor  # first feature frame after it
    assert last_read == end + encoder.feature_lookahead


def test_unstreamable_settings_are_rejected():
    with pytest.raises(ValueError, match="chunk_size"):
        _encoder("transformer").init_state(1)
    with pytest.raises(ValueError, match="causal"):
        _encoder("conformer", causal=False).init_state(1, chunk_size=4, left_chunks=1)


def test_calls_with_too_few_frames_emit_nothing_and_keep_exactness():
    encoder = _encoder("conformer")
    feats, lens = _batch([40])
    full, full_lens = encoder(feats, lens, chunk_size=2, left_chunks=2)
    state = encoder.init_state(1, left_chunks=2, chunk_size=2)
    out, out_lens, state = encoder.forward_chunk(feats[:, :5], torch.tensor([5]), state)
    assert out.shape == (1, 0, 32) and out_lens.tolist() == [0]
    assert encoder.frames_needed(state, 2).tolist() == [6]
    out, out_lens, state = encoder.forward_chunk(feats[:, 5:11], torch.tensor([6]), state)
    torch.testing.assert_close(out[0], full[0, :2], atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_a_batch_too_short_for_the_subsampling_encodes_to_no_frames(kind):
    """Inputs of under 7 feature frames subsample to none: the full forward returns (B, 0, D)
    as the streaming one does (it raised in the relative positions of zero queries)."""
    encoder = _encoder(kind)
    feats, lens = _batch([6, 3, 0])
    out, out_lens = encoder(feats, lens)
    assert out.shape == (3, 0, 32) and out_lens.tolist() == [0, 0, 0]
    assert out_lens.tolist() == [subsampled_length(n) for n in lens.tolist()]


@pytest.mark.parametrize("kind", KINDS)
def test_global_cmvn_normalises_both_paths_alike(kind):
    plain = _encoder(kind)
    encoder = _encoder(kind, input_norm="global_cmvn")
    mean, std = torch.linspace(-3, 3, FEAT_DIM), torch.linspace(0.5, 2, FEAT_DIM)
    encoder.input_norm.set_stats(mean, std)
    feats, lens = _batch([61, 40])
    full, full_lens = encoder(feats, lens, chunk_size=4, left_chunks=2)
    # The same weights fed normalised features by hand give the same output ...
    plain.load_state_dict({k: v for k, v in encoder.state_dict().items()
                           if not k.startswith("input_norm.")})
    by_hand, _ = plain((feats - mean) / std, lens, chunk_size=4, left_chunks=2)
    torch.testing.assert_close(full, by_hand, atol=1e-5, rtol=0)
    # ... and streaming normalises chunk by chunk with the same result.
    streamed, _ = _stream(encoder, feats, lens, 4, 2)
    for b in range(2):
        torch.testing.assert_close(streamed[b], full[b, : full_lens[b]], atol=1e-5, rtol=0)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::FutureWarning")
@pytest.mark.parametrize("causal", [True, False])
def test_the_convolution_module_runs_on_any_length_without_a_shape_branch(causal):
    """The depthwise convolution gets one zero frame more than its kernel needs, its output
    dropped: the module runs on no frame (it raised: a kernel of 5 on 4 padding frames), and
    its trace on 20 frames (as the ONNX export traces the encoder) on every other length, bit
    for bit as the convolution of exactly the padding it needs."""
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    module = ConvolutionModule(dim=8, kernel_size=5, causal=causal, dropout=0.0).eval()
    module.requires_grad_(False)  # its weights become constants of the traced function
    with torch.no_grad():
        example = (torch.randn(2, 20, 8), torch.ones(2, 20, dtype=torch.bool))
        traced = torch.jit.trace(lambda x, valid: module(x, valid)[0], example)
        for num_frames in range(0, 12):
            x = torch.randn(2, num_frames, 8, generator=gen)
            lens = torch.tensor([num_frames, num_frames // 2])
            valid = torch.arange(num_frames)[None, :] < lens[:, None]
            out, _ = module(x, valid)
            assert out.shape == (2, num_frames, 8)
            assert torch.equal(traced(x, valid), out), num_frames
            hidden = torch.nn.functional.glu(module.pointwise_in(module.norm_in(x)), dim=-1)
            hidden = hidden.masked_fill(~valid[:, :, None], 0.0).transpose(1, 2)
            left = 4 if causal else 2
            if num_frames:  # the convolution on exactly its padding (it needs a full kernel)
                conv = module.depthwise(torch.nn.functional.pad(hidden, (left, 4 - left)))
                hidden = torch.nn.functional.silu(module.norm_mid(conv.transpose(1, 2)))
                assert torch.equal(module.pointwise_out(hidden), out), num_frames


@pytest.mark.parametrize("input_norm", ["none", "global_cmvn"])
def test_bad_features_and_lengths_are_named_not_broadcast(input_norm):
    """Lengths that do not fit the features are an error naming ``feat_lens`` or ``feats``: a
    (1,) length for a batch of 2 was broadcast to both rows, a length past the padded frames
    gave encoder lengths past the output frames, float lengths gave float encoder lengths, and
    the wrong number of bins failed deep in torch (in the CMVN's or the cache's broadcasting)."""
    encoder = _encoder("conformer", input_norm=input_norm)
    feats, lens = _batch([40, 20])
    bad_lens = [torch.tensor([20]), torch.tensor([41, 20]), torch.tensor([40, -1]),
                torch.tensor([40.0, 20.0]), torch.tensor([[40], [20]])]
    for feat_lens in bad_lens:
        with pytest.raises(ValueError, match="feat_lens"):
            encoder(feats, feat_lens)
    with pytest.raises(ValueError,
                       match=rf"feats shape \(2, 40, 13\), expected \(B, T, {FEAT_DIM}\)"):
        encoder(feats[:, :, :13], lens)
    state = encoder.init_state(2, chunk_size=4, left_chunks=1)
    for feat_lens in [torch.tensor([19]), torch.tensor([20, 19]), torch.tensor([19.0, 19.0])]:
        with pytest.raises(ValueError, match="feat_lens"):
            encoder.forward_chunk(feats[:, :19], feat_lens, state)
    with pytest.raises(ValueError, match="feats shape"):
        encoder.forward_chunk(feats[:, :19, :13], torch.tensor([19, 19]), state)
    # lengths within the frames, zero included, still run
    out, out_lens = encoder(feats, torch.tensor([40, 0]))
    assert out_lens.tolist() == [subsampled_length(40), 0]


def test_config_errors_name_the_key_and_value():
    for key, value in [("ff_dim", 0), ("subsampling_channels", 0), ("num_layers", -1)]:
        with pytest.raises(ValueError, match=f"{key}={value}"):
            _tiny("conformer", **{key: value})
    with pytest.raises(ValueError, match="num_mel_bins"):
        build_encoder(_tiny("conformer"), 5)


@pytest.mark.parametrize("kind", KINDS)
def test_a_float64_encoder_streams_with_the_default_state(kind):
    """init_state's caches follow the encoder's parameters (a float32 default made a float64
    or bfloat16 encoder fail inside torch), and the float64 stream equals its full forward."""
    encoder = _encoder(kind).double()
    state = encoder.init_state(2, chunk_size=4, left_chunks=2)
    assert state.layers[0].key.dtype == torch.float64
    feats, lens = _batch([23, 17])
    feats = feats.double()
    outs, _ = _stream(encoder, feats, lens, chunk_size=4, left_chunks=2)
    full, full_lens = encoder(feats, lens, chunk_size=4, left_chunks=2)
    for b, out in enumerate(outs):
        torch.testing.assert_close(out, full[b, : full_lens[b]], rtol=0, atol=1e-12)


def _recipe_chunkings() -> dict[tuple[str, int], set[tuple[int, int]]]:
    """(kind, conv kernel) -> every (chunk_size, left_chunks) that a preset or recipe streams
    or trains with: its default chunking and each of its dynamic chunk training draws."""
    root = Path(__file__).resolve().parents[2] / "recipes"
    configs = [load_config(EncoderConfig, path)
               for path in sorted(root.glob("presets/encoder_*.yaml"))]
    configs += [load_config(ExperimentConfig, path).encoder
                for path in sorted(root.glob("*/*.yaml")) if path.parent.name != "presets"]
    found: dict[tuple[str, int], set[tuple[int, int]]] = {}
    for cfg in configs:
        chunkings = found.setdefault((cfg.kind, cfg.conv_kernel_size), set())
        if cfg.chunk_size > 0:
            chunkings.add((cfg.chunk_size, cfg.left_chunks))
        if cfg.dynamic_chunk_training:
            chunkings.update(itertools.product(cfg.dynamic_chunk_sizes, cfg.dynamic_left_chunks))
    return {key: chunkings for key, chunkings in found.items() if chunkings}


RECIPE_CHUNKINGS = _recipe_chunkings()


def test_the_recipes_chunkings_are_found():
    assert {"conformer", "transformer"} <= {kind for kind, _ in RECIPE_CHUNKINGS}
    chunkings = set().union(*RECIPE_CHUNKINGS.values())
    assert {(8, 4), (8, 8), (32, -1), (4, 2)} <= chunkings


@pytest.mark.parametrize(("kind", "kernel"), sorted(RECIPE_CHUNKINGS))
def test_streaming_equals_full_for_every_chunking_of_the_recipes(kind, kernel):
    """Every chunk size and left context that a preset or recipe uses, with its convolution
    kernel (a causal kernel of 31 reaches 30 frames back, past several chunks of 4): streams fed
    chunk by chunk at different positions of one batch equal the full forward under the same
    mask, for an input too short for the subsampling, one a frame short of the first chunk
    (shorter than one chunk), exactly one chunk, one ending in a partial chunk, and one long
    past the left context."""
    encoder = _encoder(kind, conv_kernel_size=kernel)
    for chunk, left in sorted(RECIPE_CHUNKINGS[(kind, kernel)]):
        context = max(left, 1) + 1  # chunks: one past the left context, or two
        # feature frames: 4c + 3 is exactly the first chunk's (subsampling right context 3)
        lens = [5, 4 * chunk + 2, 4 * chunk + 3, 4 * (2 * chunk + chunk // 2) + 5,
                4 * context * chunk + 9]  # that and a frame
        feats, lens_t = _batch(lens)
        full, full_lens = encoder(feats, lens_t, chunk_size=chunk, left_chunks=left)
        assert full_lens.tolist()[:3] == [0, chunk - 1, chunk]
        assert int(full_lens[3]) % chunk and int(full_lens[4]) % chunk
        streamed, _ = _stream(encoder, feats, lens_t, chunk, left, start_delay=[2, 0, 1, 3, 0])
        for b in range(len(lens)):
            where = f"chunk {chunk}, left {left}, {lens[b]} frames"
            assert streamed[b].shape[0] == full_lens[b], where
            assert torch.allclose(streamed[b], full[b, : full_lens[b]], atol=1e-5, rtol=0), where


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("left_chunks", "max_left_chunks"), [(2, None), (-1, 2)])
def test_a_ten_minute_stream_keeps_a_constant_cache_and_drops_older_context(
        kind, left_chunks, max_left_chunks):
    """Ten minutes of features (60000 frames, 14999 encoder frames) fed one chunk of 32 at a
    time (a chunking of the recipes' dynamic chunk training), with two chunks of left context
    or unlimited left context bounded to two chunks: once the cache is full, every call leaves
    caches of the same shapes and storage (nothing grows with the stream), and the last chunk
    equals the full forward of only the ``context_chunks`` chunks before it and itself: the
    frames older than the left context are dropped, not merely kept and masked."""
    chunk, left = 32, 2
    encoder = _encoder(kind, conv_kernel_size=7)
    frames = 10 * 60 * 100
    feats = torch.randn(1, frames, FEAT_DIM, generator=torch.Generator().manual_seed(0))
    state = encoder.init_state(1, chunk_size=chunk, left_chunks=left_chunks,
                               max_left_chunks=max_left_chunks)
    position, calls, sizes, out, out_lens = 0, 0, set(), None, None
    while position < frames:  # (no autograd: 469 calls)
        take = min(int(encoder.frames_needed(state, chunk)[0]), frames - position)
        with torch.no_grad():
            out, out_lens, state = encoder.forward_chunk(
                feats[:, position: position + take], torch.tensor([take]), state)
        position, calls = position + take, calls + 1
        if calls > left:  # the cache is full
            sizes.add(tuple((tuple(t.shape), t.untyped_storage().nbytes())
                            for layer in state.layers for t in (layer.key, layer.value, layer.conv)
                            if t is not None))
    num_frames = subsampled_length(frames)
    assert int(state.processed_frames) == num_frames and calls == -(-num_frames // chunk)
    assert len(sizes) == 1 and int(state.attn_cache_len) == left * chunk
    assert {shape[2] for shape, _ in next(iter(sizes))} <= {left * chunk, 6}  # 6: conv kernel 7
    # the last (partial) chunk, from its context alone
    last = out[0, : int(out_lens[0])]
    assert last.shape[0] == num_frames % chunk
    start = (num_frames // chunk - int(encoder.context_chunks(chunk, left))) * chunk
    window = feats[:, encoder.subsampling_factor * start:]
    expected, _ = encoder(window, torch.tensor([window.shape[1]]), chunk_size=chunk,
                          left_chunks=left)
    assert expected.shape[1] == num_frames - start
    torch.testing.assert_close(last, expected[0, -last.shape[0]:], atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_a_state_feeds_the_chunks_of_its_own_chunk_size(kind):
    """``frames_needed(state)`` counts the chunks of the chunk size the state was made for:
    it counted the config's (0 here, a full-context config: 0 frames, so a loop fed nothing;
    or another size, which streams another mask than the one asked for). Fed so, the stream
    equals the full forward of its chunking; another chunk size is an error naming both, and
    states of different chunk sizes do not stack."""
    encoder = _encoder(kind)
    assert encoder.cfg.chunk_size == 0
    state = encoder.init_state(1, chunk_size=16, left_chunks=1)
    assert encoder.frames_needed(state).tolist() == [4 * 16 + 3]
    feats, lens = _batch([203])
    full, full_lens = encoder(feats, lens, chunk_size=16, left_chunks=1)
    position, outs = 0, []
    while position < 203:
        take = min(int(encoder.frames_needed(state)[0]), 203 - position)
        out, out_lens, state = encoder.forward_chunk(feats[:, position: position + take],
                                                     torch.tensor([take]), state)
        outs.append(out[0, : int(out_lens[0])])
        position += take
    assert len(outs) == 4 and state.chunk_size == 16
    torch.testing.assert_close(torch.cat(outs), full[0, : full_lens[0]], atol=1e-5, rtol=0)
    assert encoder.frames_needed(state, 16).tolist() == [4 * 16]
    with pytest.raises(ValueError, match="chunk_size=8, but the state streams chunks of 16"):
        encoder.frames_needed(state, 8)
    with pytest.raises(ValueError, match="chunk_size"):
        stack_states([state, encoder.init_state(1, chunk_size=8, left_chunks=2)])


@pytest.mark.parametrize("kind", KINDS)
def test_a_float64_encoder_takes_float32_features_offline_as_streaming(kind):
    """forward_chunk cast the features to the encoder's dtype but forward did not: a float64
    encoder given float32 features streamed, while its forward failed inside torch ('Input
    type (float) and bias type (double) should be the same'). Both cast, to the same result."""
    encoder = _encoder(kind).double()
    feats, lens = _batch([23, 17])
    full, full_lens = encoder(feats, lens, chunk_size=4, left_chunks=2)
    assert full.dtype == torch.float64
    expected, _ = encoder(feats.double(), lens, chunk_size=4, left_chunks=2)
    torch.testing.assert_close(full, expected, rtol=0, atol=0)
    outs, _ = _stream(encoder, feats, lens, chunk_size=4, left_chunks=2)
    for b, out in enumerate(outs):
        torch.testing.assert_close(out, full[b, : full_lens[b]], rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_non_finite_feature_padding_leaves_every_gradient_finite(kind):
    """NaN or inf beyond feat_lens reached the subsampling convolutions, which were zeroed only
    after them: the outputs were finite but the convolution weights' gradients NaN (the trainer
    then skips the step). The padded frames are zeroed before the subsampling: every gradient
    is finite and equals that of zero padding."""
    encoder = _encoder(kind).train()
    feats, lens = _batch([400, 80, 3])
    grads = []
    for fill in (0.0, math.nan, math.inf):
        x = feats.clone()
        x[1, 80:], x[2, 3:] = fill, -fill
        encoder.zero_grad()
        torch.manual_seed(1)  # the same dynamic chunk draw each time
        encoder(x, lens)[0].sum().backward()
        grads.append({name: p.grad.clone() for name, p in encoder.named_parameters()
                      if p.grad is not None})
    assert "subsampling.conv.0.weight" in grads[0]
    for grad in grads[1:]:
        for name, value in grad.items():
            assert torch.isfinite(value).all(), name
            torch.testing.assert_close(value, grads[0][name], rtol=0, atol=0)
