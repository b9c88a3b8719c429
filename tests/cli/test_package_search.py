"""A package carries the search its recipe tuned (searcher, options, LM): decoded through the CLI
it gives what ``asr decode`` gives with the same settings on the test set, and its searcher is
the one those settings build by hand (the LM fused at its weight: not the one without it), and
so is its streaming searcher, with every setting it reads."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch

import asr
from asr.cli.main import main
from asr.decoding import SearchConfig, StreamingSearcher, build_searcher, build_streaming_searcher
from asr.decoding.context_graph import ContextGraph
from asr.features.fbank import compute_fbank
from asr.metrics.wer import compute_wer
from asr.package import export_package, load_package
from asr.runtime.offline import Transcriber
from asr.runtime.streaming import StreamingRecognizer

PART = "test-clean"


def _references(corpus: Path) -> dict[str, tuple[Path, str]]:
    """cut id -> (flac path, transcript) of the tiny corpus's test set."""
    refs = {}
    for trans in sorted((corpus / "LibriSpeech" / PART).rglob("*.trans.txt")):
        for line in trans.read_text().splitlines():
            utt, text = line.split(" ", 1)
            refs[utt] = (trans.parent / f"{utt}.flac", text)
    return refs


def _recogs(path: Path) -> dict[str, str]:
    """utt id -> hypothesis of an ``asr decode`` recogs file."""
    hyps = {}
    for line in path.read_text().splitlines():
        utt, field = line.split(":\t", 1)
        if field.startswith("hyp="):
            hyps[utt] = " ".join(eval(field[4:]))  # a Python list of words
    return hyps


def _encode(model: Transcriber, audio: list[Path]) -> tuple[torch.Tensor, torch.Tensor]:
    """``model``'s encoder output ``(B, T, D)`` and its lengths ``(B,)`` for the files
    ``audio``, with the features its transcription computes."""
    runtime = model.runtime
    feats = [compute_fbank(model.load(path).samples, model.sample_rate, runtime.fbank,
                           runtime.extractor) for path in audio]
    lens = torch.tensor([f.shape[0] for f in feats])
    with torch.no_grad():
        return runtime.model.encode(torch.nn.utils.rnn.pad_sequence(feats, True), lens)


def _stream(recognizer: StreamingRecognizer, samples) -> tuple[list, object]:
    """Decodes ``samples`` as one stream of ``recognizer``: the encoder chunks ``(enc (1, T',
    D), enc_lens (1,))`` its searcher was given, and the finished stream."""
    chunks = []
    model = recognizer.runtime.model
    encode_chunk = model.encode_chunk

    def recording(*args, **kwargs):
        out = encode_chunk(*args, **kwargs)
        if out[0].shape[1] > 0:  # (a chunk of no frame is not searched)
            chunks.append(out[:2])
        return out

    model.encode_chunk = recording
    try:
        stream = recognizer.new_stream()
        recognizer.accept_waveform(stream, samples, recognizer.sample_rate)
        recognizer.input_finished(stream)
        while recognizer.is_ready(stream):
            recognizer.decode([stream])
    finally:
        del model.encode_chunk
    assert stream.done
    return chunks, stream


def _graph(graph: ContextGraph | None) -> tuple | None:
    """A hotword graph as comparable values (None: no graph)."""
    if graph is None:
        return None
    return graph.next_state.tolist(), graph.delta.tolist(), graph.final.tolist()


def _search(searcher: StreamingSearcher, chunks: list) -> tuple:
    """What ``searcher`` keeps and gives over the encoder ``chunks`` of one stream, from its
    own initial state: the live hypotheses (tokens, frames, scores, LM and hotword states),
    the hotword graph and the final hypothesis."""
    state = searcher.init_state(1, "cpu")
    for enc, enc_lens in chunks:
        state = searcher.step(enc, enc_lens, state)
    (beam,) = state.beams
    return beam.hyps, _graph(beam.context), searcher.finalize(state)[0]


