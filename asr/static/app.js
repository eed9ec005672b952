// The page of `asr serve`: uploads files or a microphone recording to /v1/audio/transcriptions (verbose_json with
// word timestamps) and shows each transcript with its words' times and confidences; when asked, the same recording's
// posteriorgram picture from /v1/audio/plot. Plain JS, no build step, nothing
// loaded from elsewhere. A recording is captured with the Web Audio API and encoded as a 16-bit WAV here, so the
// server needs no ffmpeg to read it.
"use strict";

const LOW_CONFIDENCE = 0.6;  // words below this are marked
const $ = (id) => document.getElementById(id);

function apiHeaders() {
  const key = $("api-key").value.trim();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

async function showModel() {
  try {
    const health = await (await fetch("/healthz")).json();
    $("key-row").hidden = !health.api_key_required;
    $("plot-row").hidden = !health.plot;  // an ONNX graph cannot be drawn
    $("model-name").textContent = health.model;
  } catch (error) {
    $("model-name").textContent = "(server unreachable)";
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Transcribing

async function transcribe(blob, name) {
  const card = $("result-template").content.firstElementChild.cloneNode(true);
  card.querySelector(".name").textContent = name;
  card.querySelector(".status").textContent = "transcribing…";
  $("results").prepend(card);
  const form = new FormData();
  form.append("file", blob, name);
  form.append("model", $("model-name").textContent);
  form.append("response_format", "verbose_json");
  form.append("timestamp_granularities[]", "word");
  form.append("timestamp_granularities[]", "segment");
  const started = performance.now();
  try {
    const response = await fetch("/v1/audio/transcriptions", { method: "POST", body: form, headers: apiHeaders() });
    const body = await response.json();
    if (!response.ok) throw new Error(body.error ? body.error.message : `HTTP ${response.status}`);
    showTranscript(card, body, name, (performance.now() - started) / 1000);
  } catch (error) {
    card.dataset.state = "error";
    card.querySelector(".status").textContent = "";
    card.querySelector(".transcript").textContent = error.message;
    return;
  }
  if (!$("plot-row").hidden && $("plot").checked) await showPlot(card, form, name);
}

// The picture is asked for once the transcript is shown: it takes the server a second or so to draw.
async function showPlot(card, form, name) {
  const figure = card.querySelector(".plot");
  const caption = figure.querySelector("figcaption");
  figure.hidden = false;
  figure.dataset.state = "pending";
  try {
    const response = await fetch("/v1/audio/plot", { method: "POST", body: form, headers: apiHeaders() });
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      throw new Error(body.error ? body.error.message : `HTTP ${response.status}`);
    }
    const url = URL.createObjectURL(await response.blob());
    const image = document.createElement("img");
    image.alt = `posteriorgram of ${name}`;
    await new Promise((resolve, reject) => {
      image.onload = resolve;
      image.onerror = () => reject(new Error("the picture could not be shown"));
      image.src = url;
    });
    figure.prepend(image);
    caption.textContent = "log-mel features, CTC posteriors, and the words over the waveform";
    const link = document.createElement("a");
    link.href = url;
    link.download = `${name.replace(/\.[^.]+$/, "")}.png`;
    link.textContent = "png";
    card.querySelector(".downloads").append(link);
    figure.dataset.state = "done";
  } catch (error) {
    figure.dataset.state = "error";
    caption.textContent = `no picture: ${error.message}`;
  }
}

function showTranscript(card, result, name, seconds) {
  card.dataset.state = "done";
  card.querySelector(".status").textContent =
    `${result.duration.toFixed(2)} s of audio · answered in ${seconds.toFixed(2)} s`;
  const transcript = card.querySelector(".transcript");
  transcript.textContent = result.text || "(no words recognized)";
  transcript.classList.toggle("empty", !result.text);
  const words = card.querySelector(".words");
  for (const word of result.words || []) {
    const chip = document.createElement("span");
    chip.className = "word" + (word.confidence < LOW_CONFIDENCE ? " low" : "");
    chip.title = `${word.word}: ${word.start.toFixed(2)}–${word.end.toFixed(2)} s, confidence ${word.confidence}`;
    chip.innerHTML = '<span class="w"></span><span class="t"></span>';
    chip.querySelector(".w").textContent = word.word;
    chip.querySelector(".t").textContent =
      `${word.start.toFixed(2)}–${word.end.toFixed(2)} s · ${Math.round(word.confidence * 100)}%`;
    words.append(chip);
  }
  const stem = name.replace(/\.[^.]+$/, "");
  const downloads = card.querySelector(".downloads");
  const files = {
    txt: [result.text + "\n", "text/plain"],
    srt: [subtitles(result.segments || [], ","), "application/x-subrip"],
    vtt: ["WEBVTT\n\n" + subtitles(result.segments || [], "."), "text/vtt"],
    json: [JSON.stringify(result, null, 2) + "\n", "application/json"],
  };
  for (const [extension, [text, type]] of Object.entries(files)) {
    const link = document.createElement("a");
    link.href = URL.createObjectURL(new Blob([text], { type }));
    link.download = `${stem}.${extension}`;
    link.textContent = extension;
    downloads.append(link);
  }
}

// The server's segments are asr's subtitle cues: SRT numbers them, WebVTT does not.
function subtitles(segments, mark) {
  const stamp = (seconds) => {
    const ms = Math.round(Math.max(0, seconds) * 1000);
    const pad = (n, width) => String(n).padStart(width, "0");
    return `${pad(Math.floor(ms / 3600000), 2)}:${pad(Math.floor(ms / 60000) % 60, 2)}:` +
      `${pad(Math.floor(ms / 1000) % 60, 2)}${mark}${pad(ms % 1000, 3)}`;
  };
  return segments.map((s, i) => (mark === "," ? `${i + 1}\n` : "") +
    `${stamp(s.start)} --> ${stamp(s.end)}\n${s.text}\n`).join("\n");
}

// ---------------------------------------------------------------------------------------------------------------
// Recording

let recording = null;

async function startRecording() {
  // Echo cancellation, noise suppression and gain control change the signal the model hears: off.
  const stream = await navigator.mediaDevices.getUserMedia({
    audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
  });
  const context = new AudioContext();
  const source = context.createMediaStreamSource(stream);
  // ScriptProcessorNode: deprecated but everywhere, and needs no worklet module.
  const processor = context.createScriptProcessor(4096, 1, 1);
  const chunks = [];
  processor.onaudioprocess = (event) => chunks.push(new Float32Array(event.inputBuffer.getChannelData(0)));
  source.connect(processor);
  processor.connect(context.destination);
  recording = { stream, context, source, processor, chunks, started: performance.now() };
  recording.timer = setInterval(() => {
    $("record-status").textContent = `recording… ${((performance.now() - recording.started) / 1000).toFixed(1)} s`;
  }, 100);
  $("record").textContent = "■ Stop";
  $("record").classList.add("recording");
}

function stopRecording() {
  const { stream, context, source, processor, chunks, timer } = recording;
  recording = null;
  clearInterval(timer);
  source.disconnect();
  processor.disconnect();
  stream.getTracks().forEach((track) => track.stop());
  const wav = encodeWav(chunks, context.sampleRate);
  context.close();
  $("record").textContent = "● Record";
  $("record").classList.remove("recording");
  $("record-status").textContent = "from the microphone, encoded as WAV in this page";
  const name = `recording-${new Date().toISOString().replace(/[:.]/g, "-")}.wav`;
  transcribe(wav, name);
}

function encodeWav(chunks, sampleRate) {
  const length = chunks.reduce((sum, chunk) => sum + chunk.length, 0);
  const buffer = new ArrayBuffer(44 + 2 * length);
  const view = new DataView(buffer);
  const text = (offset, string) => [...string].forEach((c, i) => view.setUint8(offset + i, c.charCodeAt(0)));
  text(0, "RIFF"); view.setUint32(4, 36 + 2 * length, true); text(8, "WAVE");
  text(12, "fmt "); view.setUint32(16, 16, true); view.setUint16(20, 1, true);  // PCM
  view.setUint16(22, 1, true); view.setUint32(24, sampleRate, true);  // mono
  view.setUint32(28, 2 * sampleRate, true); view.setUint16(32, 2, true); view.setUint16(34, 16, true);
  text(36, "data"); view.setUint32(40, 2 * length, true);
  let offset = 44;
  for (const chunk of chunks) {
    for (const sample of chunk) {
      const clipped = Math.max(-1, Math.min(1, sample));
      view.setInt16(offset, clipped < 0 ? clipped * 0x8000 : clipped * 0x7fff, true);
      offset += 2;
    }
  }
  return new Blob([buffer], { type: "audio/wav" });
}

// ---------------------------------------------------------------------------------------------------------------

function transcribeFiles(files) {
  for (const file of files) transcribe(file, file.name);
}

document.addEventListener("DOMContentLoaded", () => {
  $("low-threshold").textContent = Math.round(LOW_CONFIDENCE * 100);
  showModel();
  $("files").addEventListener("change", (event) => {
    transcribeFiles(event.target.files);
    event.target.value = "";
  });
  const drop = $("drop");
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    transcribeFiles(event.dataTransfer.files);
  });
  $("record").addEventListener("click", async () => {
    try {
      if (recording) stopRecording();
      else await startRecording();
    } catch (error) {
      $("record-status").textContent = `microphone unavailable: ${error.message}`;
    }
  });
});
