// The page's wiring: every action is one call to the gateway's public API; errors show the envelope's message.

import { $, api, apiKey, getJson, handler, say, secs, setApiKey, showError } from "./api.js";
import { decodeAudio, drawWaveform, PcmStream, startRecording } from "./audio.js";
import { submitJob } from "./jobs.js";

const LANGUAGES = [
  ["auto", "detect"], ["en", "English"], ["zh", "Chinese"], ["ja", "Japanese"], ["ko", "Korean"],
  ["yue", "Cantonese"], ["all_zh", "Chinese only"], ["all_ja", "Japanese only"], ["all_ko", "Korean only"],
  ["all_yue", "Cantonese only"], ["auto_yue", "detect, Cantonese"],
];

const state = { reference: null, recorder: null, stream: null, voices: [] };

// ---- reference ---------------------------------------------------------------------------------------------

function source() {
  return $("source-voice").checked ? "voice" : "upload";
}

function showSource() {
  const voice = source() === "voice";
  $("voice-pick").hidden = !voice;
  $("upload-pick").hidden = voice;
  $("upload-more").hidden = voice;
  if (voice) showVoiceWaveform().catch((error) => showError("ref-error", error));
  else if (state.reference) setReference(state.reference);
  else resetWaveform();
}

function resetWaveform() {
  drawWaveform($("waveform"), null, null);
  $("waveform").dataset.state = "empty";
  $("waveform").setAttribute("aria-label", "No reference loaded yet");
  $("ref-info").textContent = "Choose or record a reference to see its waveform, its measured duration and the "
    + "silence the gateway trims (shaded).";
  $("ref-warnings").replaceChildren();
  showError("ref-error", null);
}

function describeCheck(check) {
  const tail = Math.max(0, check.trimmed_seconds - check.speech_start);
  return `Measured ${secs(check.duration)} of speech at ${check.sample_rate} Hz; `
    + `${secs(check.trimmed_seconds)} of silence trimmed (${secs(check.speech_start)} at the start, `
    + `${secs(tail)} at the end).`;
}

/** Show a chosen or recorded reference: its waveform at once, then what intake makes of it. */
async function setReference(file) {
  state.reference = file;
  const canvas = $("waveform");
  canvas.dataset.state = "checking";
  showError("ref-error", null);
  $("ref-warnings").replaceChildren();
  $("ref-info").textContent = `Checking ${file.name}…`;
  const form = new FormData();
  form.set("audio", file);
  const [decoded, checked] = await Promise.allSettled([
    decodeAudio(file), getJson("/v1/references/check", { method: "POST", body: form }),
  ]);
  if (state.reference !== file) return; // another file was chosen meanwhile
  const buffer = decoded.status === "fulfilled" ? decoded.value : null;
  if (checked.status === "fulfilled") {
    const check = checked.value;
    drawWaveform(canvas, buffer, [check.speech_start, check.speech_end]);
    const text = describeCheck(check);
    $("ref-info").textContent = `${file.name}: ${text}`;
    canvas.setAttribute("aria-label", `Waveform of ${file.name}; ${text}`);
    for (const warning of check.warnings) {
      const item = document.createElement("li");
      item.textContent = warning;
      $("ref-warnings").append(item);
    }
    canvas.dataset.state = "ok";
    say(`Reference ${file.name} checked: ${secs(check.duration)}.`);
  } else {
    drawWaveform(canvas, buffer, null);
    const length = buffer ? ` (${secs(buffer.duration)} long)` : "";
    $("ref-info").textContent = `${file.name}${length} cannot be used as a reference.`;
    canvas.setAttribute("aria-label", `Waveform of ${file.name}${length}; not usable as a reference`);
    canvas.dataset.state = "error";
    showError("ref-error", checked.reason);
  }
}

