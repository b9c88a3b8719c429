from __future__ import annotations

import pytest

from asr.tokenizers import load_tokenizer
from asr.tokenizers.base import Tokenizer, read_tokens_file, write_tokens_file
from asr.tokenizers.char import SPACE_PIECE, CharTokenizer, build_char_tokenizer


def test_ids_by_hand():
    tok = build_char_tokenizer(["BA AB", "C'"])
    assert tok.pieces() == ["<blk>", "<sos/eos>", "<unk>", SPACE_PIECE, "'", "A", "B", "C"]
    assert isinstance(tok, Tokenizer)
    assert (tok.vocab_size, tok.blank_id, tok.sos_id, tok.eos_id, tok.unk_id) == (8, 0, 1, 1, 2)
    assert tok.encode("AB C'") == [5, 6, 3, 7, 4]
    # whitespace runs are one space, ends are stripped
    assert tok.encode("  AB \t C' ") == [5, 6, 3, 7, 4]
    assert tok.decode([0, 5, 6, 0, 3, 1, 7, 4]) == "AB C'"


def test_unknown_characters_map_to_unk():
    tok = build_char_tokenizer(["AB"])
    assert tok.encode("AXB Z") == [4, 2, 5, 3, 2]
    assert tok.decode(tok.encode("AXB")) == "A<unk>B"


def test_round_trip_and_save_load(tmp_path, train_texts, heldout_texts):
    tok = build_char_tokenizer(train_texts)
    for text in heldout_texts:
        assert tok.decode(tok.encode(text)) == text
    tok.save(tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert isinstance(loaded, CharTokenizer)
    assert loaded.pieces() == tok.pieces()
    assert loaded.encode_batch(heldout_texts) == tok.encode_batch(heldout_texts)
    first = (tmp_path / "tokens.txt").read_text().splitlines()[:4]
    assert first == ["<blk> 0", "<sos/eos> 1", "<unk> 2", f"{SPACE_PIECE} 3"]


def test_a_text_that_writes_the_space_piece_is_refused_naming_it():
    """``▁`` in a text encoded as the space between words, so the text read back otherwise:
    ``A▁B`` decoded as ``A B``."""
    tok = build_char_tokenizer(["AB"])
    with pytest.raises(ValueError, match="text 'A\u2581B' holds '\u2581' \\(U\\+2581\\)"):
        tok.encode(f"A{SPACE_PIECE}B")
    with pytest.raises(ValueError, match="'\u2581'"):
        tok.encode_batch(["AB", SPACE_PIECE])


def test_errors(tmp_path):
    with pytest.raises(ValueError, match="no characters"):
        build_char_tokenizer([" ", ""])
    with pytest.raises(ValueError, match="'A\u2581B' holds '\u2581'"):  # names the text
        build_char_tokenizer(["C", f"A{SPACE_PIECE}B"])
    with pytest.raises(ValueError, match="distinct single"):
        CharTokenizer(["<blk>", "<sos/eos>", "<unk>", SPACE_PIECE, "A", "A"])
    with pytest.raises(ValueError, match="distinct single"):  # a second space piece
        CharTokenizer(["<blk>", "<sos/eos>", "<unk>", SPACE_PIECE, "A", SPACE_PIECE])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        build_char_tokenizer(["A"]).id_to_piece(5)
    with pytest.raises(FileNotFoundError, match="no tokenizer found"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokens.txt").write_text("<blk> 0\n<unk> 1\n")
    with pytest.raises(ValueError, match="tokens.txt:2: expected 'piece 1'|ids 0, 1, 2"):
        load_tokenizer(tmp_path)


def test_a_tokens_file_that_is_not_utf8_is_an_error_naming_its_line(tmp_path):
    (tmp_path / "tokens.txt").write_bytes(b"<blk> 0\n<sos/eos> 1\n<unk> 2\n\xe9 3\n")
    with pytest.raises(ValueError, match=r"tokens.txt:4: not UTF-8 text"):
        load_tokenizer(tmp_path)


def test_tokens_txt_ids_are_read_in_order_and_pieces_written_without_whitespace(tmp_path):
    """Each line of tokens.txt must give the next id (a gap or a swap is named by its line);
    blank lines are skipped; a piece with whitespace cannot be written (it would read back as
    three fields)."""
    path = tmp_path / "tokens.txt"
    path.write_text(f"<blk> 0\n<sos/eos> 1\n<unk> 2\n{SPACE_PIECE} 3\nA 5\n")
    with pytest.raises(ValueError, match="tokens.txt:5: expected 'piece 4', got 'A 5'"):
        read_tokens_file(path)
    path.write_text(f"<blk> 0\n<sos/eos> 1\n<unk> 2\n\n{SPACE_PIECE} 3\nA 4\n\n")
    assert read_tokens_file(path) == ["<blk>", "<sos/eos>", "<unk>", SPACE_PIECE, "A"]
    with pytest.raises(ValueError, match=r"piece 'A B' \(id 3\) is empty or contains whitespace"):
        write_tokens_file(path, ["<blk>", "<sos/eos>", "<unk>", "A B"])
