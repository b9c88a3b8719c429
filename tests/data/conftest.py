"""Fixtures of the data tests (helpers live in librispeech_tree.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from librispeech_tree import TREE, Utt, write_tree


@pytest.fixture
def corpus(tmp_path: Path) -> tuple[Path, dict[str, list[Utt]]]:
    corpus_dir = tmp_path / "LibriSpeech"
    return corpus_dir, write_tree(corpus_dir)


@pytest.fixture(scope="session")
def prepared(tmp_path_factory) -> dict:
    """Corpus -> manifests -> stored fbank (no speed perturbation), shared by the data tests."""
    from asr.data.fbank import compute_fbank_for_parts
    from asr.data.librispeech import prepare_manifests

    root = tmp_path_factory.mktemp("prepared")
    corpus_dir = root / "LibriSpeech"
    utts = write_tree(corpus_dir)
    manifests = prepare_manifests(corpus_dir, root / "manifests", list(TREE))
    fbank = compute_fbank_for_parts(root / "manifests", root / "fbank", list(TREE))
    return {"root": root, "utts": utts, "manifests": manifests, "fbank": fbank}