async function showVoiceWaveform() {
  const voice = state.voices.find((v) => v.id === $("voice-select").value);
  if (!voice) return resetWaveform();
  const response = await api(`/v1/voices/${voice.id}/audio`);
  const buffer = await decodeAudio(await response.blob());
  drawWaveform($("waveform"), buffer, null);
  $("waveform").dataset.state = "voice";
  const text = `saved voice ${voice.name}: ${secs(voice.reference_duration)} reference, already trimmed`;
  $("ref-info").textContent = text[0].toUpperCase() + text.slice(1) + ".";
  $("waveform").setAttribute("aria-label", `Waveform of the ${text}`);
  $("ref-warnings").replaceChildren();
}

async function toggleRecording() {
  const button = $("record");
  if (!state.recorder) {
    state.recorder = await startRecording();
    button.textContent = "Stop recording";
    button.setAttribute("aria-pressed", "true");
    say("Recording… press Stop recording when done.");
    return;
  }
  const recorder = state.recorder;
  state.recorder = null;
  button.textContent = "Record";
  button.setAttribute("aria-pressed", "false");
  const file = await recorder.stop();
  say("Recording stopped.");
  await setReference(file);
}

async function saveVoice() {
  if (!state.reference) throw new Error("Choose or record a reference first.");
  const form = new FormData();
  form.set("name", $("voice-name").value.trim());
  form.set("audio", state.reference);
  form.set("prompt_text", $("prompt-text").value);
  form.set("prompt_language", $("prompt-lang").value);
  const voice = await getJson("/v1/voices", { method: "POST", body: form });
  await loadVoices(voice.id);
  // e.g. that it sounds like a voice already saved (the gateway's `quality` extra compares them)
  say([`Saved voice ${voice.name}.`, ...(voice.warnings ?? [])].join(" "));
}

// ---- voices ------------------------------------------------------------------------------------------------

function voiceItem(voice) {
  const item = document.createElement("li");
  item.dataset.voice = voice.id;
  const name = document.createElement("span");
  name.className = "name";
  name.textContent = voice.name;
  const meta = document.createElement("span");
  meta.className = "meta";
  const transcript = voice.prompt_text ? ` · “${voice.prompt_text}”` : "";
  meta.textContent = `${secs(voice.reference_duration)} · ${voice.prompt_language}${transcript}`;
  const use = document.createElement("button");
  use.type = "button";
  use.className = "secondary";
  use.textContent = "Use";
  use.setAttribute("aria-label", `Use voice ${voice.name}`);
  use.addEventListener("click", () => {
    $("voice-select").value = voice.id;
    $("source-voice").checked = true;
    showSource();
    say(`Speaking with saved voice ${voice.name}.`);
  });
  const remove = document.createElement("button");
  remove.type = "button";
  remove.className = "secondary";
  remove.textContent = "Delete";
  remove.setAttribute("aria-label", `Delete voice ${voice.name}`);
  handler(remove, "voices-error", async () => {
    await api(`/v1/voices/${voice.id}`, { method: "DELETE" });
    await loadVoices();
    say(`Deleted voice ${voice.name}.`);
  });
  item.append(name, meta, use, remove);
  return item;
}

function fillVoiceSelect(select, voices, selected, placeholder) {
  const keep = selected ?? select.value;
  select.replaceChildren();
  if (placeholder) select.append(new Option(placeholder, ""));
  for (const voice of voices) select.append(new Option(voice.name, voice.id));
  if (voices.some((v) => v.id === keep)) select.value = keep;
}

async function loadVoices(selected) {
  const { voices } = await getJson("/v1/voices");
  state.voices = voices;
  $("voices").replaceChildren(...voices.map(voiceItem));
  $("voices-empty").hidden = voices.length > 0;
  fillVoiceSelect($("voice-select"), voices, selected, null);
  fillVoiceSelect($("job-voice"), voices, selected, "the default voice");
  $("source-voice").disabled = voices.length === 0;
  if (!voices.length && source() === "voice") {
    $("source-upload").checked = true;
    showSource();
  }
}

