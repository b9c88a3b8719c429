"""The end-of-epoch dev WER decodes with the greedy searcher of a head that is trained."""

from __future__ import annotations

from asr.heads.ctc import CTCConfig
from asr.heads.transducer import TransducerConfig
from asr.model import HeadsConfig
from asr.train.evaluate import greedy_searcher_name


def test_first_trained_head_picks_the_searcher() -> None:
    heads = HeadsConfig(transducer=TransducerConfig(loss="tdt"), ctc=CTCConfig())
    assert greedy_searcher_name(heads) == "tdt_greedy"
    pruned = HeadsConfig(transducer=TransducerConfig(), ctc=CTCConfig())
    assert greedy_searcher_name(pruned) == "transducer_greedy"


def test_heads_of_weight_zero_are_skipped() -> None:
    heads = HeadsConfig(
        transducer=TransducerConfig(), ctc=CTCConfig(), loss_weights={"transducer": 0.0}
    )
    assert greedy_searcher_name(heads) == "ctc_greedy"
    only_untrained = HeadsConfig(ctc=CTCConfig(), loss_weights={"ctc": 0.0})
    assert greedy_searcher_name(only_untrained) is None
