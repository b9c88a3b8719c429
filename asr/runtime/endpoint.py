"""Rule-based endpointing: when to end the current segment of a stream.

The rules are those of Kaldi's online endpointing as used by icefall / sherpa(-onnx): "silence" is
judged from the decoder output, not from the audio energy: the trailing silence of a segment is
the time since its last emitted token (or since the segment start when nothing was emitted).
A rule fires when all its conditions hold; the endpoint is detected when any rule fires.

Defaults (sherpa-onnx's):

* rule 1: 2.4 s of trailing silence, even if nothing was recognized (drops long silences);
* rule 2: 1.2 s of trailing silence after something was recognized (end of a sentence);
* rule 3: the segment reached 20 s, whatever was said (bounds segment length).
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "ENDPOINT_TOLERANCE_SECONDS", "EndpointConfig", "EndpointRule", "detect_endpoint", "rule_fires",
]

#: What a segment's length and trailing silence may fall short of a rule's by and still meet it:
#: float rounding can leave frames * frame seconds just below the value (11 * 0.03 < 0.33).
ENDPOINT_TOLERANCE_SECONDS = 1e-6


@dataclass(frozen=True)
class EndpointRule:
    """One endpoint rule; all conditions must hold.

    Attributes:
        must_contain_nonsilence: the segment must have emitted at least one token.
        min_trailing_silence: seconds since the last token (or segment start) at least this.
        min_utterance_length: the segment is at least this long in seconds.
    """

    must_contain_nonsilence: bool
    min_trailing_silence: float
    min_utterance_length: float

    def __post_init__(self) -> None:
        if not (self.min_trailing_silence >= 0 and self.min_utterance_length >= 0):  # NaN too
            raise ValueError(
                f"endpoint rule durations must be >= 0, got trailing silence "
                f"{self.min_trailing_silence}, utterance length {self.min_utterance_length}"
            )


@dataclass(frozen=True)
class EndpointConfig:
    """The endpoint rules of a recognizer.

    Attributes:
        enabled: detect endpoints at all (False: a stream is one segment).
        rule1: long silence, speech or not.
        rule2: shorter silence after speech.
        rule3: maximum segment length.
    """

    enabled: bool = True
    rule1: EndpointRule = field(default_factory=lambda: EndpointRule(False, 2.4, 0.0))
    rule2: EndpointRule = field(default_factory=lambda: EndpointRule(True, 1.2, 0.0))
    rule3: EndpointRule = field(default_factory=lambda: EndpointRule(False, 0.0, 20.0))

    @property
    def rules(self) -> tuple[EndpointRule, ...]:
        return (self.rule1, self.rule2, self.rule3)


def rule_fires(
    rule: EndpointRule, contains_nonsilence: bool, trailing_silence: float, utterance_length: float
) -> bool:
    """Whether ``rule`` holds for a segment (times in seconds)."""
    if rule.must_contain_nonsilence and not contains_nonsilence:
        return False
    return (
        trailing_silence >= rule.min_trailing_silence
        and utterance_length >= rule.min_utterance_length
    )


def detect_endpoint(
    cfg: EndpointConfig,
    num_frames: int,
    last_token_frame: int | None,
    frame_seconds: float,
) -> bool:
    """Whether a segment has reached an endpoint.

    Args:
        cfg: the rules.
        num_frames: encoder frames decoded in the segment.
        last_token_frame: segment-relative frame of its last token; None if none was emitted.
        frame_seconds: duration of one encoder frame.
    """
    if not cfg.enabled or num_frames <= 0:
        return False
    length = num_frames * frame_seconds
    if last_token_frame is None:
        trailing = length
    else:
        trailing = max(num_frames - (last_token_frame + 1), 0) * frame_seconds
    eps = ENDPOINT_TOLERANCE_SECONDS
    return any(
        rule_fires(rule, last_token_frame is not None, trailing + eps, length + eps)
        for rule in cfg.rules
    )
