// Runs on the audio rendering thread: converts the microphone's float samples to 16-bit PCM and
// posts them in ~40 ms batches (sending every 128-sample render quantum would mean ~350 frames/s).
class PcmCapture extends AudioWorkletProcessor {
  constructor() {
    super();
    this.size = Math.round(sampleRate * 0.04);
    this.batch = new Int16Array(this.size);
    this.filled = 0;
  }
  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (channel) {
      for (let i = 0; i < channel.length; i++) {
        const s = Math.max(-1, Math.min(1, channel[i]));
        this.batch[this.filled++] = s < 0 ? s * 0x8000 : s * 0x7fff;
        if (this.filled === this.size) {
          // Transferred, not copied: the old array is detached afterwards, hence this.size.
          this.port.postMessage(this.batch.buffer, [this.batch.buffer]);
          this.batch = new Int16Array(this.size);
          this.filled = 0;
        }
      }
    }
    return true;
  }
}
registerProcessor('pcm-capture', PcmCapture);
