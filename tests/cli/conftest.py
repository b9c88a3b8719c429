"""A tiny synthesized LibriSpeech-layout corpus, prepared once per session for the CLI tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from train_helpers import SIZES, train_tiny


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    """root/{LibriSpeech, manifests, fbank, lang_char}: TTS corpus, cuts, features, characters."""
    from asr.data.fbank import compute_fbank_for_parts
    from asr.data.librispeech import prepare_manifests
    from asr.synth.synthesize import synthesize_corpus
    from asr.tokenizers.char import build_char_tokenizer
    from asr.tokenizers.transcripts import read_transcripts

    root = tmp_path_factory.mktemp("tiny_corpus")
    result = synthesize_corpus(root, SIZES, seed=3, num_jobs=1, top_words=300, max_words=6,
                               progress=False)
    parts = list(SIZES)
    prepare_manifests(result.corpus_dir, root / "manifests", parts)
    compute_fbank_for_parts(root / "manifests", root / "fbank", parts)
    texts = read_transcripts([result.corpus_dir / "train-clean-5"])
    build_char_tokenizer(texts).save(root / "lang_char")
    return root


@pytest.fixture(scope="session")
def trained(tmp_path_factory, tiny_corpus) -> Path:
    """The experiment directory of one uninterrupted 2-epoch tiny run."""
    tmp_path = tmp_path_factory.mktemp("trained")
    assert train_tiny(tmp_path, tiny_corpus, "full") == 0
    return tmp_path / "full"


@pytest.fixture(scope="session")
def beam_package(tmp_path_factory, trained) -> Path:
    """A package of the tiny trained experiment whose default searcher is its beam search."""
    from asr.package import export_package

    package = tmp_path_factory.mktemp("beam_package") / "package"
    export_package(trained, package, searcher="beam", search={"beam_size": 2})
    return package
