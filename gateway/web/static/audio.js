// Audio helpers for the page: WAV encoding, the reference waveform, streamed PCM playback, recording.

/** A PCM16 mono RIFF WAV around raw little-endian samples (`parts`: Uint8Array chunks, `bytes` in total). */
export function wavBlob(parts, bytes, rate) {
  const header = new DataView(new ArrayBuffer(44));
  const text = (offset, s) => [...s].forEach((c, i) => header.setUint8(offset + i, c.charCodeAt(0)));
  text(0, "RIFF");
  header.setUint32(4, 36 + bytes, true);
  text(8, "WAVE");
  text(12, "fmt ");
  header.setUint32(16, 16, true);
  header.setUint16(20, 1, true); // PCM
  header.setUint16(22, 1, true); // mono
  header.setUint32(24, rate, true);
  header.setUint32(28, rate * 2, true);
  header.setUint16(32, 2, true);
  header.setUint16(34, 16, true);
  text(36, "data");
  header.setUint32(40, bytes, true);
  return new Blob([header, ...parts], { type: "audio/wav" });
}

/** Mix an AudioBuffer down to one channel of floats. */
export function monoSamples(buffer) {
  if (buffer.numberOfChannels === 1) return buffer.getChannelData(0);
  const out = new Float32Array(buffer.length);
  for (let c = 0; c < buffer.numberOfChannels; c++) {
    const data = buffer.getChannelData(c);
    for (let i = 0; i < out.length; i++) out[i] += data[i] / buffer.numberOfChannels;
  }
  return out;
}

/** An AudioBuffer (e.g. a decoded MediaRecorder take) as a PCM16 mono WAV, which every intake path accepts. */
export function audioBufferToWav(buffer) {
  const samples = monoSamples(buffer);
  const pcm = new DataView(new ArrayBuffer(samples.length * 2));
  samples.forEach((v, i) => pcm.setInt16(i * 2, Math.max(-1, Math.min(1, v)) * 32767, true));
  return wavBlob([new Uint8Array(pcm.buffer)], pcm.byteLength, buffer.sampleRate);
}

let decoder = null;

/** Decode any file the browser can read (wav, flac, ogg, mp3, webm) into an AudioBuffer. */
export async function decodeAudio(blob) {
  decoder = decoder || new AudioContext();
  return decoder.decodeAudioData(await blob.arrayBuffer());
}

const COLORS = { bg: "#fbfcff", wave: "#2456c7", cut: "#9aa3b5", trim: "rgba(120, 128, 145, 0.28)", edge: "#5b6478" };

/**
 * Draw `buffer` on `canvas`; `span` = [start, end] seconds that intake keeps: the rest is shaded as trimmed.
 * One vertical min–max line per pixel column, so a 10 s clip draws in a few milliseconds.
 */
export function drawWaveform(canvas, buffer, span) {
  const g = canvas.getContext("2d");
  const { width, height } = canvas;
  const axis = 14;
  const mid = (height - axis) / 2;
  g.fillStyle = COLORS.bg;
  g.fillRect(0, 0, width, height);
  if (!buffer) return;
  const samples = monoSamples(buffer);
  const seconds = buffer.duration;
  const x = (t) => Math.round((t / seconds) * width);
  const [keepFrom, keepTo] = span ? [x(span[0]), x(span[1])] : [0, width];
  if (span) {
    g.fillStyle = COLORS.trim;
    g.fillRect(0, 0, keepFrom, height - axis);
    g.fillRect(keepTo, 0, width - keepTo, height - axis);
  }
  const perColumn = samples.length / width;
  for (let col = 0; col < width; col++) {
    let lo = 0;
    let hi = 0;
    const end = Math.min(samples.length, Math.floor((col + 1) * perColumn));
    for (let i = Math.floor(col * perColumn); i < end; i++) {
      if (samples[i] < lo) lo = samples[i];
      if (samples[i] > hi) hi = samples[i];
    }
    g.fillStyle = col >= keepFrom && col < keepTo ? COLORS.wave : COLORS.cut;
    g.fillRect(col, mid - hi * mid, 1, Math.max(1, (hi - lo) * mid));
  }
  if (span) {
    g.strokeStyle = COLORS.edge;
    g.setLineDash([4, 3]);
    for (const edge of [keepFrom, keepTo]) {
      g.beginPath();
      g.moveTo(edge + 0.5, 0);
      g.lineTo(edge + 0.5, height - axis);
      g.stroke();
    }
    g.setLineDash([]);
    g.fillStyle = COLORS.edge;
    g.font = "11px system-ui, sans-serif";
    if (keepFrom > 50) g.fillText("trimmed", 4, height - axis - 5);
    if (width - keepTo > 50) g.fillText("trimmed", keepTo + 4, height - axis - 5);
  }
  g.fillStyle = COLORS.edge;
  g.font = "11px system-ui, sans-serif";
  const step = seconds > 20 ? 5 : 1;
  for (let t = 0; t <= seconds; t += step) {
    g.fillRect(x(t), height - axis, 1, 4);
    g.fillText(`${t} s`, Math.min(x(t) + 2, width - 24), height - 2);
  }
}

