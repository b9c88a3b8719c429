"""Token times of the transducer and TDT searches on a hand-built model whose alignment is known:
each token's frame is the encoder frame it is emitted on (the start of that frame once in
seconds, as icefall and sherpa-onnx count), offline, streaming in chunks and through the result
builder. (The CTC searches' frames are checked by hand in test_search_ctc, CIF's in
test_search_cif.)"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from asr.decoding import SearchConfig, build_searcher
from asr.decoding.registry import build_streaming_searcher
from asr.heads.transducer import TransducerConfig, TransducerHead
from asr.model import ASRModel
from asr.results import ResultBuilder

VOCAB = 7
DURATIONS = (0, 1, 2, 3)
#: frame -> (label, duration): 6 on frame 3 is skipped by the TDT blank of duration 2 on frame
#: 2 (RNN-T reads it: blank there)
ALIGNMENT = [(0, 1), (3, 1), (0, 2), (6, 1), (5, 1), (2, 1), (4, 1), (0, 1)]


def hand_built(loss: str) -> ASRModel:
    """Joiner ``relu(enc + pred)`` with identity projections: an encoder frame holds the logits
    it votes for; the predictor forbids the last token again (-100) and favours blank (+5), so a
    token frame emits its token once and then, for RNN-T, blank."""
    num_durations = len(DURATIONS) if loss == "tdt" else 0
    dims = VOCAB + num_durations
    cfg = TransducerConfig(loss=loss, predictor="stateless", context_size=1, pred_dim=VOCAB,
                           joiner_dim=dims, joiner_activation="relu", durations=DURATIONS)
    head = TransducerHead(cfg, dims, VOCAB)
    with torch.no_grad():
        head.joiner.encoder_proj.weight.copy_(torch.eye(dims))
        head.joiner.output.weight.copy_(torch.eye(dims))
        head.predictor.embedding.weight.copy_(torch.eye(VOCAB))
        forbid = torch.zeros(dims, VOCAB)
        for token in range(1, VOCAB):
            forbid[token, token], forbid[0, token] = -100.0, 5.0
        head.joiner.predictor_proj.weight.copy_(forbid)
        for bias in (head.joiner.encoder_proj.bias, head.joiner.output.bias,
                     head.joiner.predictor_proj.bias):
            bias.zero_()
    return ASRModel(nn.Identity(), {"transducer": head}, {"transducer": 1.0}).eval()


def frames_of(loss: str) -> torch.Tensor:
    """(1, T, V [+ K]) encoder output voting 20 for each frame's label (and duration)."""
    dims = VOCAB + (len(DURATIONS) if loss == "tdt" else 0)
    enc = torch.zeros(1, len(ALIGNMENT), dims)
    for t, (label, duration) in enumerate(ALIGNMENT):
        if loss != "tdt" and label == 6:
            label = 0
        enc[0, t, label] = 20.0
        if loss == "tdt":
            enc[0, t, VOCAB + DURATIONS.index(duration)] = 20.0
    return enc


class _Pieces:
    def id_to_piece(self, token_id: int) -> str:
        return f"\u2581W{token_id}"


@pytest.mark.parametrize(("loss", "names"), [("full", ("transducer_greedy", "transducer_beam")),
                                             ("tdt", ("tdt_greedy", "tdt_beam"))])
def test_each_token_is_timed_at_the_frame_it_is_emitted_on(loss, names):
    model, enc = hand_built(loss), frames_of(loss)
    lens = torch.tensor([enc.shape[1]])
    builder = ResultBuilder(_Pieces(), 0.04)  # 4 x 10 ms feature frames per encoder frame
    for name in names:
        [[hyp]] = build_searcher(name, model, SearchConfig(beam_size=3))(enc, lens)
        assert (hyp.tokens, hyp.frames) == ((3, 5, 2, 4), (1, 4, 5, 6)), name
        # streaming, in chunks of 3 frames: the same absolute frames
        streaming = build_streaming_searcher(name, model, SearchConfig(beam_size=3))
        state = streaming.init_state(1, "cpu")
        for start in range(0, enc.shape[1], 3):
            chunk = enc[:, start: start + 3]
            state = streaming.step(chunk, torch.tensor([chunk.shape[1]]), state)
        [final] = streaming.finalize(state)
        assert (final.tokens, final.frames) == (hyp.tokens, hyp.frames), name
        # in seconds: the start of each frame, after an offset of 10 frames (a segment's start)
        segment = builder.hypothesis_segment(hyp, offset_frames=10)
        assert segment.timestamps == pytest.approx((0.44, 0.56, 0.6, 0.64)), name
        assert segment.words[0].start == pytest.approx(0.44)
        assert segment.words[0].end == pytest.approx(0.48)
