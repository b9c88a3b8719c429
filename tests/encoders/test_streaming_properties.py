"""Randomized properties of the streaming encoders, in float64 to 1e-10.

Each case draws an encoder kind, a convolution kernel, a chunking that ``EncoderConfig`` allows
(chunk sizes of one frame to longer than the utterances, left context 0, bounded, unlimited, or
unlimited with a growth bound) and a batch of utterances (empty, shorter than the subsampling's
window, one frame, a frame short of a chunk, a chunk, ending in a partial chunk, long past the
left context). The contract checked on each:

- each utterance in a padded batch (garbage in the padding) gets its own forward's frames;
- streams fed chunk by chunk, joining late, in random groups that stack and unstack, with
  garbage beyond each stream's new frames, get the full forward's frames under the same mask;
- the streaming attention masks are the training masks (``chunk_attention_mask``, which
  dynamic chunk training draws) row for row, and a training forward is the stream of its draw;
- NaN or inf in the padding reaches no frame;
- a long stream keeps its relative positions (there is no table of absolute positions).

The draws are seeded: a failure names its case, which reruns alike.

Shape legend: B batch, T feature frames, T' encoder frames, F feature bins, D model dims.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest
import torch
from torch import Tensor

from asr.encoders import build_encoder
from asr.encoders.attention import chunk_attention_mask, streaming_attention_mask
from asr.encoders.base import EncoderConfig
from asr.encoders.chunked import ChunkedEncoder, EncoderState
from asr.encoders.subsampling import RECEPTIVE_FIELD, frames_needed, subsampled_length
from asr.state import stack_states, unstack_states

FEAT_DIM = 12
D_MODEL = 16
KINDS = ["conformer", "transformer"]
#: float64 streaming equals the full forward to rounding: a chunk attends over the same keys
#: in another order of cache slots and padding, nothing more
ATOL = 1e-10


@dataclass(frozen=True)
class Case:
    """One draw: an encoder, a chunking and a batch of utterance lengths (feature frames)."""

    seed: int
    kind: str
    kernel: int
    chunk_size: int
    left_chunks: int
    max_left_chunks: int | None
    lens: tuple[int, ...]

    @property
    def full_left_chunks(self) -> int:
        """The left context of the full forward this streaming equals."""
        return self.max_left_chunks if self.max_left_chunks is not None else self.left_chunks


def _draw(seed: int, kind: str) -> Case:
    rng = random.Random(seed)
    chunk = rng.choice([1, 2, 3, 4, 5, 7, 8, 16, 32, 64, 200])
    left = rng.choice([-3, -1, -1, 0, 1, 2, 3, 5])
    growth = rng.choice([None, None, 1, 2, 4]) if left < 0 else None
    shapes = [0, rng.randint(1, RECEPTIVE_FIELD - 1), RECEPTIVE_FIELD,
              frames_needed(chunk) - 1, frames_needed(chunk),
              frames_needed(chunk) + 4 * rng.randint(1, min(3 * chunk, 40)),
              rng.randint(8, 240), rng.randint(8, 240)]
    lens = tuple(rng.choice(shapes) for _ in range(rng.randint(1, 4)))
    return Case(seed, kind, rng.choice([1, 3, 5, 7, 15, 31]), chunk, left, growth, lens)


def _encoder(case: Case) -> ChunkedEncoder:
    torch.manual_seed(case.seed)
    cfg = EncoderConfig(kind=case.kind, d_model=D_MODEL, num_layers=2, num_heads=2, ff_dim=24,
                        conv_kernel_size=case.kernel, subsampling_channels=4, dropout=0.0,
                        attention_dropout=0.0)
    return build_encoder(cfg, FEAT_DIM).double().eval()


def _features(case: Case, garbage: float) -> tuple[Tensor, Tensor]:
    """(B, T, F) float64 features, ``garbage`` beyond each length, and (B,) lengths."""
    gen = torch.Generator().manual_seed(case.seed)
    feats = torch.randn(len(case.lens), max(max(case.lens), 1), FEAT_DIM, generator=gen,
                        dtype=torch.float64)
    for b, n in enumerate(case.lens):
        feats[b, n:] = garbage
    return feats, torch.tensor(case.lens)


def _stream(encoder: ChunkedEncoder, case: Case, feats: Tensor, garbage: float
            ) -> tuple[list[Tensor], list[EncoderState]]:
    """Feeds each stream ``frames_needed`` frames a call (the rest at its end): stream b joins
    at a random call, and each call takes a random group of the streams that have frames left,
    stacked from their own states and unstacked after; the frames of a call beyond a stream's
    count are ``garbage``. Returns each stream's encoder frames and its last state."""
    rng = random.Random(case.seed + 1)
    lens = case.lens
    states = unstack_states(encoder.init_state(
        len(lens), left_chunks=case.left_chunks, chunk_size=case.chunk_size,
        max_left_chunks=case.max_left_chunks))
    joins = [rng.randint(0, 3) for _ in lens]
    positions = [0] * len(lens)
    outs = [[torch.zeros(0, D_MODEL, dtype=torch.float64)] for _ in lens]
    bound = (case.left_chunks * case.chunk_size if case.left_chunks >= 0
             else None if case.max_left_chunks is None else case.max_left_chunks * case.chunk_size)
    for call in range(10_000):
        left = [b for b in range(len(lens)) if positions[b] < lens[b]]
        if not left:
            break
        group = [b for b in left if call >= joins[b] and rng.random() < 0.75]
        if not group:
            continue
        state = stack_states([states[b] for b in group])
        counts = [min(n, lens[b] - positions[b])
                  for b, n in zip(group, encoder.frames_needed(state).tolist())]
        piece = torch.full((len(group), max(counts), FEAT_DIM), garbage, dtype=torch.float64)
        for i, (b, n) in enumerate(zip(group, counts)):
            piece[i, :n] = feats[b, positions[b]: positions[b] + n]
        with torch.no_grad():
            out, out_lens, state = encoder.forward_chunk(piece, torch.tensor(counts), state)
        if bound is not None:
            assert state.layers[0].key.shape[2] <= bound, case
        for i, (b, single) in enumerate(zip(group, encoder.unstack_state(state))):
            outs[b].append(out[i, : int(out_lens[i])])
            positions[b] += counts[i]
            states[b] = single
    return [torch.cat(o) for o in outs], states


