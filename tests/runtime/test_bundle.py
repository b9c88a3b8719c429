"""The runtime bundle: what a package's search costs to set up per call."""

from __future__ import annotations

import numpy as np
import torch

from asr.decoding.lm import NgramLM
from asr.decoding.ngram_train import estimate_kneser_ney, write_arpa
from asr.package import export_package
from asr.runtime.offline import load_model
from asr.testing.packages import random_experiment, random_package
from asr.testing.tiny import TINY_SENTENCES
from asr.tokenizers import load_tokenizer


def test_the_lm_is_read_once_whatever_the_hotwords(tmp_path, monkeypatch):
    """Every call with hotwords builds its searcher again; the package's LM (megabytes of ARPA
    text for a real recipe) was read again each time, twice per ``asr transcribe --hotwords``."""
    exp = random_experiment(tmp_path / "work", head="transducer")
    tokenizer = load_tokenizer(tmp_path / "work" / "tokenizer")
    sentences = [tokenizer.encode(text) for text in TINY_SENTENCES]
    write_arpa(estimate_kneser_ney(sentences, 2, range(tokenizer.vocab_size)), tmp_path / "lm.arpa")
    package = tmp_path / "pkg"
    export_package(exp, package, searcher="beam",
                   search=[f"search.lm_path={tmp_path / 'lm.arpa'}", "search.lm_weight=0.3"])
    reads = []
    original = NgramLM.from_arpa.__func__

    def counted(cls, path, *args, **kwargs):
        reads.append(path)
        return original(cls, path, *args, **kwargs)

    monkeypatch.setattr(NgramLM, "from_arpa", classmethod(counted))
    model = load_model(package)
    wave = (np.random.default_rng(0).standard_normal(16000) * 0.1).astype(np.float32)
    plain = model.transcribe(wave)[0]
    for phrases in ("OPEN DOOR", "GREEN;SEVEN", ["HELLO WORLD"]):
        model.transcribe(wave, hotwords=phrases)
    assert model.transcribe(wave)[0].token_ids == plain.token_ids
    assert len(reads) == 1
    assert model.searcher().lm is not None  # the beam search fuses it


def test_a_searcher_without_lm_is_not_warned_of_the_packages_own_lm(tmp_path, caplog):
    """A package of beam + LM decoded with ``--searcher greedy`` (README's "faster" example, and
    ``transcribe(searcher="greedy")``) warned "the LM given (search.lm_path) is not used" at
    every run, offline and streaming, though no LM was given: the package carries its LM for
    its own searcher. An LM given at run time to such a searcher is still warned of."""
    exp = random_experiment(tmp_path / "work", head="transducer")
    tokenizer = load_tokenizer(tmp_path / "work" / "tokenizer")
    sentences = [tokenizer.encode(text) for text in TINY_SENTENCES]
    lm = estimate_kneser_ney(sentences, 2, range(tokenizer.vocab_size))
    write_arpa(lm, tmp_path / "lm.arpa")
    write_arpa(lm, tmp_path / "other.arpa")
    package = tmp_path / "pkg"
    export_package(exp, package, searcher="beam",
                   search=[f"search.lm_path={tmp_path / 'lm.arpa'}", "search.lm_weight=0.3"])
    wave = (np.random.default_rng(0).standard_normal(16000) * 0.1).astype(np.float32)
    model = load_model(package)
    caplog.clear()
    model.transcribe(wave, searcher="greedy")
    model.transcribe(wave, searcher="greedy", streaming=True)
    load_model(package, searcher="greedy").transcribe(wave)
    assert "fuses no LM" not in caplog.text
    assert model.searcher().lm is not None  # the package's own searcher still fuses it
    given = load_model(package, search=[f"search.lm_path={tmp_path / 'other.arpa'}"])
    given.transcribe(wave, searcher="greedy")
    assert "searcher 'transducer_greedy' fuses no LM" in caplog.text


def test_a_searcher_that_does_not_bias_is_not_warned_of_the_packages_own_hotwords(
        tmp_path, caplog):
    """A package whose beam search biases toward its own hotword file, decoded with
    ``--searcher greedy``, warned "those given are ignored" though none were given; phrases
    given at run time to such a searcher are still warned of."""
    exp = random_experiment(tmp_path / "work", head="transducer")
    (tmp_path / "hotwords.txt").write_text("OPEN DOOR\nHELLO WORLD\n")
    package = tmp_path / "pkg"
    export_package(exp, package, searcher="beam",
                   search=[f"search.hotwords_file={tmp_path / 'hotwords.txt'}",
                           "search.hotwords=GREEN"])
    wave = (np.random.default_rng(0).standard_normal(16000) * 0.1).astype(np.float32)
    model = load_model(package)
    caplog.clear()
    model.transcribe(wave, searcher="greedy")
    model.transcribe(wave, searcher="greedy", streaming=True)
    assert "does not use hotwords" not in caplog.text
    assert model.searcher().context is not None  # the package's own searcher still biases
    model.transcribe(wave, searcher="greedy", hotwords="SEVEN")
    assert "searcher 'transducer_greedy' does not use hotwords" in caplog.text


