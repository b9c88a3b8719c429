"""Tiny models trained in seconds on synthesized speech: fixtures for tests, smoke runs and demos.

:func:`train_tiny_experiment` synthesizes a handful of sentences with espeak-ng, builds a char
tokenizer, and overfits a tiny causal chunked Conformer (CTC or transducer) on their features for
a bounded number of Adam steps. It writes an experiment directory in the layout of ``asr train``
(``config.yaml``, ``epoch-1.pt`` holding ``{"model", "extra": {"config"}}``), so
``asr export-package`` works on it unchanged.

The model is trained and evaluated under one fixed chunk mask (``chunk_size``, ``left_chunks``),
so its offline forward equals chunk-by-chunk streaming exactly.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from asr.audio import load_audio, resample
from asr.checkpoints.io import checkpoint_path, link_epoch_checkpoint
from asr.config import from_dict, save_config, to_dict
from asr.encoders.base import EncoderConfig
from asr.experiment import CONFIG_FILE, ExperimentConfig, build_model
from asr.features.fbank import compute_fbank
from asr.tokenizers.char import build_char_tokenizer

__all__ = [
    "TINY_SENTENCES",
    "TinyExperiment",
    "espeak_available",
    "synthesize",
    "tiny_config",
    "train_tiny_experiment",
]

logger = logging.getLogger(__name__)

#: Default training sentences: short, phonetically distinct.
TINY_SENTENCES = (
    "HELLO WORLD",
    "GOOD MORNING",
    "OPEN THE DOOR",
    "SEVEN GREEN APPLES",
)


def espeak_available() -> bool:
    """Whether the ``espeak-ng`` binary is on PATH."""
    return shutil.which("espeak-ng") is not None


def synthesize(text: str, path: str | Path, voice: str = "en-us", speed: int = 160) -> Path:
    """Writes ``text`` spoken by espeak-ng to a wav file (22.05 kHz mono) and returns its path.

    Raises:
        RuntimeError: when espeak-ng is missing or fails.
    """
    if not espeak_available():
        raise RuntimeError("espeak-ng is not installed (apt-get install espeak-ng)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cmd = ["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(path), text.lower()]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0 or not path.is_file():
        raise RuntimeError(f"espeak-ng failed for {text!r}: {result.stderr.strip()}")
    return path


def tiny_config(
    tokenizer_dir: str | Path,
    head: str = "ctc",
    chunk_size: int = 4,
    left_chunks: int = 8,
    d_model: int = 48,
    encoder_overrides: dict | None = None,
    fbank: dict | None = None,
) -> ExperimentConfig:
    """A tiny causal chunked Conformer with a CTC or transducer head (no dropout, no dynamic
    chunks).

    Args:
        tokenizer_dir: tokenizer directory.
        head: ``ctc``, ``transducer`` or ``tdt`` (each with a CTC head beside it), ``aed`` /
            ``cif`` alone, ``cif_ctc`` (a CIF head on the segments of a CTC head beside it) or
            ``u2pp`` (a CTC head and an AED head with a right-to-left decoder, WeNet's U2++).
        chunk_size: encoder frames per chunk (training, eval and streaming).
        left_chunks: chunks of left context.
        d_model: model width.
        encoder_overrides: other :class:`EncoderConfig` values (``{"kind": "transformer"}``).
        fbank: :class:`asr.features.fbank.FbankConfig` values (features computed on the fly).
    """
    encoder = EncoderConfig(
        kind="conformer", d_model=d_model, num_layers=2, num_heads=4, ff_dim=2 * d_model,
        conv_kernel_size=5, causal=True, subsampling_channels=16, dropout=0.0,
        attention_dropout=0.0, chunk_size=chunk_size, left_chunks=left_chunks,
        dynamic_chunk_training=False,
    )
    if encoder_overrides:
        encoder = dataclasses.replace(encoder, **encoder_overrides)
    heads: dict = {}
    if head == "ctc":
        heads["ctc"] = {}
    elif head in ("transducer", "tdt"):
        heads["transducer"] = {
            "loss": "full" if head == "transducer" else "tdt", "pred_dim": d_model,
            "joiner_dim": d_model, "predictor_dropout": 0.0, "warm_step": 0,
            "durations": [0, 1, 2],
        }
        heads["ctc"] = {}
        heads["loss_weights"] = {"transducer": 1.0, "ctc": 0.3}
    elif head in ("aed", "cif", "cif_ctc"):  # for random-weight packages
        heads[head[:3]] = {"d_model": d_model, "num_layers": 1, "ffn_dim": 2 * d_model,
                           "dropout": 0.0}
        if head == "cif_ctc":
            heads["cif"]["segments"] = "ctc"
            heads["ctc"] = {}
    elif head == "u2pp":  # WeNet's U2++: CTC, and an AED with a right-to-left decoder
        heads["aed"] = {"d_model": d_model, "num_layers": 1, "ffn_dim": 2 * d_model,
                        "dropout": 0.0, "reverse_weight": 0.3, "num_r2l_layers": 1}
        heads["ctc"] = {}
    else:
        raise ValueError(
            f"head={head!r}: expected 'ctc', 'transducer', 'tdt', 'aed', 'cif', 'cif_ctc' or "
            f"'u2pp'"
        )
    data = {"encoder": to_dict(encoder), "heads": heads, "tokenizer_dir": str(tokenizer_dir)}
    if fbank:
        data["data"] = {"fbank": dict(fbank), "on_the_fly_feats": True}
    return from_dict(ExperimentConfig, data)


@dataclass(frozen=True)
class TinyExperiment:
    """What :func:`train_tiny_experiment` produced.

    Attributes:
        exp_dir: experiment directory (config.yaml, epoch-1.pt).
        tokenizer_dir: char tokenizer directory.
        wavs: synthesized training wavs, one per sentence.
        texts: their transcripts.
        final_loss: last training loss per utterance.
    """

    exp_dir: Path
    tokenizer_dir: Path
    wavs: tuple[Path, ...]
    texts: tuple[str, ...]
    final_loss: float


def _feature_pool(
    waves: Sequence[np.ndarray],
    texts: Sequence[str],
    cfg: ExperimentConfig,
    rng: np.random.Generator,
    max_pad_seconds: float,
    variants: int,
) -> list[list[tuple[torch.Tensor, str]]]:
    """Per example, ``variants`` feature versions: the utterance as synthesized, then between
    random silences; every other one band-limited to 4 kHz (as if recorded at 8 kHz). Plus a
    silence-only example."""
    rate = cfg.data.fbank.sample_rate

    def silence() -> np.ndarray:
        length = int(rng.uniform(0.0, max_pad_seconds) * rate)
        return (rng.standard_normal(length) * 1e-4).astype(np.float32)

    pool = []
    for wave, text in zip(waves, texts):
        versions = []
        for k in range(variants):
            audio = resample(resample(wave, rate, 8000), 8000, rate) if k % 2 else wave
            if k >= 2:  # versions 0 and 1 keep the utterance as synthesized
                audio = np.concatenate([silence(), audio, silence()])
            versions.append((compute_fbank(audio, rate, cfg.data.fbank), text))
        pool.append(versions)
    if max_pad_seconds > 0:
        pool.append([(compute_fbank(np.concatenate([silence(), silence()[:rate], silence()]),
                                    rate, cfg.data.fbank), "") for _ in range(variants)])
    return pool


def _sample_batch(pool, tokenizer, rng: np.random.Generator):
    picks = [versions[int(rng.integers(len(versions)))] for versions in pool]
    feats = [f for f, _ in picks]
    tokens = [torch.tensor(tokenizer.encode(t), dtype=torch.long) for _, t in picks]
    pad = torch.nn.utils.rnn.pad_sequence
    return (
        pad(feats, batch_first=True), torch.tensor([f.shape[0] for f in feats]),
        pad(tokens, batch_first=True), torch.tensor([t.numel() for t in tokens]),
    )


def train_tiny_experiment(
    work_dir: str | Path,
    sentences: Sequence[str] = TINY_SENTENCES,
    head: str = "ctc",
    steps: int = 300,
    lr: float = 3e-3,
    seed: int = 0,
    max_pad_seconds: float = 1.0,
    variants: int = 6,
    num_threads: int = 1,
    **config_kwargs,
) -> TinyExperiment:
    """Synthesizes ``sentences``, trains a tiny model on them and writes an experiment directory.

    Args:
        work_dir: created; holds ``wavs/``, ``tokenizer/`` and ``exp/``.
        sentences: upper-case transcripts.
        head: see :func:`tiny_config`.
        steps: Adam steps, each on one version of every example.
        lr: peak learning rate (linear warm-up over the first 10% of steps).
        seed: torch and numpy seed.
        max_pad_seconds: utterances are put between random silences of up to this length and a
            silence-only example is added (so the model learns to stay silent).
        variants: feature versions precomputed per example (random padding, band limits).
        num_threads: torch threads while training (1 is fastest on a shared 2-core machine).
        **config_kwargs: passed to :func:`tiny_config`.
    """
    work_dir = Path(work_dir)
    wavs = tuple(synthesize(t, work_dir / "wavs" / f"utt{i}.wav") for i, t in enumerate(sentences))
    tokenizer = build_char_tokenizer(sentences)
    tokenizer_dir = work_dir / "tokenizer"
    tokenizer.save(tokenizer_dir)
    cfg = tiny_config(tokenizer_dir, head=head, **config_kwargs)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = build_model(cfg, tokenizer.vocab_size).train()
    waves = [load_audio(w, cfg.data.fbank.sample_rate) for w in wavs]
    pool = _feature_pool(waves, sentences, cfg, rng, max_pad_seconds, variants)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    warmup = max(1, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))
    loss_value = float("nan")
    threads = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        for _ in range(steps):
            out = model(*_sample_batch(pool, tokenizer, rng))
            optimizer.zero_grad()
            (out.loss / out.num_utterances).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optimizer.step()
            schedule.step()
            loss_value = float(out.loss.detach()) / out.num_utterances
    finally:
        torch.set_num_threads(threads)
    logger.info("tiny %s model: final loss %.4f after %d steps", head, loss_value, steps)
    exp_dir = work_dir / "exp"
    exp_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, exp_dir / CONFIG_FILE)
    checkpoint = {"model": model.state_dict(), "extra": {"config": to_dict(cfg)}}
    path = checkpoint_path(exp_dir, steps)
    torch.save(checkpoint, path)
    link_epoch_checkpoint(path, 1)
    return TinyExperiment(exp_dir, tokenizer_dir, wavs, tuple(sentences), loss_value)


def random_speech_like(num_samples: int, seed: int = 0) -> np.ndarray:
    """(N,) float32 noise bursts, a cheap stand-in for speech in feature tests."""
    rng = np.random.default_rng(seed)
    envelope = np.repeat(rng.uniform(0.0, 0.3, size=num_samples // 800 + 1), 800)[:num_samples]
    return (rng.standard_normal(num_samples) * envelope).astype(np.float32)