@pytest.fixture(scope="module")
def token_lm(tiny_corpus, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("lm") / "token_3gram.arpa"
    assert main(["lm", "--transcripts", str(tiny_corpus / "LibriSpeech" / "train-clean-5"),
                 "--tokenizer-dir", str(tiny_corpus / "lang_char"), "--order", "3",
                 "--output", str(path)]) == 0
    return path


def test_package_decodes_with_its_own_lm_as_asr_decode(trained, tiny_corpus, token_lm, tmp_path,
                                                        capsys, caplog):
    settings = ["search.beam_size=3", f"search.lm_path={token_lm}", "search.lm_weight=0.6",
                "search.blank_penalty=3"]
    weights = ["--checkpoint", str(trained / "epoch-2.pt")]
    # features from the audio, as `asr transcribe` computes them (the tiny model's scores can
    # be closer than the stored lilcom features are to the audio's)
    assert main(["decode", "--exp-dir", str(trained), *weights, "--searcher", "beam",
                 "--parts", PART, "--set", *settings, "data.on_the_fly_feats=true"]) == 0
    summary = Path(capsys.readouterr().out.split()[0])
    assert summary.name == f"wer-summary-{PART}-transducer_beam.txt"
    decode_wer = float(summary.read_text().splitlines()[1].split("\t")[1])
    decoded = _recogs(summary.parent / f"recogs-{PART}-transducer_beam.txt")
    assert len(decoded) == 4, decoded

    # the package keeps the searcher, the options and a copy of the LM ...
    lm = tmp_path / "lm.arpa"
    shutil.copyfile(token_lm, lm)
    built = tmp_path / "built" / "package"
    assert main(["export-package", "--exp-dir", str(trained), *weights, "--output-dir", str(built),
                 "--searcher", "beam", "--set", *[s.replace(str(token_lm), str(lm))
                                                   for s in settings],
                 "--wer", f"{PART}={decode_wer}"]) == 0
    capsys.readouterr()
    metadata = json.loads((built / "metadata.json").read_text())
    assert metadata["searcher"] == "transducer_beam"
    assert metadata["wer"] == {PART: decode_wer}
    assert "lm/lm.arpa" in metadata["sha256"]
    # ... so it works moved elsewhere, without the original LM file
    package = tmp_path / "moved" / "package"
    shutil.move(str(built.parent), str(package.parent))
    lm.unlink()
    loaded = load_package(package)
    assert loaded.config.search.lm_path == package / "lm" / "lm.arpa"
    assert (loaded.config.search.beam_size, loaded.config.search.lm_weight) == (3, 0.6)

    refs = _references(tiny_corpus)
    utts = sorted(refs)
    # its searcher is the one its settings build by hand, with the LM fused: the hypotheses'
    # scores (the LM's end of sentence is in every one) are those of that search, not of the
    # same search with LM weight 0 (no LM), whatever words the tiny model's weights give
    default = asr.load_model(package)
    by_hand = {weight: build_searcher(
        "transducer_beam", default.runtime.model,
        SearchConfig(beam_size=3, lm_path=token_lm, lm_weight=weight, blank_penalty=3.0),
        tokenizer=default.runtime.tokenizer) for weight in (0.6, 0.0)}
    enc, enc_lens = _encode(default, [refs[u][0] for u in utts])
    packaged = default.searcher()(enc, enc_lens)
    assert packaged == by_hand[0.6](enc, enc_lens)
    assert packaged != by_hand[0.0](enc, enc_lens)

    code = main(["transcribe", "--model", str(package), "--format", "json",
                 *[str(refs[u][0]) for u in utts]])
    assert code == 0
    texts = [json.loads(line)["text"] for line in capsys.readouterr().out.splitlines()]
    assert dict(zip(utts, texts)) == decoded
    cli_wer = 100.0 * compute_wer([refs[u][1] for u in utts], texts, utts).stats.wer
    assert f"{cli_wer:.2f}" == f"{decode_wer:.2f}"

    # from Python: the package's search by default, changed option by option
    model = asr.load_model(package, search={"lm_weight": 0.0})
    assert model.runtime.searcher == "transducer_beam"
    assert model.runtime.streaming_searcher == "transducer_beam"  # the beam search streams
    assert model.runtime.search.lm_path == package / "lm" / "lm.arpa"
    assert model.runtime.search.lm_weight == 0.0 and model.runtime.search.beam_size == 3
    assert asr.load_model(package, searcher="greedy").runtime.searcher == "transducer_greedy"

    # the package's greedy searcher is one option away, and other options can be changed
    assert main(["transcribe", "--model", str(package), "--searcher", "greedy",
                 "--set", "search.blank_penalty=0", str(refs[utts[0]][0])]) == 0
    # streaming: the package's beam search streams, with its LM, to the offline transcripts
    capsys.readouterr()
    assert main(["transcribe", "--model", str(package), "--streaming", "--format", "json",
                 *[str(refs[u][0]) for u in utts]]) == 0
    streamed = [json.loads(line)["text"] for line in capsys.readouterr().out.splitlines()]
    assert streamed == texts
    assert main(["transcribe", "--model", str(package), "--set", "search.beam_sz=2",
                 str(refs[utts[0]][0])]) == 2
    assert "did you mean 'beam_size'" in caplog.text


def test_package_streams_with_its_own_search_settings(trained, tiny_corpus, token_lm, tmp_path):
    """The streaming recognizer of a package (``asr transcribe --streaming``, ``asr serve``)
    searches with every setting of the package's search that its searcher reads: on the encoder
    chunks it was given, it keeps and gives exactly what the streaming searcher built by hand
    with those settings does, and not what it does without any one of them (each changes the
    scores, LM states, hotword graph or beam whatever the tiny model's weights)."""
    refs = _references(tiny_corpus)
    utt = sorted(refs)[0]
    phrases = tmp_path / "hotwords.txt"
    phrases.write_text(refs[utt][1].split()[0] + "\n", encoding="utf-8")
    settings = {"beam_size": 3, "lm_path": token_lm, "lm_weight": 0.6, "blank_penalty": 1.0,
                "length_norm": 0.5, "insertion_bonus": 0.3, "hotwords_file": phrases,
                "hotwords_score": 2.5, "hotwords_unboosted_prefix": 0}
    package = tmp_path / "package"
    export_package(trained, package, searcher="beam",
                   search={k: str(v) if isinstance(v, Path) else v for k, v in settings.items()})
    model = asr.load_model(package)
    recognizer = model.streaming_recognizer()
    assert recognizer.searcher_name == "transducer_beam"
    runtime = model.runtime

    def by_hand(**changes) -> StreamingSearcher:
        cfg = dataclasses.replace(SearchConfig(**settings), **changes)
        return build_streaming_searcher("transducer_beam", runtime.model, cfg,
                                        tokenizer=runtime.tokenizer)

    default = SearchConfig()
    searchers = {"": by_hand()} | {name: by_hand(**{name: getattr(default, name)})
                                   for name in settings}
    chunks, stream = _stream(recognizer, model.load(refs[utt][0]).samples)
    (beam,) = stream.search_state.beams
    streamed = beam.hyps, _graph(beam.context), stream.hypothesis
    assert beam.context is not None
    assert streamed == _search(searchers[""], chunks)
    for name in settings:  # a runtime that dropped this setting would give these
        assert streamed != _search(searchers[name], chunks), name


def test_export_package_rejects_a_missing_lm_and_a_foreign_searcher(trained, tmp_path, caplog):
    out = str(tmp_path / "pkg")
    assert main(["export-package", "--exp-dir", str(trained), "--output-dir", out,
                 "--set", f"search.lm_path={tmp_path / 'none.arpa'}"]) == 2
    assert "none.arpa: no such LM file" in caplog.text
    assert main(["export-package", "--exp-dir", str(trained), "--output-dir", out,
                 "--searcher", "aed_beam"]) == 2
    assert "aed_beam" in caplog.text
    assert main(["export-package", "--exp-dir", str(trained), "--output-dir", out,
                 "--set", "data.max_duration=3"]) == 2
    assert "only search options" in caplog.text