def test_a_searcher_named_per_call_of_an_untrained_head_is_warned_of_once(tmp_path, caplog):
    """``transcribe(searcher=...)`` (offline, streaming, with hotwords) of a head that
    ``heads.loss_weights`` leaves at 0 decoded without a word, while ``load_model(searcher=)``,
    ``asr decode`` and ``asr export-package`` warn of it: the same warning, once per searcher
    over the model, not at every call."""
    exp = random_experiment(tmp_path / "work", head="transducer")
    checkpoint = torch.load(exp / "epoch-1.pt", weights_only=True)
    checkpoint["extra"]["config"]["heads"]["loss_weights"] = {"transducer": 1.0, "ctc": 0.0}
    torch.save(checkpoint, exp / "epoch-1.pt")
    export_package(exp, tmp_path / "pkg")
    wave = (np.random.default_rng(0).standard_normal(16000) * 0.1).astype(np.float32)
    model = load_model(tmp_path / "pkg")
    model.transcribe(wave)
    model.transcribe(wave, searcher="transducer_beam", hotwords="OPEN DOOR")
    assert "leaves untrained" not in caplog.text
    warning = ("searcher 'ctc_greedy' decodes with the ctc head, which heads.loss_weights.ctc: 0 "
               "leaves untrained")
    model.transcribe(wave, searcher="ctc_greedy")
    assert caplog.text.count(warning) == 1
    model.transcribe(wave, searcher="ctc_greedy", streaming=True)
    model.transcribe(wave, searcher="ctc_prefix_beam", hotwords="OPEN DOOR")
    model.transcribe(wave, searcher="ctc_prefix_beam", hotwords="GREEN")
    assert caplog.text.count(warning) == 1
    assert caplog.text.count("searcher 'ctc_prefix_beam' decodes with the ctc head") == 1
    caplog.clear()  # another model: warned of again
    load_model(tmp_path / "pkg").transcribe(wave, searcher="ctc_greedy", streaming=True)
    assert caplog.text.count(warning) == 1


def test_the_packages_own_searcher_is_checked_with_the_search_options_given(tmp_path, caplog):
    """A package of ``cif_beam`` exported with ``search.ctc_weight=0`` reads no CTC head, and
    its ``heads.loss_weights.ctc: 0`` is not warned of; loaded with ``search={"ctc_weight":
    0.3}`` its default searcher scores with that untrained head, and the check of the package's
    own searcher, skipped as "warned of when it was exported", said nothing: it is checked with
    the options the runtime searches with."""
    exp = random_experiment(tmp_path / "work", head="cif_ctc")
    checkpoint = torch.load(exp / "epoch-1.pt", weights_only=True)
    checkpoint["extra"]["config"]["heads"]["loss_weights"] = {"cif": 1.0, "ctc": 0.0}
    torch.save(checkpoint, exp / "epoch-1.pt")
    export_package(exp, tmp_path / "pkg", searcher="cif_beam", search=["search.ctc_weight=0"])
    wave = (np.random.default_rng(0).standard_normal(16000) * 0.1).astype(np.float32)
    load_model(tmp_path / "pkg").transcribe(wave)
    load_model(tmp_path / "pkg", search={"beam_size": 2}).transcribe(wave)
    assert "leaves untrained" not in caplog.text
    load_model(tmp_path / "pkg", search={"ctc_weight": 0.3}).transcribe(wave)
    assert caplog.text.count("searcher 'cif_beam' also scores with the ctc head "
                             "(search.ctc_weight 0.3), which heads.loss_weights.ctc: 0 leaves "
                             "untrained") == 1


def test_a_model_trained_with_dither_recognizes_without_it(tmp_path):
    """data.fbank.dither is training noise; recognition used it too: the same audio gave other
    transcripts from call to call, and streaming refused (OnlineFbank needs dither 0)."""
    model = load_model(random_package(tmp_path, head="ctc", fbank={"dither": 0.1}))
    assert model.runtime.fbank.dither == 0.0
    wave = (np.random.default_rng(0).standard_normal(16000) * 0.1).astype(np.float32)
    first = model.transcribe(wave)[0]
    assert all(model.transcribe(wave)[0].token_ids == first.token_ids for _ in range(3))
    assert model.transcribe(wave, streaming=True)[0].token_ids is not None


def test_one_encoder_frame_length_in_samples_and_seconds(tmp_path):
    """The offline window grid, the token times and the streaming chunk length all count in
    one encoder frame: ``subsampling_factor`` feature frames of ``hop_samples``."""
    model = load_model(random_package(tmp_path, head="ctc"))
    runtime = model.runtime
    frame = runtime.fbank.hop_samples * runtime.model.encoder.subsampling_factor
    assert runtime.frame_samples == frame == 640  # 4 frames of 10 ms at 16 kHz
    assert runtime.frame_seconds == frame / runtime.sample_rate == 0.04
    assert runtime.results.frame_seconds == runtime.frame_seconds
    assert model.window_grid == frame * max(1, runtime.chunk_size)
    wave = (np.random.default_rng(0).standard_normal(16000) * 0.1).astype(np.float32)
    result = model.transcribe(wave)[0]
    assert all(round(t / runtime.frame_seconds, 6).is_integer() for t in result.timestamps)