// ---- generation --------------------------------------------------------------------------------------------

function speechForm() {
  const form = new FormData();
  const text = $("text").value.trim();
  if (!text) throw new Error("Type the text to speak first.");
  form.set("input", text);
  form.set("response_format", "pcm"); // raw PCM16: played as it arrives, wrapped as WAV at the end
  form.set("stream", "true");
  form.set("text_language", $("text-lang").value);
  for (const [id, field] of [["speed", "speed"], ["temperature", "temperature"], ["top-k", "top_k"], ["seed", "seed"]]) {
    if ($(id).value !== "") form.set(field, $(id).value);
  }
  if (source() === "voice") {
    if (!$("voice-select").value) throw new Error("Choose a saved voice first.");
    form.set("voice", $("voice-select").value);
  } else {
    if (!state.reference) throw new Error("Choose or record a reference first.");
    form.set("reference_audio", state.reference);
    form.set("reference_text", $("prompt-text").value);
    form.set("prompt_language", $("prompt-lang").value);
  }
  return form;
}

async function generate() {
  const form = speechForm();
  state.stream?.stop();
  const stream = new PcmStream($("stream-play").checked);
  state.stream = stream;
  const started = performance.now();
  say("Generating…");
  $("gen-info").textContent = "Waiting for the engine…";
  let response;
  try {
    response = await api("/v1/audio/speech", { method: "POST", body: form });
  } catch (error) {
    stream.stop(); // nothing to play: release the audio device
    throw error;
  }
  stream.rate = Number(response.headers.get("X-Sample-Rate"));
  const reader = response.body.getReader();
  let firstAudio = null;
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      firstAudio ??= performance.now() - started;
      stream.push(value);
      $("gen-info").textContent = `Receiving: ${secs(stream.seconds)} of audio so far…`;
    }
  } catch (error) {
    throw new Error(`The audio stream was cut before the end (${error.message}); try again.`);
  }
  const url = URL.createObjectURL(stream.wav());
  const audio = $("result");
  if (audio.src.startsWith("blob:")) URL.revokeObjectURL(audio.src);
  audio.src = url;
  audio.dataset.playedLive = String(stream.scheduled);
  $("download").href = url;
  $("download").hidden = false;
  const total = (performance.now() - started) / 1000;
  const text = `${secs(stream.seconds)} of audio at ${stream.rate} Hz; first audio after `
    + `${Math.round(firstAudio ?? 0)} ms, complete after ${secs(total)}.`;
  $("gen-info").textContent = text;
  say(`Generated ${secs(stream.seconds)} of speech.`);
}

// ---- start -------------------------------------------------------------------------------------------------

function init() {
  for (const select of document.querySelectorAll("select[data-languages]")) {
    for (const [code, name] of LANGUAGES) select.append(new Option(`${name} (${code})`, code));
  }
  $("prompt-lang").value = "en";
  $("text-lang").value = "en";
  $("job-lang").value = "en";
  for (const radio of document.querySelectorAll("input[name=source]")) radio.addEventListener("change", showSource);
  $("voice-select").addEventListener("change", () => showVoiceWaveform().catch((e) => showError("ref-error", e)));
  $("ref-file").addEventListener("change", () => {
    const file = $("ref-file").files[0];
    if (file) setReference(file);
  });
  handler($("record"), "ref-error", toggleRecording);
  handler($("save-voice"), "ref-error", saveVoice);
  handler($("generate"), "gen-error", generate);
  handler($("submit-job"), "job-error", submitJob);
  resetWaveform();
  $("api-key").value = apiKey();
  $("api-key").addEventListener("change", () => {
    setApiKey($("api-key").value.trim());
    showError("voices-error", null);
    loadVoices().catch((error) => showError("voices-error", error));
  });
  loadVoices().catch((error) => showError("voices-error", error));
}

init();
