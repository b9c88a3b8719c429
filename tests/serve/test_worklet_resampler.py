"""The page's AudioWorklet resampler (JavaScript) run under Node.js: 44.1 / 48 kHz -> 16 kHz."""

from __future__ import annotations

import json
import shutil
import subprocess
from importlib import resources

import numpy as np
import pytest

NODE = shutil.which("node") or shutil.which("nodejs")

pytestmark = pytest.mark.skipif(NODE is None, reason="needs Node.js to run the worklet code")

HARNESS = """
globalThis.sampleRate = %(rate)d;
globalThis.AudioWorkletProcessor = class { constructor() { this.port = {postMessage() {}}; } };
globalThis.registerProcessor = () => {};
%(source)s
const inRate = %(rate)d, seconds = 1.0, blocks = [];
const n = Math.round(inRate * seconds);
const input = new Float32Array(n);
for (let i = 0; i < n; i++) {
  input[i] = 0.5 * Math.sin(2 * Math.PI * 1000 * i / inRate)
           + 0.3 * Math.sin(2 * Math.PI * 11000 * i / inRate);  // above 8 kHz: must vanish
}
const resampler = new SincResampler(inRate, 16000);
const out = [];
for (let i = 0; i < n; i += 128) out.push(...resampler.process(input.subarray(i, i + 128)));
console.log(JSON.stringify(out));
"""


@pytest.mark.parametrize("rate", [44100, 48000])
def test_worklet_resampler(rate):
    source = (resources.files("asr.serve") / "static" / "recorder-worklet.js").read_text()
    script = HARNESS % {"rate": rate, "source": source}
    run = subprocess.run([NODE, "-e", script], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    out = np.array(json.loads(run.stdout))
    assert 16000 - 20 <= out.size <= 16000  # a kernel half-width is held back
    t = np.arange(out.size) / 16000
    ideal = 0.5 * np.sin(2 * np.pi * 1000 * t)
    inner = slice(100, out.size - 100)
    error = out[inner] - ideal[inner]
    snr = 10 * np.log10(np.mean(ideal[inner] ** 2) / np.mean(error**2))
    assert snr > 60, f"resampled sine SNR {snr:.1f} dB (11 kHz tone must be filtered out)"
