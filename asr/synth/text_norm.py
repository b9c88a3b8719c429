"""Text normalisation for the synthetic LibriSpeech corpus.

LibriSpeech transcripts are upper-case words of ``A-Z`` and apostrophes separated by single spaces.
Text-to-speech engines read digits, symbols, abbreviations and acronyms in ways we cannot predict
(``Dr.`` may become "doctor" or "drive", ``IBM`` is spelled letter by letter), so instead of
guessing a verbalisation we *reject* every sentence that contains such a token. What survives is
spoken exactly as written, which keeps transcript and audio consistent.

Public functions:

* :func:`split_sentences` cuts running text (line-wrapped paragraphs) into sentences,
* :func:`normalize_sentence` maps one sentence to its transcript or ``None`` when it is unsafe,
* :func:`tts_text` renders a transcript as the text given to the TTS engine.
"""

from __future__ import annotations

import re

# Sentence ends: '.', '!' or '?' (optionally followed by closing quotes/brackets) then whitespace.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|(?<=[.!?][\"')\]])\s+")
# Punctuation that is silent or a pause for TTS; replaced by a space before tokenising.
_PAUSE_PUNCT = re.compile(r"[.,;:!?\"()\[\]{}\-]")
# Anything left that is not a letter, an apostrophe or a space makes the sentence unsafe.
_UNSAFE = re.compile(r"[^A-Za-z' ]")
# Words read unpredictably (abbreviations usually written with a period, letter names).
_ABBREVIATIONS = frozenset(
    "MR MRS MS DR ST JR SR PROF REV GEN CAPT COL LT SGT VS ETC EG IE CF AL INC LTD CO NO".split()
)
_SINGLE_LETTER_WORDS = frozenset({"A", "I"})
_MAX_WORD_CHARS = 20


def split_sentences(text: str) -> list[str]:
    """Split running text into sentences.

    Line breaks inside a paragraph are joined; sentences end at ``.``, ``!`` or ``?``.

    Args:
        text: raw text, possibly line-wrapped.

    Returns:
        The stripped, non-empty sentences in order.
    """
    flat = " ".join(text.split())
    return [piece.strip() for piece in _SENTENCE_END.split(flat) if piece.strip()]


def normalize_sentence(sentence: str) -> str | None:
    """Map a raw English sentence to a LibriSpeech-style transcript.

    Pause punctuation and hyphens become word breaks and quotes around words are dropped. The
    sentence is rejected (``None``) when it contains a digit or any other symbol, an all-caps
    token of two or more letters (acronyms, Roman numerals), a common abbreviation, a single-letter
    word other than ``A``/``I``, or a word longer than 20 letters.

    Args:
        sentence: one sentence of raw text, e.g. ``"Oh dear! I shall be late," said the Rabbit.``

    Returns:
        Upper-case words separated by single spaces, e.g. ``"OH DEAR I SHALL BE LATE SAID THE
        RABBIT"``, or ``None`` when the sentence is unsafe to synthesize or has no words.
    """
    text = sentence.replace("`", "'").replace("\u2019", "'").replace("\u2018", "'")
    text = _PAUSE_PUNCT.sub(" ", text)
    if _UNSAFE.search(text):
        return None
    words: list[str] = []
    for raw in text.split():
        word = raw.strip("'")
        if not word:
            continue
        letters = word.replace("'", "")
        if len(letters) >= 2 and letters.isupper():
            return None  # acronym, Roman numeral or shouting: spelled or read unpredictably
        upper = word.upper()
        if upper in _ABBREVIATIONS or len(word) > _MAX_WORD_CHARS:
            return None
        if len(letters) == 1 and upper not in _SINGLE_LETTER_WORDS:
            return None
        if "''" in word:
            return None
        words.append(upper)
    return " ".join(words) if words else None


def tts_text(transcript: str) -> str:
    """Render a transcript as TTS input: lower case (so no word is spelled out), ``I`` kept.

    Args:
        transcript: upper-case transcript from :func:`normalize_sentence`.

    Returns:
        The sentence in lower case with the pronoun ``I`` (and ``I'm``, ``I'll``...) capitalised
        and a final period, e.g. ``"I think so."``.
    """
    words = [w.lower() for w in transcript.split()]
    words = ["I" + w[1:] if w == "i" or w.startswith("i'") else w for w in words]
    return " ".join(words) + "."