@pytest.mark.parametrize("kind", KINDS)
def test_random_chunkings_stream_as_the_full_forward_and_batch_as_alone(kind):
    """40 draws per kind (see the module doc), finite garbage in every padding."""
    for seed in range(40):
        case = _draw(seed, kind)
        encoder = _encoder(case)
        garbage = float(random.Random(seed).choice([0.0, 3.0, -250.0]))
        feats, lens = _features(case, garbage)
        with torch.no_grad():
            full, full_lens = encoder(feats, lens, chunk_size=case.chunk_size,
                                      left_chunks=case.full_left_chunks)
        assert full_lens.tolist() == [subsampled_length(n) for n in case.lens], case
        streamed, states = _stream(encoder, case, feats, garbage)
        for b, n in enumerate(case.lens):
            expected = full[b, : int(full_lens[b])]
            with torch.no_grad():
                alone, _ = encoder(feats[b: b + 1, :n], lens[b: b + 1],
                                   chunk_size=case.chunk_size, left_chunks=case.full_left_chunks)
            torch.testing.assert_close(alone[0], expected, atol=ATOL, rtol=0,
                                       msg=f"{case}, alone {b}")
            assert streamed[b].shape == expected.shape, (case, b)
            assert int(states[b].processed_frames) == expected.shape[0], (case, b)
            torch.testing.assert_close(streamed[b], expected, atol=ATOL, rtol=0,
                                       msg=f"{case}, streamed {b}")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("garbage", [float("nan"), float("inf"), 1e300])
def test_non_finite_padding_reaches_no_frame(kind, garbage):
    """NaN, inf or an overflowing value beyond a length, in a batch's forward or in a chunk's
    new frames, changes no valid frame: the subsampled padding frames fed the attention values
    whose weight is 0, and ``0 * nan`` is NaN (every frame of the utterance was NaN)."""
    case = Case(0, kind, 5, 4, 2, None, (61, 30, 45))
    encoder = _encoder(case)
    clean, lens = _features(case, 0.0)
    dirty, _ = _features(case, garbage)
    with torch.no_grad():
        expected, expected_lens = encoder(clean, lens, chunk_size=4, left_chunks=2)
        got, got_lens = encoder(dirty, lens, chunk_size=4, left_chunks=2)
    assert torch.equal(got_lens, expected_lens)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)
    streamed, _ = _stream(encoder, case, clean, garbage)
    for b in range(len(case.lens)):
        torch.testing.assert_close(streamed[b], expected[b, : int(expected_lens[b])],
                                   atol=ATOL, rtol=0)


def _streaming_rows(num_frames: int, chunk: int, left: int, growth: int | None) -> Tensor:
    """(T', T') the mask that streaming one utterance of T' encoder frames chunk by chunk
    attends with: each chunk's :func:`streaming_attention_mask`, its cache slots and new
    frames placed at the frames they hold."""
    rows = torch.zeros(num_frames, num_frames, dtype=torch.bool)
    limit = left * chunk if left >= 0 else None if growth is None else growth * chunk
    for start in range(0, num_frames, chunk):
        num_new = min(chunk, num_frames - start)
        cached = start if limit is None else min(start, limit)
        # forward_chunk's cache slots: a bounded cache's all, a growing one's its frames after
        # the call (up to the growth bound)
        slots = limit if left >= 0 else cached + num_new if limit is None else min(
            cached + num_new, limit)
        mask = streaming_attention_mask(torch.tensor([cached]), slots, torch.tensor([num_new]),
                                        chunk)[0, :num_new]  # (new, slots + chunk)
        frames = torch.arange(-slots, chunk) + start  # the frame each slot holds
        seen = mask & (frames >= 0)[None, :] & (frames < num_frames)[None, :]
        assert torch.equal(seen, mask)  # no slot outside the stream is attended
        for i in range(num_new):
            rows[start + i, frames[seen[i]]] = True
    return rows


