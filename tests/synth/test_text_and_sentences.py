"""Text normalisation and sentence pool: hand-computed cases."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from asr.synth.sentences import (
    SentencePool,
    build_pool,
    contained_last,
    default_sources,
    read_raw_sentences,
    shuffle_pool,
    training_segments,
)
from asr.synth.text_norm import normalize_sentence, split_sentences, tts_text


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            "`Oh dear!  I shall be late,' said the Rabbit.",
            "OH DEAR I SHALL BE LATE SAID THE RABBIT",
        ),
        ("A daisy-chain -- isn't it lovely?", "A DAISY CHAIN ISN'T IT LOVELY"),
        ("\u2018Don\u2019t panic\u2019 (he said).", "DON'T PANIC HE SAID"),
        ("I'm here, I think.", "I'M HERE I THINK"),
        ("It costs 5 dollars.", None),  # digit
        ("Meet me at IBM tomorrow.", None),  # acronym
        ("King George III was mad.", None),  # Roman numeral
        ("Ask Dr Smith about it.", None),  # abbreviation
        ("Press x to continue now.", None),  # letter name
        ("Fish & chips are good.", None),  # symbol
        ("Email me at home@example now.", None),
        ("... !!", None),  # no words
    ],
)
def test_normalize_sentence(raw: str, expected: str | None) -> None:
    assert normalize_sentence(raw) == expected


def test_split_sentences_joins_wrapped_lines() -> None:
    text = 'Alice was tired\nof sitting.  Was she?\n"Yes!" she said. end'
    assert split_sentences(text) == [
        "Alice was tired of sitting.",
        "Was she?",
        '"Yes!"',
        "she said.",
        "end",
    ]


def test_tts_text_lowercases_but_keeps_pronoun_i() -> None:
    assert tts_text("I THINK I'M FINE SAID IAN") == "I think I'm fine said ian."


def _write_fortunes(path: Path) -> Path:
    path.write_text(
        "The cat sat on the mat.  The cat ran.\n"
        "\t\t-- Some Author, 1999\n"
        "%\n"
        "The dog sat on the mat.\n"
        "%\n"
        "The cat sat on the mat.\n"  # duplicate
        "%\n"
        "A zebra quietly ate the mat today.\n"
        "%\n"
        "The cat has 9 lives on the mat.\n",  # digit: rejected
        encoding="utf-8",
    )
    return path


def test_read_raw_sentences_drops_attributions(tmp_path: Path) -> None:
    sentences = read_raw_sentences(_write_fortunes(tmp_path / "f"))
    assert sentences[:3] == ["The cat sat on the mat.", "The cat ran.", "The dog sat on the mat."]
    assert not any("Author" in s for s in sentences)


def test_a_gzip_source_text_reads_as_the_plain_one(tmp_path: Path) -> None:
    """Source texts are read by the project's reader (asr.fileio.read_text), which tells gzip by
    its first bytes: the compressed bytes were read as text and gave no sentence."""
    plain = _write_fortunes(tmp_path / "f")
    packed = tmp_path / "f.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    assert read_raw_sentences(packed) == read_raw_sentences(plain)


def test_bytes_that_are_not_utf8_cost_their_sentence_not_the_file(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"The cat sat on the m\xe4t.\n%\nThe dog sat on the mat.\n")
    sentences = read_raw_sentences(path)
    assert sentences == ["The cat sat on the m\ufffdt.", "The dog sat on the mat."]
    assert normalize_sentence(sentences[0]) is None


def test_build_pool_frequency_filter_and_dedup(tmp_path: Path) -> None:
    path = _write_fortunes(tmp_path / "f")
    # Word counts over safe sentences: THE 5, MAT 4, SAT 3, ON 3, CAT 3, A/ATE/DOG/QUIETLY/RAN/
    # TODAY/ZEBRA 1. Top 6 = THE MAT CAT ON SAT + (ties alphabetical) A.
    pool = build_pool([path], min_words=4, max_words=16, top_words=6)
    assert pool.sentences == ("THE CAT SAT ON THE MAT",)
    assert pool.num_candidates == 3  # cat/dog/zebra sentences with >= 4 words, deduplicated
    unrestricted = build_pool([path], min_words=4, max_words=16, top_words=None)
    assert unrestricted.sentences == (
        "A ZEBRA QUIETLY ATE THE MAT TODAY",
        "THE CAT SAT ON THE MAT",
        "THE DOG SAT ON THE MAT",
    )
    short = build_pool([path], min_words=2, max_words=3, top_words=0)
    assert short.sentences == ("THE CAT RAN",)
    assert build_pool([path], top_words=None).digest == unrestricted.digest


def test_segments_are_runs_of_allowed_words_cut_to_max_words(tmp_path: Path) -> None:
    path = _write_fortunes(tmp_path / "f")
    pool = build_pool([path], min_words=2, max_words=4, top_words=6)
    # THE CAT SAT ON | THE MAT (cut at 4), THE CAT (RAN not allowed), SAT ON THE MAT (after DOG),
    # THE MAT (from the zebra sentence); single allowed words (A) are too short.
    assert pool.segments == ("SAT ON THE MAT", "THE CAT", "THE CAT SAT ON", "THE MAT")
    assert (
        build_pool([path], top_words=None).segments == build_pool([path], top_words=None).sentences
    )


def test_training_segments_never_contain_a_held_out_sentence(tmp_path: Path) -> None:
    pool = build_pool([_write_fortunes(tmp_path / "f")], min_words=2, max_words=4, top_words=6)
    kept = training_segments(pool, ["THE CAT"], seed=0)
    assert sorted(kept) == ["SAT ON THE MAT", "THE MAT"]
    assert training_segments(pool, ["THE CAT"], seed=0) == kept  # seeded
    # whole words only: held-out "THE MAT" does not exclude "THE MATS"
    words = SentencePool(("X",), ("X",), 1, (), segments=("ON THE MATS", "ON THE MAT NOW"))
    assert training_segments(words, ["THE MAT"], seed=1) == ["ON THE MATS"]


def test_shuffle_pool_is_seeded(tmp_path: Path) -> None:
    pool = build_pool([_write_fortunes(tmp_path / "f")], top_words=None)
    assert shuffle_pool(pool, 3) == shuffle_pool(pool, 3)
    assert sorted(shuffle_pool(pool, 3)) == list(pool.sentences)
    orders = {tuple(shuffle_pool(pool, seed)) for seed in range(10)}
    assert len(orders) > 1


def test_contained_last_moves_sentences_inside_others_behind_the_rest() -> None:
    order = ["THE CAT SAT ON THE MAT TODAY", "ON THE MATS", "THE CAT SATURDAY", "CAT SAT",
             "THE MAT TODAY", "ON THE MAT", "A DOG"]  # fmt: skip
    # word runs only: "ON THE MAT" is not inside "ON THE MATS", "CAT SAT" not in "CAT SATURDAY"
    assert contained_last(order) == (
        ["THE CAT SAT ON THE MAT TODAY", "ON THE MATS", "THE CAT SATURDAY", "A DOG",
         "CAT SAT", "THE MAT TODAY", "ON THE MAT"],
        4,
    )  # fmt: skip
    assert contained_last([]) == ([], 0)


def test_contained_last_against_brute_force_on_the_fortunes_pool() -> None:
    order = shuffle_pool(build_pool(default_sources(), top_words=1000), 2)
    reordered, num_free = contained_last(order)
    padded = [f" {s} " for s in order]
    inside = {s for s in order if sum(f" {s} " in t for t in padded) > 1}  # itself and another
    assert 0 < len(inside) < len(order) // 20
    assert num_free == len(order) - len(inside)
    assert reordered == [s for s in order if s not in inside] + [s for s in order if s in inside]


def test_build_pool_rejects_bad_limits(tmp_path: Path) -> None:
    path = _write_fortunes(tmp_path / "f")
    with pytest.raises(ValueError, match="min_words <= max_words"):
        build_pool([path], min_words=5, max_words=4)
    with pytest.raises(ValueError, match="no sentence sources"):
        build_pool([])
