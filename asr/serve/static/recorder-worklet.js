// AudioWorklet: captures microphone audio, resamples it to the server's rate (16 kHz by default)
// with a windowed-sinc low-pass interpolator, and posts Float32Array chunks to the page.
//
// processorOptions: {targetRate: 16000, chunkSamples: 1600}
// Page -> worklet message "flush": post what is buffered now.

class SincResampler {
  // inRate, outRate in Hz; zeros: sinc zero crossings kept on each side of the kernel.
  constructor(inRate, outRate, zeros = 8) {
    this.step = inRate / outRate; // input samples per output sample
    this.cutoff = Math.min(1, outRate / inRate) * 0.95; // of the input Nyquist frequency
    this.half = Math.ceil(zeros / this.cutoff); // kernel half-width in input samples
    this.buffer = new Float32Array(this.half); // zeros before the first sample
    this.bufferStart = -this.half; // absolute input index of buffer[0]
    this.next = 0; // absolute input position of the next output sample
    this.outputs = 0;
  }

  kernel(x) {
    if (Math.abs(x) >= this.half) return 0;
    const window = 0.5 * (1 + Math.cos((Math.PI * x) / this.half));
    const arg = Math.PI * this.cutoff * x;
    const sinc = arg === 0 ? 1 : Math.sin(arg) / arg;
    return this.cutoff * sinc * window;
  }

  // Appends input samples and returns the output samples that are now computable.
  process(input) {
    if (this.step === 1) return Float32Array.from(input);
    const merged = new Float32Array(this.buffer.length + input.length);
    merged.set(this.buffer);
    merged.set(input, this.buffer.length);
    const end = this.bufferStart + merged.length; // first absolute index not yet received
    const out = [];
    while (Math.floor(this.next) + this.half < end) {
      const center = Math.floor(this.next);
      let acc = 0;
      for (let k = center - this.half + 1; k <= center + this.half; k++) {
        acc += merged[k - this.bufferStart] * this.kernel(this.next - k);
      }
      out.push(acc);
      this.outputs += 1;
      this.next = this.outputs * this.step;
    }
    const keepFrom = Math.max(this.bufferStart, Math.floor(this.next) - this.half + 1);
    this.buffer = merged.slice(keepFrom - this.bufferStart);
    this.bufferStart = keepFrom;
    return Float32Array.from(out);
  }
}

class RecorderProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const opts = (options && options.processorOptions) || {};
    this.targetRate = opts.targetRate || 16000;
    this.chunkSamples = opts.chunkSamples || 1600;
    this.resampler = new SincResampler(sampleRate, this.targetRate);
    this.pending = [];
    this.pendingLength = 0;
    this.port.onmessage = (event) => {
      if (event.data === "flush") this.post();
    };
  }

  post() {
    if (this.pendingLength === 0) return;
    const chunk = new Float32Array(this.pendingLength);
    let offset = 0;
    for (const piece of this.pending) {
      chunk.set(piece, offset);
      offset += piece.length;
    }
    this.pending = [];
    this.pendingLength = 0;
    this.port.postMessage(chunk, [chunk.buffer]);
  }

  process(inputs) {
    const channels = inputs[0];
    if (channels && channels.length > 0) {
      let mono = channels[0];
      if (channels.length > 1) {
        mono = new Float32Array(channels[0].length);
        for (const channel of channels) {
          for (let i = 0; i < mono.length; i++) mono[i] += channel[i] / channels.length;
        }
      }
      const out = this.resampler.process(mono);
      if (out.length > 0) {
        this.pending.push(out);
        this.pendingLength += out.length;
      }
      if (this.pendingLength >= this.chunkSamples) this.post();
    }
    return true;
  }
}

registerProcessor("recorder", RecorderProcessor);