def test_streaming_masks_are_the_training_masks():
    """For every chunking drawn (dynamic chunk training draws its masks from
    ``chunk_attention_mask``), each chunk streamed attends exactly the frames that the
    training mask gives its frames, left context 0, bounded, unlimited and growth-bounded
    (equal to its bound), chunks longer than the utterance included."""
    rng = random.Random(0)
    for _ in range(300):
        num_frames, chunk = rng.randint(1, 60), rng.choice([1, 2, 3, 4, 5, 8, 16, 32, 100])
        left = rng.choice([-3, -1, 0, 1, 2, 3, 6])
        growth = rng.choice([None, 1, 2, 5]) if left < 0 else None
        expected = chunk_attention_mask(num_frames, chunk, left if growth is None else growth)
        got = _streaming_rows(num_frames, chunk, left, growth)
        assert torch.equal(got, expected), (num_frames, chunk, left, growth)


@pytest.mark.parametrize("kind", KINDS)
def test_a_dynamic_chunk_training_forward_is_the_stream_of_its_draw(kind):
    """In training, each batch's drawn chunking (a chunk size and left context, or full
    context) gives the frames that streaming decodes with that chunking, one chunk covering
    the utterance for full context: the model trains on the masks it streams with."""
    lens = (97, 45, 8)
    torch.manual_seed(0)
    cfg = EncoderConfig(kind=kind, d_model=D_MODEL, num_layers=2, num_heads=2, ff_dim=24,
                        conv_kernel_size=5, subsampling_channels=4, dropout=0.0,
                        attention_dropout=0.0, dynamic_chunk_training=True,
                        dynamic_chunk_sizes=(1, 3, 8), dynamic_left_chunks=(0, 2, -1),
                        full_context_prob=0.3)
    encoder = build_encoder(cfg, FEAT_DIM).double().train()  # dropout 0: train() draws only
    drawn = set()
    for draw in range(8):
        case = Case(draw, kind, cfg.conv_kernel_size, 1, 0, None, lens)
        feats, feat_lens = _features(case, 0.0)
        torch.manual_seed(draw)
        with torch.no_grad():
            trained, trained_lens = encoder(feats, feat_lens)
        torch.manual_seed(draw)
        chunk, left = encoder._chunking(None, None)  # the draw of that forward
        drawn.add(chunk)
        if chunk == 0:  # full context: one chunk holds the whole utterance
            chunk, left = int(trained_lens.max()), 0
        case = Case(draw, kind, cfg.conv_kernel_size, chunk, left, None, lens)
        streamed, _ = _stream(encoder, case, feats, 0.0)
        for b in range(len(lens)):
            torch.testing.assert_close(streamed[b], trained[b, : int(trained_lens[b])],
                                       atol=ATOL, rtol=0, msg=f"{case}, stream {b}")
    assert 0 in drawn and len(drawn) > 2  # full context and chunks were drawn


@pytest.mark.parametrize(("kind", "left_chunks", "num_frames"),
                         [("conformer", 2, 400), ("transformer", 2, 400),
                          ("conformer", -1, 200), ("transformer", -1, 200)])
def test_a_long_stream_keeps_its_relative_positions(kind, left_chunks, num_frames):
    """A float64 stream of 50 to 100 chunks: the positions of a chunk's queries and cached
    keys are their distances however far into the stream (no table of absolute positions
    that a long stream could outgrow): with two chunks of left context each of its last
    chunks equals the full forward of the window it depends on, and with unlimited left
    context the whole stream (its cache grown to 200 frames) equals the full forward."""
    chunk = 4
    case = Case(3, kind, 7, chunk, left_chunks, None, (frames_needed(num_frames),))
    encoder = _encoder(case)
    feats, lens = _features(case, 0.0)
    streamed, states = _stream(encoder, case, feats, 0.0)
    assert streamed[0].shape[0] == num_frames == int(states[0].processed_frames)
    factor = encoder.subsampling_factor
    with torch.no_grad():
        if left_chunks < 0:
            assert int(states[0].attn_cache_len) == num_frames
            expected, _ = encoder(feats, lens, chunk_size=chunk, left_chunks=-1)
            torch.testing.assert_close(streamed[0], expected[0], atol=ATOL, rtol=0)
            return
        reach = int(encoder.context_chunks(chunk, left_chunks))
        for last in range(num_frames // chunk - 3, num_frames // chunk):
            start = (last - reach) * chunk  # encoder frames before it do not reach chunk last
            window = feats[:, factor * start: frames_needed((last + 1) * chunk)]
            expected, _ = encoder(window, torch.tensor([window.shape[1]]), chunk_size=chunk,
                                  left_chunks=left_chunks)
            torch.testing.assert_close(streamed[0][last * chunk: (last + 1) * chunk],
                                       expected[0, -chunk:], atol=ATOL, rtol=0)
