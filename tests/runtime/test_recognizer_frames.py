"""StreamingRecognizer at the encoder's frames, in float64: streams that join a batch at
random times, are fed random pieces of audio and finish at different steps get the encoder
frames they get decoded alone, and those are the full chunk-masked forward of the features
they were fed, to 1e-10 (the searchers' tests compare tokens, which hide small errors)."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from asr.runtime.endpoint import EndpointConfig
from asr.runtime.offline import load_model

#: (left_chunks, max_left_seconds) of the recognizer and the left context of the full forward
#: it equals: bounded, unlimited, and unlimited bounded to 3 chunks of 0.08 s
LEFT_CONTEXTS = [(3, None, 3), (-1, math.inf, -1), (-1, 0.24, 3)]


@pytest.fixture(scope="module", params=["conformer", "transformer"])
def model(request, tmp_path_factory):
    """A float64 random-weight transducer streaming chunks of 2 encoder frames."""
    from asr.testing.packages import random_package

    root = tmp_path_factory.mktemp(f"random_{request.param}_float64")
    loaded = load_model(random_package(root, head="transducer", chunk_size=2, left_chunks=3,
                                       seed=3, encoder_overrides={"kind": request.param}))
    loaded.runtime.model.double()
    return loaded


def _run(recognizer, waves, pieces, joins):
    """Decodes ``waves`` as a server does: stream i joins at tick ``joins[i]`` and gets
    ``pieces[i]`` samples a tick, one ``decode`` of every stream not done a tick. Returns, per
    stream, the encoder frames its searcher was given and the feature frames it was fed."""
    batch_streams, step = [], recognizer.searcher.step
    original = recognizer._step
    frames: dict[int, list[torch.Tensor]] = {}
    feats: dict[int, list[torch.Tensor]] = {}

    def recording_step(batch):
        batch_streams[:] = [stream for stream, _ in batch]
        for stream, taken in batch:
            feats.setdefault(stream.id, []).append(stream.feats[:taken].clone())
        return original(batch)

    def recording_search(enc, enc_lens, state):
        for stream, row, count in zip(batch_streams, enc, enc_lens.tolist()):
            frames.setdefault(stream.id, []).append(row[:count].clone())
        return step(enc, enc_lens, state)

    recognizer._step, recognizer.searcher.step = recording_step, recording_search
    streams, cursors, tick = {}, [0] * len(waves), 0
    try:
        while len(streams) < len(waves) or not all(s.done for s in streams.values()):
            for i, wave in enumerate(waves):
                if joins[i] == tick:
                    streams[i] = recognizer.new_stream()
                stream = streams.get(i)
                if stream is None or stream.input_done:
                    continue
                recognizer.accept_waveform(stream, wave[cursors[i]: cursors[i] + pieces[i]],
                                           16000)
                cursors[i] += pieces[i]
                if cursors[i] >= wave.shape[0]:
                    recognizer.input_finished(stream)
            recognizer.decode([s for s in streams.values() if not s.done])
            tick += 1
    finally:
        del recognizer._step, recognizer.searcher.step
    dim = recognizer.encoder.output_dim
    empty = torch.zeros(0, dim, dtype=torch.float64)
    return ([torch.cat([empty, *frames.get(streams[i].id, [])]) for i in range(len(waves))],
            [torch.cat([torch.zeros(0, 80), *feats.get(streams[i].id, [])])
             for i in range(len(waves))])


@pytest.mark.parametrize(("left_chunks", "max_left_seconds", "full_left"), LEFT_CONTEXTS)
def test_batched_streams_get_their_own_frames_and_the_full_forwards(
        model, left_chunks, max_left_seconds, full_left):
    """One draw of lengths (shorter than the subsampling's window, about a chunk, past the
    left context), pieces and join times per left context."""
    recognizer = model.streaming_recognizer(
        endpoint=EndpointConfig(enabled=False), left_chunks=left_chunks,
        max_left_seconds=max_left_seconds)
    encoder = recognizer.encoder
    seed = LEFT_CONTEXTS.index((left_chunks, max_left_seconds, full_left))
    rng = random.Random(seed)
    noise = np.random.default_rng(seed)
    sizes = [300, rng.randint(1200, 2200), rng.randint(4000, 6000), rng.randint(7000, 9000)]
    waves = [(noise.standard_normal(n) * 0.1).astype(np.float32) for n in sizes]
    pieces = [rng.choice([160, 321, 999, 1600, 4000]) for _ in waves]
    joins = [rng.randint(0, 4) for _ in waves]
    together, fed = _run(recognizer, waves, pieces, joins)
    for i, wave in enumerate(waves):
        where = f"stream {i} of {sizes[i]} samples, pieces of {pieces[i]}"
        alone, alone_fed = _run(recognizer, [wave], [pieces[i]], [0])
        assert torch.equal(fed[i], alone_fed[0]), where
        torch.testing.assert_close(together[i], alone[0], atol=1e-10, rtol=0, msg=where)
        with torch.no_grad():
            full, full_lens = encoder(fed[i][None].double(), torch.tensor([fed[i].shape[0]]),
                                      chunk_size=2, left_chunks=full_left)
        assert together[i].shape[0] == int(full_lens[0]), where
        torch.testing.assert_close(together[i], full[0], atol=1e-10, rtol=0, msg=where)
    assert together[0].shape[0] == 0 and together[3].shape[0] > (3 + 1) * 2
