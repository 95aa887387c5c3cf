// AudioWorklet: copies the microphone's samples (channel 0, float32) to the page while recording, in blocks of
// 4096, and reports the peak and RMS of every block for the level meter whether recording or not.
class RecorderProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.recording = false;
    this.buf = new Float32Array(4096);
    this.n = 0;
    this.peak = 0;
    this.sq = 0;
    this.count = 0;
    this.port.onmessage = (e) => {
      if (e.data === "start") {
        this.n = 0;
        this.recording = true;
      } else if (e.data === "stop") {
        this.recording = false;
        if (this.n) this.port.postMessage({ samples: this.buf.slice(0, this.n) });
        this.n = 0;
        this.port.postMessage({ done: true });
      }
    };
  }

  process(inputs) {
    const ch = inputs[0] && inputs[0][0];
    if (!ch) return true;
    for (let i = 0; i < ch.length; i++) {
      const v = ch[i];
      const a = v < 0 ? -v : v;
      if (a > this.peak) this.peak = a;
      this.sq += v * v;
      if (this.recording) {
        this.buf[this.n++] = v;
        if (this.n === this.buf.length) {
          this.port.postMessage({ samples: this.buf.slice(0) });
          this.n = 0;
        }
      }
    }
    this.count += ch.length;
    if (this.count >= 2048) {
      this.port.postMessage({ level: { peak: this.peak, rms: Math.sqrt(this.sq / this.count) } });
      this.peak = 0;
      this.sq = 0;
      this.count = 0;
    }
    return true;
  }
}

registerProcessor("recorder", RecorderProcessor);
