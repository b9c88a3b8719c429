"""asr export-onnx: the graphs load in sherpa-onnx and decode to exactly our token sequences.

One tiny trained transducer package (it has a CTC head beside the transducer) is exported three
ways: offline transducer, streaming transducer and CTC. sherpa-onnx decodes 24 utterances in one
batch (different lengths) with greedy search; our runtime decodes them with its greedy searchers
configured as sherpa's (at most one symbol per frame). The token sequences must be equal.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import kaldi_native_fbank as knf
import numpy as np
import onnx
import onnxruntime
import pytest
import sherpa_onnx
import torch

from asr.audio import load_audio
from asr.checkpoints.io import checkpoint_path, safe_torch_load
from asr.cli.main import main
from asr.decoding import SearchConfig
from asr.encoders.subsampling import subsampled_length
from asr.export import OnnxExportError, export_onnx
from asr.export.graphs import chunk_frames
from asr.export.sherpa import (
    SHERPA_NEMO_FBANK,
    NoLayoutError,
    _check_features,
    sherpa_fbank_problem,
)
from asr.export.sherpa_decode import load_recognizer, room_tone
from asr.export.sherpa_streaming import load_streaming_recognizer, sherpa_rule_seconds
from asr.features.fbank import FbankConfig, compute_fbank, num_frames
from asr.fileio import current_umask
from asr.package import export_package, load_package
from asr.runtime.endpoint import ENDPOINT_TOLERANCE_SECONDS, EndpointConfig, EndpointRule
from asr.runtime.offline import load_model
from asr.testing.packages import random_experiment, random_package
from asr.testing.streams import decode_with_endpoints
from asr.testing.tiny import espeak_available
from asr.tokenizers.base import UNK_ID

RATE = 16000
GREEDY_ONE_PER_FRAME = SearchConfig(max_symbols_per_frame=1)


@pytest.fixture(scope="session")
def tiny(tiny_models_dir):
    from asr.testing.packages import trained_tiny_package

    if not espeak_available():
        pytest.skip("needs espeak-ng")
    return trained_tiny_package(tiny_models_dir, head="transducer")


@pytest.fixture(scope="session")
def exported(tiny, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("onnx")
    out = {}
    for name, options in {"offline": {"int8": True}, "ctc": {"head": "ctc"},
                          "streaming": {"streaming": True, "int8": True}}.items():
        out[name] = root / name
        export_onnx(tiny.package_dir, out[name], **options)
    return out


@pytest.fixture(scope="session")
def utterances(tiny) -> list[np.ndarray]:
    """24 utterances of different lengths: the training sentences alone and in pairs, scaled,
    between quiet noise."""
    rng = np.random.default_rng(0)
    base = [load_audio(w, RATE) for w in tiny.wavs]

    def quiet() -> np.ndarray:
        return rng.standard_normal(int(rng.uniform(0.05, 0.6) * RATE)) * 1e-3

    waves = []
    for i in range(24):
        parts = [quiet(), base[i % 4] * rng.uniform(0.3, 1.0)]
        if i >= 8:
            parts += [quiet(), base[(3 * i + 1) % 4] * rng.uniform(0.3, 1.0)]
        waves.append(np.concatenate(parts + [quiet()]).astype(np.float32))
    assert len({w.shape[0] for w in waves}) == len(waves)
    return waves


def _token_ids(directory: Path, pieces) -> list[tuple[int, ...]]:
    """sherpa-onnx results (token strings, a leading '▁' shown as a space) -> our ids."""
    ids = {line.split()[0]: int(line.split()[1])
           for line in (directory / "tokens.txt").read_text(encoding="utf-8").splitlines()}
    return [tuple(ids["\u2581" + t[1:] if t.startswith(" ") else t] for t in p) for p in pieces]


def _sherpa_offline(recognizer, directory: Path, waves) -> list[tuple[int, ...]]:
    streams = []
    for wave in waves:
        stream = recognizer.create_stream()
        stream.accept_waveform(RATE, wave)
        streams.append(stream)
    recognizer.decode_streams(streams)  # all utterances in one batch
    return _token_ids(directory, [s.result.tokens for s in streams])


def _report(name: str, ours, theirs) -> int:
    same = sum(a == b for a, b in zip(ours, theirs))
    print(f"{name}: sherpa-onnx == ours on {same}/{len(ours)} utterances")
    return same


def test_our_features_are_sherpa_onnx_features(utterances):
    """sherpa-onnx computes features with kaldi-native-fbank and these options (its defaults)."""
    opts = knf.FbankOptions()
    opts.frame_opts.dither = 0.0
    opts.frame_opts.snip_edges = False
    opts.frame_opts.samp_freq = RATE
    opts.mel_opts.num_bins = 80
    opts.mel_opts.low_freq = 20.0
    opts.mel_opts.high_freq = -400.0
    wave = np.concatenate([np.zeros(2000, np.float32), utterances[0]])  # digital silence too
    fbank = knf.OnlineFbank(opts)
    fbank.accept_waveform(RATE, wave.tolist())
    fbank.input_finished()
    theirs = np.stack([fbank.get_frame(i) for i in range(fbank.num_frames_ready)])
    ours = compute_fbank(wave, RATE, FbankConfig()).numpy()
    assert ours.shape == theirs.shape
    assert np.abs(ours - theirs).max() < 1e-3
    assert sherpa_fbank_problem(FbankConfig()) is None
    problem = sherpa_fbank_problem(FbankConfig(low_freq=0.0, window_type="hanning"))
    assert "low_freq=0.0" in problem and "window_type='hanning'" in problem


def test_offline_transducer_tokens_equal_ours(tiny, exported, utterances):
    directory = exported["offline"]
    recognizer = sherpa_onnx.OfflineRecognizer.from_transducer(
        encoder=str(directory / "encoder.onnx"), decoder=str(directory / "decoder.onnx"),
        joiner=str(directory / "joiner.onnx"), tokens=str(directory / "tokens.txt"),
        num_threads=1, decoding_method="greedy_search")
    theirs = _sherpa_offline(recognizer, directory, utterances)
    model = load_model(tiny.package_dir, searcher="transducer_greedy", search=GREEDY_ONE_PER_FRAME)
    ours = [r.token_ids for r in model.transcribe(utterances)]
    assert sum(map(len, ours)) > 3 * len(ours)  # the model does say something
    assert _report("offline transducer", ours, theirs) == len(utterances)


def test_ctc_tokens_equal_ours(tiny, exported, utterances):
    directory = exported["ctc"]
    recognizer = sherpa_onnx.OfflineRecognizer.from_zipformer_ctc(
        model=str(directory / "model.onnx"), tokens=str(directory / "tokens.txt"), num_threads=1)
    theirs = _sherpa_offline(recognizer, directory, utterances)
    ours = [r.token_ids for r in load_model(tiny.package_dir, searcher="ctc_greedy")
            .transcribe(utterances)]
    assert sum(map(len, ours)) > 3 * len(ours)
    assert _report("offline CTC", ours, theirs) == len(utterances)


def _whole_chunks(wave: np.ndarray, chunk_size: int) -> np.ndarray:
    """``wave`` padded with zeros to a frame count both runtimes consume in whole chunks.

    sherpa-onnx decodes a chunk only when one more frame than it reads is ready, and drops what
    is left at the end; our recognizer also decodes that remainder. With ``N = 4c * K + 5``
    frames both decode exactly K chunks (the 2 frames left produce no encoder frame)."""
    frames, shift = chunk_frames(chunk_size)
    have = (wave.shape[0] + 80) // 160 + 1
    chunks = max(1, -(-(have - (frames + 2 - shift)) // shift))
    total = (chunks - 1) * shift + frames + 2
    return np.concatenate([wave, np.zeros(total * 160 - wave.shape[0], np.float32)])


def _sherpa_streaming(recognizer, directory: Path, waves) -> list[tuple[int, ...]]:
    streams = []
    for wave in waves:
        stream = recognizer.create_stream()
        stream.accept_waveform(RATE, wave)
        stream.input_finished()
        streams.append(stream)
    batches = []
    while True:
        ready = [s for s in streams if recognizer.is_ready(s)]
        if not ready:
            break
        batches.append(len(ready))
        recognizer.decode_streams(ready)
    assert max(batches) == len(waves) and min(batches) < len(waves)  # batched, unequal lengths
    return _token_ids(directory, [recognizer.get_result_all(s).tokens for s in streams])


def _ours_streaming(model, waves) -> list[tuple[int, ...]]:
    recognizer = model.streaming_recognizer(endpoint=EndpointConfig(enabled=False))
    streams = []
    for wave in waves:
        stream = recognizer.new_stream()
        recognizer.accept_waveform(stream, wave, RATE)
        recognizer.input_finished(stream)
        streams.append(stream)
    while not all(s.done for s in streams):
        recognizer.decode(streams)
    return [recognizer.result(s).token_ids for s in streams]


def test_streaming_transducer_tokens_equal_ours(tiny, exported, utterances):
    directory = exported["streaming"]
    meta = {p.key: p.value for p in onnx.load(str(directory / "encoder.onnx")).metadata_props}
    chunk_size = int(meta["chunk_size"])
    assert meta["model_type"] == "ebranchformer"
    assert (int(meta["T"]), int(meta["decode_chunk_len"])) == chunk_frames(chunk_size)
    waves = [_whole_chunks(w, chunk_size) for w in utterances]
    recognizer = sherpa_onnx.OnlineRecognizer.from_transducer(
        encoder=str(directory / "encoder.onnx"), decoder=str(directory / "decoder.onnx"),
        joiner=str(directory / "joiner.onnx"), tokens=str(directory / "tokens.txt"),
        num_threads=1, decoding_method="greedy_search")
    theirs = _sherpa_streaming(recognizer, directory, waves)
    model = load_model(tiny.package_dir, searcher="transducer_greedy", search=GREEDY_ONE_PER_FRAME)
    ours = _ours_streaming(model, waves)
    assert sum(map(len, ours)) > 3 * len(ours)
    assert _report("streaming transducer", ours, theirs) == len(utterances)


class _Tap:
    """A sherpa-onnx online recognizer that records what a driver feeds each stream and how
    many chunks it decodes for it."""

    class Stream:
        def __init__(self, stream) -> None:
            self.stream, self.fed, self.chunks = stream, [], 0

        def accept_waveform(self, rate: int, samples: np.ndarray) -> None:
            self.fed.append(np.array(samples, dtype=np.float32))
            self.stream.accept_waveform(rate, samples)

        def input_finished(self) -> None:
            self.stream.input_finished()

    def __init__(self, recognizer) -> None:
        self.recognizer, self.streams = recognizer, []

    def create_stream(self) -> _Tap.Stream:
        self.streams.append(_Tap.Stream(self.recognizer.create_stream()))
        return self.streams[-1]

    def is_ready(self, stream: _Tap.Stream) -> bool:
        return self.recognizer.is_ready(stream.stream)

    def decode_streams(self, streams) -> None:
        for stream in streams:
            stream.chunks += 1
        self.recognizer.decode_streams([s.stream for s in streams])

    def get_result_all(self, stream: _Tap.Stream):
        return self.recognizer.get_result_all(stream.stream)


def _log_energy(wave: np.ndarray) -> np.ndarray:
    """(T,) mean log-mel of each frame of ``wave`` (sherpa-onnx's front end)."""
    opts = knf.FbankOptions()
    opts.frame_opts.dither = 0.0
    opts.frame_opts.snip_edges = False
    opts.mel_opts.num_bins = 80
    fbank = knf.OnlineFbank(opts)
    fbank.accept_waveform(RATE, wave.tolist())
    fbank.input_finished()
    return np.array([np.mean(fbank.get_frame(i)) for i in range(fbank.num_frames_ready)])


def test_streaming_flush_decodes_every_frame_with_the_inputs_own_background(exported):
    """decode-onnx pads a streaming input before ``input_finished`` (sherpa-onnx never decodes
    a partial last chunk) with the least audio that makes sherpa decode every encoder frame our
    runtime decodes -- one hop less leaves the last chunk undecoded -- and that audio is the
    input's quietest stretch: digital silence (the zeros sherpa's examples append) gives
    log-mel frames at the energy floor, which a model trained on noisy audio never heard (the
    mini_tts main-job model appended a piece to the last word of 21/100 test utterances)."""
    directory = exported["streaming"]
    recognizer = load_recognizer(directory)
    tap = _Tap(recognizer.recognizer)
    recognizer.recognizer = tap
    rng = np.random.default_rng(1)
    tone = np.sin(2 * np.pi * 440 * np.arange(RATE) / RATE).astype(np.float32) * 0.3
    waves = []
    for length in rng.integers(8000, 24000, size=10).tolist() + [32 * 160 * 3, 3 * 32 * 160 + 640]:
        wave = rng.standard_normal(length).astype(np.float32) * 1e-3  # quiet, then a tone
        wave[length // 2 - 1000: length // 2 + 1000] += tone[:2000]
        waves.append(wave)
    recognizer.decode(waves, batch_size=1)
    frames, shift = chunk_frames(recognizer.chunk_size)
    fbank = FbankConfig()
    for wave, stream in zip(waves, tap.streams):
        ours = subsampled_length(num_frames(wave.shape[0], fbank))
        assert stream.chunks == -(-ours // recognizer.chunk_size)  # every frame, no more
        assert np.array_equal(stream.fed[0], wave)
        fed = np.concatenate(stream.fed)
        if len(stream.fed) > 1:  # the flush: one hop less decodes one chunk less
            short = recognizer.recognizer.recognizer.create_stream()
            short.accept_waveform(RATE, fed[:-fbank.hop_samples])
            short.input_finished()
            count = 0
            while recognizer.recognizer.recognizer.is_ready(short):
                recognizer.recognizer.recognizer.decode_stream(short)
                count += 1
            assert count == stream.chunks - 1
            energy = _log_energy(fed)
            quietest = _log_energy(wave).min()
            assert energy[-2:].min() > quietest - 1.0  # not the floor (about -15.9)
            assert np.sqrt(np.mean(stream.fed[1] ** 2)) == pytest.approx(1e-3, rel=0.3)
    assert sum(len(s.fed) > 1 for s in tap.streams) >= 8


def test_sherpa_streaming_recognizer_fed_in_pieces_equals_the_whole_decode(exported, utterances):
    """The server's sherpa-onnx engine, fed pieces of 1234 samples with decode steps between
    them and all streams in one batch, gives decode-onnx's tokens (the same flush)."""
    directory = exported["streaming"]
    waves = utterances[:8]
    whole = load_recognizer(directory).decode(waves)
    recognizer = load_streaming_recognizer(directory, endpoint=EndpointConfig(enabled=False))
    streams = [recognizer.new_stream() for _ in waves]
    for start in range(0, max(w.shape[0] for w in waves), 1234):
        for stream, wave in zip(streams, waves):
            if not stream.input_done:
                recognizer.accept_waveform(stream, wave[start: start + 1234], RATE)
                if start + 1234 >= wave.shape[0]:
                    recognizer.input_finished(stream)
        recognizer.decode(streams)
    while any(recognizer.is_ready(s) for s in streams):
        recognizer.decode(streams)
    results = [recognizer.result(s) for s in streams]
    assert all(s.done and r.is_final for s, r in zip(streams, results))
    assert [r.token_ids for r in results] == [w.token_ids for w in whole]
    assert sum(len(r.token_ids) for r in results) > 3 * len(waves)
    # a done stream's last segment is final already: reset refuses it, as our runtime's does
    with pytest.raises(ValueError, match="reset after the stream is done"):
        recognizer.reset(streams[0])
    assert streams[0].finished_segments == [] and recognizer.result(streams[0]) == results[0]


def _decode_beside_new_streams(recognizer, wave: np.ndarray) -> list:
    """decode_with_endpoints of the whole ``wave``, each chunk decoded in a batch with a stream
    that starts there (as a server's newly connected client does)."""
    stream = recognizer.new_stream()
    recognizer.accept_waveform(stream, wave, RATE)
    recognizer.input_finished(stream)
    while recognizer.is_ready(stream):
        beside = recognizer.new_stream()
        recognizer.accept_waveform(beside, wave[:RATE], RATE)
        recognizer.decode([stream, beside])
        if recognizer.is_endpoint(stream):
            recognizer.reset(stream)
    return [*stream.finished_segments, recognizer.result(stream)]


def test_a_segment_after_an_empty_one_is_decoded_alike_alone_and_batched(tiny, exported):
    """Two sentences with a silence between them long enough that rule 2 ends the first
    sentence's segment (its trailing silence after the last token) and rule 1 then a segment of
    silence alone, without tokens, whatever the model recognizes (rule 1 needs no speech; its
    2.4 s and rule 2's 1.2 s, and 0.9 s for a last token emitted early or late).
    sherpa-onnx's greedy search started the segment after the empty one from the blank context
    but kept the predictor output of the context before, and used it only while every stream of
    a batch had one: decoded alone the stream went on from the old context, in a batch with a
    new stream from the blank one, so a server's transcript depended on when other clients
    connected (the two-sentence input of tests/serve came back as 'HELD S' or 'HELD'). The
    engine now has sherpa-onnx recompute it: alone or batched, the blank context.
    modified_beam_search computes the predictor outputs of its hypotheses at every step and
    decodes alike alone and batched without that: pinned here too."""
    directory = exported["streaming"]
    base = [load_audio(w, RATE) for w in tiny.wavs]
    endpoint = EndpointConfig()
    silence = endpoint.rule2.min_trailing_silence + endpoint.rule1.min_trailing_silence + 0.9
    gap = np.zeros(round(silence * RATE), np.float32)
    for method in ("greedy_search", "modified_beam_search"):
        recognizer = load_streaming_recognizer(directory, endpoint=endpoint,
                                               search={"decoding_method": method})
        after_empty = 0
        for first, second in zip(base, base[1:] + base[:1]):
            wave = np.concatenate([gap[:4800], first, gap, second, gap[:4800]])
            alone = decode_with_endpoints(recognizer, recognizer.new_stream(), wave, RATE)
            batched = _decode_beside_new_streams(recognizer, wave)
            assert [s.token_ids for s in batched] == [s.token_ids for s in alone], method
            # rule 1 ended a segment of the silence: the case is in every input
            assert any(not s.token_ids for s in alone[:-1]), (method, alone)
            after_empty += any(not a.token_ids and b.token_ids for a, b in zip(alone, alone[1:]))
        assert after_empty, method  # a segment after an empty one had tokens to differ in


def test_room_tone_is_the_quietest_stretch():
    wave = np.concatenate([np.full(300, 0.5), np.full(200, 0.01), np.full(300, -0.5)])
    assert np.allclose(room_tone(wave, 1000, 100), 0.01)
    assert room_tone(wave, 0, 100).shape == (0,)
    assert np.array_equal(room_tone(np.zeros(0), 5, 100), np.zeros(5))
    assert np.allclose(room_tone(np.array([0.2, -0.2]), 5, 100), [0.2, -0.2, 0.2, -0.2, 0.2])


def test_int8_graphs_load_and_mostly_agree(tiny, exported, utterances):
    """Quantization changes the numbers: the int8 graphs must load and decode; agreement with
    fp32 is reported (its WER is what to measure on a real model)."""
    offline, streaming = exported["offline"], exported["streaming"]
    files = {f"{part}.int8.onnx" for part in ("encoder", "decoder", "joiner")}
    assert files <= {p.name for p in offline.iterdir()}
    kwargs = {f"{part}": str(offline / f"{part}.int8.onnx")
              for part in ("encoder", "decoder", "joiner")}
    recognizer = sherpa_onnx.OfflineRecognizer.from_transducer(
        tokens=str(offline / "tokens.txt"), num_threads=1, **kwargs)
    int8 = _sherpa_offline(recognizer, offline, utterances)
    fp32 = [r.token_ids for r in load_model(tiny.package_dir, searcher="transducer_greedy",
                                            search=GREEDY_ONE_PER_FRAME).transcribe(utterances)]
    assert _report("offline transducer int8", fp32, int8) >= len(utterances) // 2
    kwargs = {f"{part}": str(streaming / f"{part}.int8.onnx")
              for part in ("encoder", "decoder", "joiner")}
    recognizer = sherpa_onnx.OnlineRecognizer.from_transducer(
        tokens=str(streaming / "tokens.txt"), num_threads=1, **kwargs)
    assert any(_sherpa_streaming(recognizer, streaming, utterances[:4]))
    report = json.loads((streaming / "export.json").read_text())
    assert any(line.startswith("encoder.int8.onnx") for line in report["checks"])


def test_int8_graphs_of_every_layout_keep_the_metadata_and_decode(random_exports):
    """sherpa-onnx reads an int8 graph's own metadata: each one has its fp32 graph's metadata
    (onnxruntime's quantizer adds only ``onnx.infer``) and inputs and outputs, and every layout's
    int8 graphs decode in sherpa-onnx (CTC and TDT ones too, which no other test loads):
    nothing for audio without an encoder frame, tokens for 2 s of noise. (The shared exports of
    tests/export/conftest.py are made with ``int8=True``.)"""
    assert set(random_exports) == {"offline", "ctc", "streaming", "tdt"}
    rng = np.random.default_rng(0)
    waves = [(rng.standard_normal(n) * 0.1).astype(np.float32) for n in (640, 32000)]

    def metadata(path: Path) -> dict[str, str]:
        return {p.key: p.value for p in onnx.load(str(path)).metadata_props
                if p.key != "onnx.infer"}

    def io(path: Path) -> list:
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return [(v.name, v.type) for v in session.get_inputs() + session.get_outputs()]

    for name, (_, out, _) in random_exports.items():
        graphs = sorted(p for p in out.glob("*.onnx") if not p.name.endswith(".int8.onnx"))
        assert len(graphs) == (1 if name == "ctc" else 3)
        for graph in graphs:
            quantized = graph.with_name(graph.name.replace(".onnx", ".int8.onnx"))
            assert metadata(quantized) == metadata(graph) and metadata(graph), quantized
            assert io(quantized) == io(graph), quantized
        results = load_recognizer(out, int8=True).decode(waves)
        assert results[0].token_ids == () and results[1].token_ids, name


def test_layout_metadata_and_tokens(tiny, exported):
    offline = exported["offline"]
    decoder = {p.key: p.value for p in onnx.load(str(offline / "decoder.onnx")).metadata_props}
    assert decoder["vocab_size"] == str(len((offline / "tokens.txt").read_text().splitlines()))
    assert decoder["context_size"] == "2"
    lines = (offline / "tokens.txt").read_text(encoding="utf-8").splitlines()
    assert lines[:3] == ["<blk> 0", "<sos/eos> 1", "<unk> 2"]
    streaming = onnx.load(str(exported["streaming"] / "encoder.onnx"))
    meta = {p.key: p.value for p in streaming.metadata_props}
    layers = int(meta["num_hidden_layers"])
    assert len(streaming.graph.input) == len(streaming.graph.output) == 4 * layers + 2
    assert streaming.graph.input[-1].name == "processed_lens"
    for key in ("hidden_size", "intermediate_size", "csgu_kernel_size", "merge_conv_kernel",
                "left_context_len", "num_heads", "head_dim"):
        assert int(meta[key]) > 0
    ctc = onnx.load(str(exported["ctc"] / "model.onnx"))
    vocab_dim = ctc.graph.output[0].type.tensor_type.shape.dim[2]
    assert vocab_dim.dim_value == len(lines)  # sherpa reads V from the static output shape


def test_transformer_with_global_cmvn_exports(tmp_path):
    """CMVN inside the graph (non-trivial statistics), and blocks without a convolution."""
    exp = random_experiment(tmp_path, head="transducer", chunk_size=3, left_chunks=2,
                            encoder_overrides={"kind": "transformer", "input_norm": "global_cmvn"})
    generator = torch.Generator().manual_seed(0)
    for path in exp.glob("checkpoint-*.pt"):
        checkpoint = torch.load(path, weights_only=True)
        checkpoint["model"]["encoder.input_norm.mean"] = torch.randn(80, generator=generator) - 8
        checkpoint["model"]["encoder.input_norm.inv_std"] = torch.rand(80, generator=generator) + .3
        torch.save(checkpoint, path)
    export_package(exp, tmp_path / "package")
    for streaming in (False, True):
        report = export_onnx(tmp_path / "package", tmp_path / f"onnx-{streaming}",
                             streaming=streaming)
        assert len(report.checks) == 3


def test_cli_and_clear_errors(tmp_path, capsys, caplog):
    package = random_package(tmp_path / "rnnt", head="transducer", seed=2)
    out = tmp_path / "out"
    assert main(["export-onnx", "--model", str(package), "--output-dir", str(out)]) == 0
    assert "from_transducer" in capsys.readouterr().out
    assert main(["export-onnx", "--model", str(package), "--output-dir", str(out)]) == 2
    assert "already exists (pass --overwrite" in caplog.text  # a bad option: exit 2
    assert main(["export-onnx", "--model", str(package), "--output-dir", str(out), "--overwrite",
                 "--head", "ctc"]) == 0
    assert (out / "model.onnx").is_file() and not (out / "encoder.onnx").exists()
    with pytest.raises(OnnxExportError, match="no streaming CTC layout"):
        export_onnx(package, tmp_path / "x", head="ctc", streaming=True)
    for head in ("aed", "cif"):
        other = random_package(tmp_path / head, head=head)
        with pytest.raises(OnnxExportError, match="no sherpa-onnx layout"):
            export_onnx(other, tmp_path / "x")
    full_context = random_package(tmp_path / "full", head="transducer", chunk_size=0)
    with pytest.raises(OnnxExportError, match="not a streaming model"):
        export_onnx(full_context, tmp_path / "x", streaming=True)
    assert not (tmp_path / "x").exists()


def test_a_head_kind_without_a_layout_is_refused_naming_those_with_one(tmp_path, monkeypatch):
    """Only aed and cif were refused by name: a head of any other kind the export has no
    layout for went down the transducer path."""
    import dataclasses

    import asr.model

    package = random_package(tmp_path / "rnnt", head="transducer", seed=2)
    spec = asr.model.HEADS["transducer"]
    monkeypatch.setitem(asr.model.HEADS, "transducer",
                        dataclasses.replace(spec, kind=lambda cfg: "mystery"))
    with pytest.raises(NoLayoutError, match=r"the transducer head \(mystery\) has no sherpa-onnx "
                                             r"layout; the export has layouts for the head "
                                             r"kinds rnnt, tdt, ctc"):
        export_onnx(package, tmp_path / "x", head="transducer")
    assert not (tmp_path / "x").exists()


def test_if_supported_skips_only_what_sherpa_onnx_has_no_layout_for(tmp_path, capsys, caplog):
    """The recipes export every layout a model has: a streaming CTC or TDT model's streaming
    export is skipped with its reason, anything else stays an error."""
    for head, reason in (("ctc", "no streaming CTC layout"), ("tdt", "exports offline only")):
        package = random_package(tmp_path / head, head=head)
        out = tmp_path / f"{head}-streaming"
        args = ["export-onnx", "--model", str(package), "--output-dir", str(out), "--streaming"]
        assert main(args) == 2  # a package of the wrong kind is a bad input
        caplog.clear()
        assert main([*args, "--if-supported"]) == 0 and not out.exists()
        assert "nothing written: --streaming" in caplog.text and reason in caplog.text
        assert capsys.readouterr().out == ""  # no report: the recipes decode what printed one
    offline = ["export-onnx", "--model", str(package), "--output-dir", str(tmp_path / "tdt-off"),
               "--if-supported"]
    assert main(offline) == 0 and "nemo_transducer" in capsys.readouterr().out
    assert main(offline) == 2 and "already exists" in caplog.text  # an error all the same
    # a bad chunking value is a bad option, not "no layout", whatever --if-supported says
    transducer = random_package(tmp_path / "rnnt", head="transducer")
    for option, reason in (("--chunk-size=0", "at least 1 encoder frame"),
                           ("--chunk-size=-4", "at least 1 encoder frame"),
                           ("--left-chunks=-2", "number of chunks >= 0")):
        caplog.clear()
        assert main(["export-onnx", "--model", str(transducer), "--output-dir",
                     str(tmp_path / "bad"), "--streaming", option, "--if-supported"]) == 2
        assert reason in caplog.text and not (tmp_path / "bad").exists()


def _nemo_features(wave: np.ndarray) -> torch.Tensor:
    """The features sherpa-onnx computes on its NeMo transducer path (kaldi-native-fbank with
    librosa-style mel filters, low 0 Hz, no DC removal; the other options as the icefall path)."""
    opts = knf.FbankOptions()
    opts.frame_opts.dither = 0.0
    opts.frame_opts.snip_edges = False
    opts.frame_opts.samp_freq = RATE
    opts.frame_opts.remove_dc_offset = False
    opts.mel_opts.num_bins = 80
    opts.mel_opts.low_freq = 0.0
    opts.mel_opts.high_freq = -400.0
    opts.mel_opts.is_librosa = True
    fbank = knf.OnlineFbank(opts)
    fbank.accept_waveform(RATE, wave.tolist())
    fbank.input_finished()
    return torch.from_numpy(np.stack([fbank.get_frame(i) for i in range(fbank.num_frames_ready)]))


def _sherpa_tdt_greedy(head, enc: torch.Tensor, max_tokens_per_frame: int = 5) -> tuple:
    """sherpa-onnx's NeMo-path TDT greedy search, on our PyTorch head, for one utterance.

    Its rule (sherpa-onnx's ``DecodeOneTDT``): one joiner call per step; the argmax token is
    emitted unless it is blank; the frame moves by the argmax duration; a blank of duration 0, or
    the 5th token on one frame, moves by 1; any move that reaches or passes T ends the search.
    (Our own ``tdt_greedy`` ends the way the TDT loss does, with a blank landing on T, so the two
    may differ at the end of an utterance; this is the reference the exported graphs must meet.)
    """
    vocab, durations = head.vocab_size, head.durations
    enc_proj = head.joiner.project_encoder(enc)[0]  # (T, J)
    state = head.predictor.init_state(1, "cpu")
    pred, state = head.predictor.step(torch.tensor([head.blank_id]), state)
    pred_proj = head.joiner.project_predictor(pred)
    tokens, t, on_frame = [], 0, 0
    while t < enc_proj.shape[0]:
        logits = head.joiner.join(enc_proj[t][None], pred_proj)[0]
        token = int(logits[:vocab].argmax())
        skip = durations[int(logits[vocab:].argmax())]
        if token != head.blank_id:
            tokens.append(token)
            pred, state = head.predictor.step(torch.tensor([token]), state)
            pred_proj = head.joiner.project_predictor(pred)
            on_frame += 1
        if skip > 0:
            on_frame = 0
        if on_frame >= max_tokens_per_frame or (token == head.blank_id and skip == 0):
            on_frame, skip = 0, 1
        t += skip
    return tuple(tokens)


def _tdt_tokens_equal(package: Path, out: Path, waves) -> tuple[int, list, list]:
    """sherpa-onnx's NeMo-path TDT greedy search on the exported graphs vs the same search rule
    on our PyTorch model (:func:`_sherpa_tdt_greedy`), on the features sherpa computes there."""
    report = export_onnx(package, out)
    assert report.layout == "tdt"
    assert (out / "tokens.txt").read_text().splitlines()[-1].startswith("<blk> ")
    recognizer = sherpa_onnx.OfflineRecognizer.from_transducer(
        encoder=str(out / "encoder.onnx"), decoder=str(out / "decoder.onnx"),
        joiner=str(out / "joiner.onnx"), tokens=str(out / "tokens.txt"), num_threads=1,
        model_type="nemo_transducer")
    streams = []
    for wave in waves:
        stream = recognizer.create_stream()
        stream.accept_waveform(RATE, wave)
        streams.append(stream)
    recognizer.decode_streams(streams)
    pieces = (out / "tokens.txt").read_text(encoding="utf-8").splitlines()
    nemo_ids = {line.split()[0]: int(line.split()[1]) for line in pieces}
    theirs = [tuple(nemo_ids["\u2581" + t[1:] if t.startswith(" ") else t] + 1
                    for t in s.result.tokens) for s in streams]  # our ids = NeMo's + 1
    model = load_model(package).runtime.model
    head = model.heads["transducer"]
    ours = []
    with torch.no_grad():
        for wave in waves:
            feats = _nemo_features(wave)
            enc, _ = model.encode(feats[None], torch.tensor([feats.shape[0]]))
            ours.append(_sherpa_tdt_greedy(head, enc))
    return _report("TDT (NeMo path)", ours, theirs), ours, theirs


def test_tdt_through_sherpa_onnx_nemo_path(tmp_path, utterances):
    """Blank last, durations as the argmax index, the stateless context carried in the decoder
    states: with the features of that path, sherpa-onnx decodes what our TDT search decodes. A
    random model emits many tokens with varied durations, which exercises every part of it."""
    package = random_package(tmp_path / "tdt", head="tdt", seed=3)
    with pytest.raises(OnnxExportError, match="exports offline only"):
        export_onnx(package, tmp_path / "x", streaming=True)
    same, ours, _ = _tdt_tokens_equal(package, tmp_path / "onnx", utterances[:8])
    report = json.loads((tmp_path / "onnx" / "export.json").read_text())
    assert "mel_filters='kaldi' (sherpa-onnx: 'librosa')" in report["notes"][0]  # trained on Kaldi
    assert sum(map(len, ours)) > 50 * len(ours) and same == 8


def _with_context_size(monkeypatch, context_size: int) -> None:
    """Packages made by :func:`random_package` get a predictor of ``context_size`` tokens."""
    import asr.testing.packages as packages

    tiny_config = packages.tiny_config

    def config(*args, **kwargs):
        cfg = tiny_config(*args, **kwargs)
        head = dataclasses.replace(cfg.heads.transducer, context_size=context_size)
        return dataclasses.replace(cfg, heads=dataclasses.replace(cfg.heads, transducer=head))

    monkeypatch.setattr(packages, "tiny_config", config)


@pytest.mark.parametrize("context_size", [1, 3])
def test_tdt_of_any_context_size_decodes_in_sherpa_onnx(tmp_path, utterances, monkeypatch,
                                                       context_size):
    """sherpa-onnx makes both NeMo decoder states ``(pred_rnn_layers, N, pred_hidden)``. The
    second was exported 1 wide, and the self-check fed it so: a TDT whose predictor sees 3
    tokens (``pred_hidden`` 2) exported, and sherpa-onnx refused its first decoder call
    ("Got invalid dimensions for input: states_1")."""
    _with_context_size(monkeypatch, context_size)
    package = random_package(tmp_path / "tdt", head="tdt", seed=3)
    assert load_package(package).build_model("cpu").heads["transducer"].predictor.context_size \
        == context_size
    same, ours, _ = _tdt_tokens_equal(package, tmp_path / "onnx", utterances[:4])
    assert same == 4 and sum(map(len, ours)) > 4 * 4


@pytest.mark.slow
def test_trained_tdt_through_sherpa_onnx_and_its_feature_cost(tmp_path, utterances):
    """A TDT trained on Kaldi fbank: the NeMo path decodes what our search decodes on that
    path's features, and those features cost it (measured: the tiny model says nothing)."""
    from asr.testing.packages import trained_tiny_package

    tdt = trained_tiny_package(tmp_path / "models", head="tdt")
    same, _, theirs = _tdt_tokens_equal(tdt.package_dir, tmp_path / "onnx", utterances)
    assert same == len(utterances)
    ours_kaldi = [r.token_ids for r in load_model(tdt.package_dir).transcribe(utterances)]
    print(f"TDT: {sum(map(len, ours_kaldi))} tokens from our runtime (Kaldi fbank), "
          f"{sum(map(len, theirs))} from sherpa-onnx (NeMo-path features)")


def test_librosa_mel_filters_are_the_nemo_path_front_end(utterances):
    """``mel_filters: librosa`` (+ low 0 Hz, no DC removal) computes what sherpa-onnx computes
    for NeMo-style transducers, offline and online."""
    from asr.data.config import DataConfig
    from asr.features.fbank import make_lhotse_fbank
    from asr.features.online import OnlineFbank

    wave = np.concatenate([np.zeros(2000, np.float32), utterances[1]])
    ours = compute_fbank(wave, RATE, SHERPA_NEMO_FBANK)
    assert np.abs(ours.numpy() - _nemo_features(wave).numpy()).max() < 1e-3
    online = OnlineFbank(SHERPA_NEMO_FBANK, make_lhotse_fbank(SHERPA_NEMO_FBANK))
    pieces = [online.accept_waveform(wave[i: i + 1234]) for i in range(0, wave.shape[0], 1234)]
    assert torch.allclose(torch.cat([*pieces, online.input_finished()]), ours, atol=1e-4)
    assert sherpa_fbank_problem(SHERPA_NEMO_FBANK, nemo=True) is None
    assert "mel_filters='librosa'" in sherpa_fbank_problem(SHERPA_NEMO_FBANK)
    with pytest.raises(ValueError, match="needs data.on_the_fly_feats=true"):
        DataConfig(fbank=SHERPA_NEMO_FBANK)
    with pytest.raises(ValueError, match="mel_filters"):
        FbankConfig(mel_filters="htk")


@pytest.mark.slow
def test_tdt_trained_on_the_nemo_front_end_decodes_in_sherpa_onnx(tmp_path, utterances):
    """Trained on sherpa-onnx's NeMo-path features, a TDT exports without a warning and
    sherpa-onnx decodes our runtime's tokens."""
    from asr.testing.tiny import train_tiny_experiment

    fbank = {"mel_filters": "librosa", "low_freq": 0.0, "remove_dc_offset": False}
    exp = train_tiny_experiment(tmp_path / "work", head="tdt", fbank=fbank)
    export_package(exp.exp_dir, tmp_path / "package")
    report = export_onnx(tmp_path / "package", tmp_path / "onnx")
    assert report.notes == []
    same, ours, theirs = _tdt_tokens_equal(tmp_path / "package", tmp_path / "onnx2", utterances)
    runtime_ids = [r.token_ids for r in load_model(
        tmp_path / "package", search=SearchConfig(max_symbols_per_frame=5)).transcribe(utterances)]
    print(f"TDT on the NeMo front end: {sum(map(len, runtime_ids))} tokens from our runtime, "
          f"{sum(map(len, theirs))} from sherpa-onnx")
    assert same == len(utterances) and theirs == runtime_ids


_SHERPA_HOTWORDS = """
import sys, numpy as np, sherpa_onnx
d, hotwords = sys.argv[1], sys.argv[2]
recognizer = sherpa_onnx.OfflineRecognizer.from_transducer(
    encoder=d + "/encoder.onnx", decoder=d + "/decoder.onnx", joiner=d + "/joiner.onnx",
    tokens=d + "/tokens.txt", num_threads=1, decoding_method="modified_beam_search",
    hotwords_file=hotwords, hotwords_score=2.0, modeling_unit="bpe", bpe_vocab=d + "/bpe.vocab")
stream = recognizer.create_stream()
stream.accept_waveform(16000, np.random.default_rng(0).uniform(-0.1, 0.1, 16000).astype("float32"))
recognizer.decode_streams([stream])
print("decoded", repr(stream.result.text))
"""


def test_bpe_vocab_loads_in_sherpa_onnx_with_hotwords(tmp_path):
    """A BPE model's export writes bpe.vocab (piece<TAB>score, every piece of tokens.txt), and
    sherpa-onnx loads it with our hotword file (modeling_unit="bpe") and decodes. In a
    subprocess: sherpa-onnx exits the process on a vocabulary or hotword file it cannot read.
    (That the phrases are boosted is measured on the mini_tts model, EXPERIMENTS.md: sherpa-onnx
    boosts only tokens already in its top-k, which a random model's never are.)"""
    import subprocess
    import sys

    from asr.tokenizers.bpe import BpeTokenizer

    exp = random_experiment(tmp_path, head="transducer", bpe_vocab_size=30)
    export_package(exp, tmp_path / "package")
    out = tmp_path / "onnx"
    export_onnx(tmp_path / "package", out)
    tokenizer = BpeTokenizer.from_file(tmp_path / "tokenizer" / "bpe.model")
    lines = (out / "bpe.vocab").read_text(encoding="utf-8").splitlines()
    assert [line.split("\t")[0] for line in lines] == tokenizer.pieces()
    assert [float(line.split("\t")[1]) for line in lines] == tokenizer.piece_scores()
    hotwords = tmp_path / "hotwords.txt"
    hotwords.write_text("GREEN DOOR\nSEVEN APPLES :3.5\n")
    run = subprocess.run([sys.executable, "-c", _SHERPA_HOTWORDS, str(out), str(hotwords)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "decoded" in run.stdout, run.stderr


def test_hotwords_with_a_character_tokenizers_export_say_it_has_no_bpe_vocab(tmp_path):
    """The error told a user of a character model to "export it again with this version",
    which writes no bpe.vocab either (sherpa-onnx reads hotwords through a BPE vocabulary)."""
    exp = random_experiment(tmp_path, head="transducer")
    export_package(exp, tmp_path / "package")
    export_onnx(tmp_path / "package", tmp_path / "onnx")
    hotwords = tmp_path / "hotwords.txt"
    hotwords.write_text("HELLO\n")
    with pytest.raises(FileNotFoundError, match="a character tokenizer's export has none"):
        load_recognizer(tmp_path / "onnx", decoding_method="modified_beam_search",
                        hotwords_file=hotwords)


@pytest.mark.parametrize("head,bpe_vocab_size", [("transducer", 30), ("tdt", 30), ("ctc", 0)])
def test_tokens_and_bpe_vocab_are_the_tokenizers_for_every_id(tmp_path, head, bpe_vocab_size):
    """tokens.txt has every id's piece, the specials included (the NeMo layout's ids one below
    ours, blank last), bpe.vocab (BPE only) every piece with its score in id order, and the ids
    our driver reads back from sherpa-onnx's result tokens (a leading ▁ shown as a space) are
    the tokenizer's own."""
    from asr.tokenizers.bpe import BpeTokenizer

    exp = random_experiment(tmp_path, head=head, bpe_vocab_size=bpe_vocab_size)
    export_package(exp, tmp_path / "package")
    out = tmp_path / "onnx"
    export_onnx(tmp_path / "package", out, head="ctc" if head == "ctc" else None)
    tokenizer = load_package(tmp_path / "package").tokenizer
    ids = list(range(tokenizer.vocab_size))
    order = ids[1:] + ids[:1] if head == "tdt" else ids
    lines = (out / "tokens.txt").read_text(encoding="utf-8").splitlines()
    assert lines == [f"{tokenizer.id_to_piece(i)} {n}" for n, i in enumerate(order)]
    assert {tokenizer.id_to_piece(i) for i in range(3)} == {"<blk>", "<sos/eos>", "<unk>"}
    if isinstance(tokenizer, BpeTokenizer):
        vocab = (out / "bpe.vocab").read_text(encoding="utf-8").splitlines()
        assert vocab == [f"{tokenizer.id_to_piece(i)}\t{score}"
                         for i, score in zip(ids, tokenizer.piece_scores())]
    else:
        assert not (out / "bpe.vocab").exists()
    shown = [" " + p[1:] if p.startswith("\u2581") else p for p in map(tokenizer.id_to_piece, ids)]
    assert load_recognizer(out).token_ids(shown) == tuple(ids)


def test_sherpa_onnx_reads_unk_as_blank_in_the_transducer_layouts_only(tmp_path):
    """What docs/ONNX.md says of ``<unk>`` (id 2 here, blank 0: every tokenizer's ids):
    sherpa-onnx's transducer searches take the ``<unk>`` of tokens.txt for a blank (icefall's
    convention), its CTC search emits it as ours does. A model whose joiner and CTC head give
    ``<unk>`` the best logit on every frame: ours emits it on every frame (one symbol each),
    sherpa-onnx's offline and streaming transducer nothing, both CTC searches one."""
    exp = random_experiment(tmp_path / "unk", head="transducer", seed=2)
    checkpoint = safe_torch_load(checkpoint_path(exp, 1))
    for layer in ("heads.transducer.joiner.output", "heads.ctc.output"):
        checkpoint["model"][f"{layer}.weight"].zero_()
        bias = checkpoint["model"][f"{layer}.bias"]
        bias.zero_()
        bias[UNK_ID] = 3.0
    torch.save(checkpoint, checkpoint_path(exp, 1))
    package = tmp_path / "package"
    export_package(exp, package, overwrite=True)
    wave = (np.random.default_rng(0).standard_normal(RATE) * 0.1).astype(np.float32)
    frames = subsampled_length(num_frames(RATE, FbankConfig()))
    for name, options, searcher, theirs in (
            ("offline", {}, "transducer_greedy", ()), ("streaming", {"streaming": True},
                                                       "transducer_greedy", ()),
            ("ctc", {"head": "ctc"}, "ctc_greedy", (UNK_ID,))):
        export_onnx(package, tmp_path / name, **options)
        model = load_model(package, searcher=searcher, search=GREEDY_ONE_PER_FRAME)
        [ours] = model.transcribe([wave])
        assert ours.token_ids == ((UNK_ID,) * frames if name != "ctc" else (UNK_ID,)), name
        [result] = load_recognizer(tmp_path / name).decode([wave])
        assert result.token_ids == theirs, name


def test_force_replaces_only_an_earlier_export(tmp_path):
    """force (--overwrite) never deletes the package it exports (the output directory being it
    or holding it) nor a directory of other files; the export is readable by others as the
    package is."""
    package = random_package(tmp_path / "rnnt", head="transducer", seed=2)
    for out in (package, package.parent):
        with pytest.raises(OnnxExportError, match="which it is made from"):
            export_onnx(package, out, force=True)
    load_package(package)
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    with pytest.raises(OnnxExportError, match="holds no export.json"):
        export_onnx(package, other, force=True)
    assert (other / "keep.txt").is_file()
    out = tmp_path / "onnx"
    export_onnx(package, out, head="ctc")
    export_onnx(package, out, force=True)
    assert (out / "encoder.onnx").is_file() and not (out / "model.onnx").exists()
    assert out.stat().st_mode & 0o777 == 0o777 & ~current_umask()


def test_a_model_without_left_context_has_no_streaming_layout(tmp_path, capsys, caplog):
    """left_chunks = 0 streams in our runtime, but sherpa-onnx's layout needs a cache: that is
    no layout (skipped under --if-supported), not a crash."""
    package = random_package(tmp_path / "l0", head="transducer", left_chunks=0)
    with pytest.raises(NoLayoutError, match="left_chunks=0"):
        export_onnx(package, tmp_path / "x", streaming=True)
    assert main(["export-onnx", "--model", str(package), "--output-dir", str(tmp_path / "x"),
                 "--streaming", "--if-supported"]) == 0
    assert "nothing written" in caplog.text and not (tmp_path / "x").exists()


def test_unlimited_left_context_has_no_streaming_layout(tmp_path):
    """left_chunks = -1 streams in our runtime with a cache that grows with the stream;
    sherpa-onnx's states have fixed shapes, so the streaming export says so and writes nothing
    (a bounded left context still exports)."""
    package = random_package(tmp_path / "unlimited", head="transducer", left_chunks=-1)
    with pytest.raises(NoLayoutError, match=r"left_chunks=-1\).*--left-chunks N"):
        export_onnx(package, tmp_path / "x", streaming=True)
    assert not (tmp_path / "x").exists()
    report = export_onnx(package, tmp_path / "y", streaming=True, left_chunks=1)
    assert report.layout == "streaming_transducer"


def test_inputs_shorter_than_the_subsampling_window_decode_to_nothing(random_exports):
    """An input under 7 frames (a 40 ms utterance) has no encoder frame: sherpa-onnx decodes it
    to nothing, as our runtime does, in every layout (it raised when the trace froze our
    subsampling's padding of such inputs, a Python branch on the shape)."""
    short = [(np.random.default_rng(0).standard_normal(n) * 0.01).astype(np.float32)
             for n in (640, 100)]
    for name, (source, directory, report) in random_exports.items():
        recognizer = load_recognizer(directory)
        assert [r.text for r in recognizer.decode(short)] == ["", ""], name
        if name != "streaming":  # the self-check runs them
            assert any("[6, 3]" in line for line in report.checks)
        assert [r.text for r in load_model(source).transcribe(short)] == ["", ""]


@torch.no_grad()
def test_offline_graphs_give_pytorch_frames_for_every_length(random_exports):
    """One graph for every input length, run as exported: the offline encoder graphs
    (transducer, CTC, TDT) give PyTorch's frames, ``subsampled_length(T)`` of them, for T from
    0 to 13 and a few longer. The subsampling and the convolution module run on any length
    without a branch on the shape that the trace freezes; the export used to append 6 frames
    to every input instead, and its graphs gave 1 or 2 frames more than PyTorch."""
    generator = torch.Generator().manual_seed(0)
    for name, kind, graph in (("offline", "rnnt", "encoder.onnx"), ("ctc", "ctc", "model.onnx"),
                              ("tdt", "tdt", "encoder.onnx")):
        source, directory, _ = random_exports[name]
        session = onnxruntime.InferenceSession(str(directory / graph),
                                               providers=["CPUExecutionProvider"])
        inputs = [i.name for i in session.get_inputs()]
        model = load_package(source).build_model("cpu").eval()
        head = next(model.heads[h] for h, k in model.head_kinds().items() if k == kind)
        for frames in [*range(14), 21, 40, 101]:
            x = torch.randn(2, frames, model.encoder.input_dim, generator=generator)
            lens = torch.tensor([frames, frames // 2])
            enc, enc_lens = model.encoder(x, lens)
            want = (torch.log_softmax(head.logits(enc), dim=-1) if kind == "ctc"
                    else head.joiner.encoder_proj(enc))
            feed = x.transpose(1, 2).contiguous() if kind == "tdt" else x
            got, got_lens = session.run(None, {inputs[0]: feed.numpy(), inputs[1]: lens.numpy()})
            if kind == "tdt":
                got = got.transpose(0, 2, 1)
            assert want.shape[1] == subsampled_length(frames)
            assert got.shape == tuple(want.shape), (name, frames)
            assert got_lens.tolist() == enc_lens.tolist(), (name, frames)
            for b, n in enumerate(enc_lens.tolist()):
                np.testing.assert_allclose(got[b, :n], want[b, :n].numpy(), atol=1e-4, rtol=1e-4)


def test_sherpa_onnx_decodes_edge_lengths_as_ours(random_exports):
    """One batch of the shortest audio with an encoder frame (7 feature frames), audio one
    encoder frame over a chunk (c + 1 frames), 1 s and 12 s (299 encoder frames, beyond the
    export's example and the self-check's lengths): sherpa-onnx's greedy tokens are ours for
    the offline transducer and CTC graphs; the streaming graph's too on those lengths padded to
    whole chunks, 75 chunks for the longest (its cache of 8 chunks rolled over 9 times). A
    random model emits a token on nearly every frame, so a frame wrong anywhere shows."""
    source, _, _ = random_exports["offline"]
    chunk_size = load_package(source).config.encoder.chunk_size
    feats = [7, 4 * (chunk_size + 1) + 3, 100, 1200]
    assert [subsampled_length(n) for n in feats[:2]] == [1, chunk_size + 1]
    rng = np.random.default_rng(5)
    waves = [(rng.standard_normal(n * 160 - 40) * 0.1).astype(np.float32) for n in feats]
    assert [num_frames(w.shape[0], FbankConfig()) for w in waves] == feats
    for name, searcher in (("offline", "transducer_greedy"), ("ctc", "ctc_greedy")):
        model = load_model(source, searcher=searcher, search=GREEDY_ONE_PER_FRAME)
        ours = [r.token_ids for r in model.transcribe(waves)]
        theirs = [r.token_ids for r in load_recognizer(random_exports[name][1]).decode(waves)]
        assert theirs == ours, name
        assert len(ours[-1]) > 200 or name == "ctc"
    padded = [_whole_chunks(w, chunk_size) for w in waves]
    model = load_model(source, searcher="transducer_greedy", search=GREEDY_ONE_PER_FRAME)
    ours = _ours_streaming(model, padded)
    directory = random_exports["streaming"][1]
    recognizer = sherpa_onnx.OnlineRecognizer.from_transducer(
        encoder=str(directory / "encoder.onnx"), decoder=str(directory / "decoder.onnx"),
        joiner=str(directory / "joiner.onnx"), tokens=str(directory / "tokens.txt"),
        num_threads=1, decoding_method="greedy_search")
    assert _sherpa_streaming(recognizer, directory, padded) == ours
    assert len(ours[-1]) > 200


def test_an_endpoint_on_the_last_chunk_adds_no_empty_segment_in_the_sherpa_engine(
        random_exports):
    """The server's sherpa-onnx engine ends a stream as our runtime does: when an endpoint
    rule fires on its last chunk, that chunk's segment is the stream's last, final one. The
    stream used to be done only one decode call later, so the endpoint was taken, and the
    stream then ended with an empty final segment after it (a client got a final result
    with no text)."""
    source, directory, _ = random_exports["streaming"]
    wave = (np.random.default_rng(0).standard_normal(RATE) * 0.1).astype(np.float32)
    # rule 3 fires after 0.9 s, on the last chunk of 1 s (0.96 s: 6 chunks of 0.16 s)
    endpoint = EndpointConfig(rule3=EndpointRule(False, 0.0, 0.9))
    for recognizer in (load_streaming_recognizer(directory, endpoint=endpoint),
                       load_model(source).streaming_recognizer(endpoint=endpoint)):
        segments = decode_with_endpoints(recognizer, recognizer.new_stream(), wave, RATE)
        assert [(s.index, s.is_final) for s in segments] == [(0, True)], type(recognizer)
        assert segments[0].token_ids and segments[0].end == pytest.approx(0.96)


@pytest.mark.parametrize("seconds", [0.0, 0.33, 0.8, 0.805, 1.2, 1.44, 1.6, 2.4, 20.0])
def test_sherpa_rule_seconds_meet_our_rule_at_the_same_frame(seconds):
    """sherpa-onnx's test of a rule (endpoint.cc: ``float(frames) * 0.01f >= rule``, float32)
    holds, with the value we give it, from the first frame count our rule's holds at."""
    frames = np.arange(0, 3000)
    lengths = frames.astype(np.float32) * np.float32(0.01)  # sherpa-onnx's, in float32
    theirs = lengths >= np.float32(sherpa_rule_seconds(seconds))
    ours = frames * 0.01 + ENDPOINT_TOLERANCE_SECONDS >= seconds
    assert (theirs == ours).all()
    if seconds in (0.8, 1.2, 1.6, 2.4):  # the value as written: a frame (a chunk) later
        assert (lengths >= np.float32(seconds)).sum() == ours.sum() - 1
    assert sherpa_rule_seconds(math.inf) == math.inf


@pytest.mark.parametrize("length", [0.8, 1.44])
def test_the_sherpa_engine_ends_segments_where_ours_does(random_exports, length):
    """Rule 3 (the longest segment) of 0.8 s or 1.44 s, a whole number of 0.16 s chunks: our
    runtime ended each segment on that chunk, sherpa-onnx one chunk later (0.96 s, 1.6 s), its
    float32 80 * 0.01 falling short of 0.8. The last segment ends with the input's last encoder
    frame in both (1.96 s of 2 s): sherpa-onnx's tokens on the frames its flush padded get that
    frame's time."""
    source, directory, _ = random_exports["streaming"]
    wave = (np.random.default_rng(0).standard_normal(2 * RATE) * 0.1).astype(np.float32)
    endpoint = EndpointConfig(rule1=EndpointRule(False, 100.0, 0.0),
                              rule2=EndpointRule(True, 100.0, 0.0),
                              rule3=EndpointRule(False, 0.0, length))
    ends = []
    for recognizer in (load_streaming_recognizer(directory, endpoint=endpoint),
                       load_model(source).streaming_recognizer(endpoint=endpoint)):
        segments = decode_with_endpoints(recognizer, recognizer.new_stream(), wave, RATE)
        ends.append([round(s.end, 3) for s in segments])
    expected = [round(length * k, 3) for k in range(1, int(2 / length) + 1)] + [1.96]
    assert ends == [expected, expected]


@pytest.mark.parametrize(("seconds", "last_frame_end"), [(3.0, 2.96), (2.5, 2.44)])
def test_no_time_of_the_sherpa_engine_is_past_the_end_of_its_input(
        random_exports, seconds, last_frame_end):
    """sherpa-onnx decodes no partial last chunk, so the engine's flush pads the input to whole
    chunks, and the random model puts tokens on the padded frames: a 3.0 s input's last
    segment ended at 3.04 s (2.5 s: 2.56 s), past the audio. Those tokens now get the time of
    the input's last encoder frame, which is where our runtime's last segment ends (2.96 s,
    2.44 s), fed whole or in 0.1 s pieces."""
    source, directory, _ = random_exports["streaming"]
    wave = (np.random.default_rng(1).standard_normal(int(seconds * RATE)) * 0.1)
    wave = wave.astype(np.float32)
    model = load_model(source).streaming_recognizer()
    ours = decode_with_endpoints(model, model.new_stream(), wave, RATE)
    assert ours[-1].end == pytest.approx(last_frame_end)
    engine = load_streaming_recognizer(directory)
    for piece in (None, RATE // 10):
        segments = decode_with_endpoints(engine, engine.new_stream(), wave, RATE, piece)
        last = segments[-1]
        assert last.token_ids and last.end == pytest.approx(last_frame_end), piece
        assert last.end <= seconds and max(last.timestamps) < last.end
        assert all(w.end <= last.end for w in last.words)


def test_the_printed_loader_call_decodes_an_8khz_model_as_ours(tmp_path, monkeypatch):
    """The loader call that export.json records and asr export-onnx prints must carry the
    model's rate: without sample_rate=, sherpa-onnx resamples to 16 kHz and computes other
    features."""
    package = random_package(tmp_path / "k8", head="transducer", seed=4,
                             fbank={"sample_rate": 8000})
    report = export_onnx(package, tmp_path / "onnx")
    rng = np.random.default_rng(0)
    waves = [(rng.standard_normal(16000) * 0.1).astype(np.float32) for _ in range(3)]
    model = load_model(package, searcher="greedy", search={"max_symbols_per_frame": 1})
    ours = [r.token_ids for r in model.transcribe(waves, sample_rate=8000)]
    assert all(ours)
    monkeypatch.chdir(tmp_path / "onnx")
    recognizer = eval(report.loader, {"sherpa_onnx": sherpa_onnx})  # the call as printed
    streams = []
    for wave in waves:
        streams.append(recognizer.create_stream())
        streams[-1].accept_waveform(8000, wave)
    recognizer.decode_streams(streams)
    assert _token_ids(tmp_path / "onnx", [s.result.tokens for s in streams]) == ours


def test_a_convolution_without_cache_has_no_streaming_layout(tmp_path):
    package = random_package(tmp_path / "k1", head="transducer",
                             encoder_overrides={"conv_kernel_size": 1})
    with pytest.raises(NoLayoutError, match="conv_kernel_size >= 3"):
        export_onnx(package, tmp_path / "x", streaming=True)
    assert not (tmp_path / "x").exists() and [p.name for p in tmp_path.iterdir()] == ["k1"]


def test_the_self_check_of_a_model_trained_with_dither_runs_without_it(tmp_path):
    """The self-check computed its features with the training dither (0.1: the features of
    noise, ~0.9 log units above the plain ones, different at every export) and export.json
    recorded it, though sherpa-onnx never dithers. Now both are the recognition front end:
    the dithered package's check sees the same features as the plain one's."""
    plain = random_package(tmp_path / "plain", head="ctc", seed=2)
    dithered = random_package(tmp_path / "dither", head="ctc", seed=2, fbank={"dither": 0.1})
    reports = [export_onnx(package, tmp_path / f"onnx{i}")
               for i, package in enumerate((plain, dithered))]
    assert reports[1].checks == reports[0].checks
    check_feats = [_check_features(FbankConfig(dither=d), [57])[0] for d in (0.1, 0.0)]
    assert torch.equal(check_feats[0], check_feats[1])
    for i in range(2):
        features = json.loads((tmp_path / f"onnx{i}" / "export.json").read_text())["features"]
        assert features["dither"] == 0.0