/**
 * Collects streamed PCM16 mono chunks; with `play`, schedules each one on a Web Audio clock as it arrives, so
 * speech is heard while the engine is still speaking. `wav()` gives the whole clip for the <audio> element.
 * Made in the click handler (before the request) so the browser lets its AudioContext play; `rate` comes later.
 */
export class PcmStream {
  constructor(play) {
    this.rate = 0;
    this.parts = [];
    this.bytes = 0;
    this.carry = null; // a sample split across two network chunks
    this.context = play ? new AudioContext() : null;
    this.next = 0;
    this.scheduled = 0; // chunks handed to the speakers while the clip was still streaming
  }

  push(chunk) {
    let data = chunk;
    if (this.carry !== null) {
      data = new Uint8Array(chunk.length + 1);
      data[0] = this.carry;
      data.set(chunk, 1);
      this.carry = null;
    }
    if (data.length % 2) {
      this.carry = data[data.length - 1];
      data = data.subarray(0, data.length - 1);
    }
    if (!data.length) return;
    const copy = data.slice();
    this.parts.push(copy);
    this.bytes += copy.length;
    if (this.context) this.schedule(copy);
  }

  schedule(data) {
    const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
    const buffer = this.context.createBuffer(1, data.byteLength / 2, this.rate);
    const channel = buffer.getChannelData(0);
    for (let i = 0; i < channel.length; i++) channel[i] = view.getInt16(i * 2, true) / 32768;
    const source = this.context.createBufferSource();
    source.buffer = buffer;
    source.connect(this.context.destination);
    const at = Math.max(this.next, this.context.currentTime + 0.05);
    source.start(at);
    this.next = at + buffer.duration;
    this.scheduled += 1;
  }

  get seconds() {
    return this.bytes / 2 / this.rate;
  }

  wav() {
    return wavBlob(this.parts, this.bytes, this.rate);
  }

  stop() {
    if (this.context) this.context.close();
    this.context = null;
  }
}

/** MediaRecorder around the microphone; `stop()` resolves to the take as a WAV file. */
export async function startRecording() {
  if (!navigator.mediaDevices?.getUserMedia) {
    // browsers offer the microphone to secure pages only: https, or http on localhost
    throw new Error("Recording needs the page over https (or on localhost); upload a recording instead.");
  }
  const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  const recorder = new MediaRecorder(stream);
  const chunks = [];
  recorder.ondataavailable = (event) => chunks.push(event.data);
  const done = new Promise((resolve) => {
    recorder.onstop = () => resolve(new Blob(chunks, { type: recorder.mimeType }));
  });
  recorder.start();
  return {
    async stop() {
      recorder.stop();
      stream.getTracks().forEach((track) => track.stop());
      const take = await decodeAudio(await done);
      return new File([audioBufferToWav(take)], "recording.wav", { type: "audio/wav" });
    },
  };
}
