"""Conv2d subsampling: length formula, chunked == full exactly, padding invariance."""

from __future__ import annotations

import pytest
import torch

from asr.encoders.subsampling import Conv2dSubsampling, frames_needed, subsampled_length


def test_length_formula_matches_the_convolutions():
    module = Conv2dSubsampling(input_dim=12, output_dim=8, channels=3)
    for num_frames in range(7, 60):
        out, _ = module(torch.randn(1, num_frames, 12), torch.tensor([num_frames]))
        assert out.shape[1] == subsampled_length(num_frames) == ((num_frames - 1) // 2 - 1) // 2
    assert [subsampled_length(t) for t in range(0, 8)] == [0, 0, 0, 0, 0, 0, 0, 1]
    lens = torch.tensor([0, 3, 7, 10, 11, 100])
    assert subsampled_length(lens).tolist() == [0, 0, 1, 1, 2, 24]
    out, out_lens = module(torch.randn(2, 5, 12), torch.tensor([5, 2]))
    assert out.shape == (2, 0, 8) and out_lens.tolist() == [0, 0]


def test_frames_needed_is_the_smallest_sufficient_input():
    assert frames_needed(0) == 0 and frames_needed(1) == 7 and frames_needed(3) == 15
    for n in range(1, 20):
        assert subsampled_length(frames_needed(n)) == n
        assert subsampled_length(frames_needed(n) - 1) == n - 1


def _feed(module, feats, lens, pieces):
    """Streams ``feats`` in calls of the given per-stream sizes; returns per-stream outputs."""
    batch = feats.shape[0]
    state = module.init_state(batch, feats.device, feats.dtype)
    pos = torch.zeros(batch, dtype=torch.long)
    outs = [[] for _ in range(batch)]
    for sizes in pieces:
        count = torch.minimum(torch.tensor(sizes), lens - pos).clamp(min=0)
        width = max(int(count.max()), 1)
        idx = (pos[:, None] + torch.arange(width)[None]).clamp(max=feats.shape[1] - 1)
        chunk = feats.gather(1, idx[:, :, None].expand(-1, -1, feats.shape[2]))
        out, out_lens, state = module.forward_chunk(chunk, count, state)
        for b in range(batch):
            outs[b].append(out[b, : out_lens[b]])
        pos += count
    assert torch.equal(pos, lens)
    return [torch.cat(o) for o in outs]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_chunked_equals_full_for_any_feeding(seed):
    gen = torch.Generator().manual_seed(seed)
    module = Conv2dSubsampling(input_dim=10, output_dim=6, channels=4).eval()
    lens = torch.tensor([53, 30, 9])
    feats = torch.randn(3, 53, 10, generator=gen)
    full, full_lens = module(feats, lens)
    # Random call sizes per stream, including 0 (a stream with nothing new this step).
    pieces = [torch.randint(0, 12, (3,), generator=gen).tolist() for _ in range(40)]
    streamed = _feed(module, feats, lens, pieces)
    for b in range(3):
        assert streamed[b].shape[0] == full_lens[b]
        torch.testing.assert_close(streamed[b], full[b, : full_lens[b]], atol=1e-6, rtol=0)


def test_output_ignores_padding():
    module = Conv2dSubsampling(input_dim=10, output_dim=6, channels=4)
    feats = torch.randn(1, 23, 10)
    alone, alone_lens = module(feats, torch.tensor([23]))
    padded = torch.cat([feats, torch.full((1, 9, 10), 5.0)], dim=1)
    batch = torch.cat([padded, torch.randn(1, 32, 10)])
    out, out_lens = module(batch, torch.tensor([23, 32]))
    assert out_lens.tolist() == [5, 7] and alone_lens.tolist() == [5]
    torch.testing.assert_close(out[0, :5], alone[0], atol=1e-6, rtol=0)


def _old_forward(module, feats):
    """The forward before it always padded: the convolutions on the input alone, padded to one
    full window only when shorter than it (a Python branch on the shape)."""
    num_frames = feats.shape[1]
    if num_frames < 7:
        feats = torch.nn.functional.pad(feats, (0, 0, 0, 7 - num_frames))
    x = module.conv(feats.unsqueeze(1))
    batch, channels, time, freq = x.shape
    x = module.out(x.transpose(1, 2).reshape(batch, time, channels * freq))
    return x[:, : subsampled_length(num_frames)]


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::FutureWarning")
def test_one_trace_runs_every_length_as_the_convolutions_on_the_input_alone():
    """No branch on the shape: the module traced on 103 frames (as the ONNX export traces it)
    runs on 0..40 frames bit for bit as the module, and every output frame equals that of the
    convolutions run on the unpadded input (the appended zero frames reach no kept frame) up to
    rounding: a convolution kernel may round a frame in the last bit differently on a longer
    input (seen with oneDNN's SSE4.1 kernels; a padding frame that leaked would move it by
    ~0.1). The old padding of inputs under 7 frames was frozen out of the trace, whose
    convolutions then raised."""
    gen = torch.Generator().manual_seed(0)
    module = Conv2dSubsampling(input_dim=10, output_dim=6, channels=4).eval()
    with torch.no_grad():
        traced = torch.jit.trace(module, (torch.randn(2, 103, 10), torch.tensor([103, 71])))
    with torch.no_grad(), torch.jit.optimized_execution(False):  # no re-optimising per shape
        for num_frames in range(0, 41):
            feats = torch.randn(2, num_frames, 10, generator=gen)
            lens = torch.tensor([num_frames, num_frames // 2])
            out, out_lens = module(feats, lens)
            assert out.shape == (2, subsampled_length(num_frames), 6)
            assert out_lens.tolist() == [subsampled_length(n) for n in lens.tolist()]
            torch.testing.assert_close(out, _old_forward(module, feats), atol=1e-6, rtol=0,
                                       msg=lambda m, n=num_frames: f"{n} frames: {m}")
            traced_out, traced_lens = traced(feats, lens)
            assert torch.equal(traced_out, out) and torch.equal(traced_lens, out_lens), num_frames


def test_a_chunk_checks_its_features_once(monkeypatch):
    """``forward_chunk`` checks the new frames it is given (a range check is a device sync on a
    GPU), then subsamples the cached and new frames without checking them again; with
    ``check=False`` (the encoder, which checked them already) it checks nothing: a streaming
    chunk had two syncs where the offline forward has one."""
    import asr.encoders.subsampling as subsampling

    calls = []
    real = subsampling.check_features
    monkeypatch.setattr(subsampling, "check_features",
                        lambda *args: calls.append(args[-1]) or real(*args))
    module = Conv2dSubsampling(input_dim=10, output_dim=6, channels=4)
    state = module.init_state(2, torch.device("cpu"), torch.float32)
    feats, lens = torch.randn(2, 11, 10), torch.tensor([11, 4])
    _, _, state = module.forward_chunk(feats, lens, state)
    assert len(calls) == 1
    module.forward_chunk(feats, lens, state, check=False)
    assert len(calls) == 1
    with pytest.raises(ValueError, match="feat_lens"):
        module.forward_chunk(feats, torch.tensor([12, 4]), state)
