// Microphone page: capture -> AudioWorklet (resample to 16 kHz) -> websocket -> live text.
// Add ?autostart=1 to the page address to start capturing on load.
"use strict";

const TARGET_RATE = 16000;
const CHUNK_SAMPLES = 1600; // 100 ms per websocket message

const ui = {
  start: document.getElementById("start"),
  stop: document.getElementById("stop"),
  hotwords: document.getElementById("hotwords"),
  status: document.getElementById("status"),
  segments: document.getElementById("segments"),
  partial: document.getElementById("partial"),
};

let session = null;
let serverError = null; // the last error message the server sent on this connection

function setStatus(text) {
  ui.status.textContent = text;
}

// Shows a result: final segments become lines, the current partial stays in grey.
function showResult(msg) {
  if (msg.error) {
    serverError = msg.error; // kept for the close that follows, whose reason may be cut short
    setStatus("server error: " + msg.error);
    return;
  }
  if (msg.is_final) {
    if (msg.text) {
      const line = document.createElement("p");
      line.className = "final";
      line.dataset.segment = String(msg.segment);
      line.textContent = msg.text;
      ui.segments.appendChild(line);
    }
    ui.partial.textContent = "";
  } else {
    ui.partial.textContent = msg.text;
  }
}

async function start() {
  ui.start.disabled = true;
  setStatus("starting");
  let ws = null;
  let media = null;
  let context = null;
  let closed = null; // how the connection closed, if it did
  try {
    if (!navigator.mediaDevices) {
      // browsers capture only on secure pages: https, or http from localhost / 127.0.0.1
      throw new Error(
        "the microphone needs a secure page: open it as http://localhost:PORT on the " +
          "server's machine (from another one, through an SSH tunnel: " +
          "ssh -L PORT:localhost:PORT) or serve it over https",
      );
    }
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    ws = new WebSocket(`${scheme}://${location.host}/`);
    ws.binaryType = "arraybuffer";
    await new Promise((resolve, reject) => {
      ws.onopen = resolve;
      ws.onerror = () => reject(new Error("cannot connect to the server"));
    });
    const hotwords = ui.hotwords ? ui.hotwords.value.trim() : "";
    if (hotwords) ws.send(JSON.stringify({ hotwords })); // phrases separated by ";"
    ws.onmessage = (event) => showResult(JSON.parse(event.data));
    serverError = null;
    ws.onclose = (event) => {
      // the server's error message in full: a close reason is cut to 123 bytes
      const why = serverError ? "server error: " + serverError : event.reason;
      closed = `${event.code}${why ? ": " + why : ""}`;
      setStatus(`disconnected (${closed})`);
      stopCapture();
      ui.start.disabled = false;
      ui.stop.disabled = true;
      session = null;
    };
    media = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
    });
    context = new AudioContext();
    await context.audioWorklet.addModule("recorder-worklet.js");
    const source = context.createMediaStreamSource(media);
    const recorder = new AudioWorkletNode(context, "recorder", {
      processorOptions: { targetRate: TARGET_RATE, chunkSamples: CHUNK_SAMPLES },
    });
    const mute = context.createGain();
    mute.gain.value = 0; // keeps the graph pulled without playing the microphone back
    source.connect(recorder).connect(mute).connect(context.destination);
    recorder.port.onmessage = (event) => {
      if (ws.readyState === WebSocket.OPEN) ws.send(event.data);
    };
    await context.resume();
    if (ws.readyState !== WebSocket.OPEN) {
      // e.g. the idle timeout, while a permission prompt held the microphone back
      const how = closed || "closing";
      throw new Error(`the server closed the connection while the microphone started (${how})`);
    }
    session = { ws, media, context, recorder };
    ui.stop.disabled = false;
    setStatus(`recording (${context.sampleRate} Hz -> ${TARGET_RATE} Hz)`);
  } catch (err) {
    // release what was acquired: an open websocket would hold a server session until its idle
    // timeout (and its close would then replace this error on the page)
    if (ws) {
      ws.onclose = null;
      ws.close();
    }
    if (media) media.getTracks().forEach((track) => track.stop());
    if (context) context.close();
    setStatus("error: " + err.message);
    ui.start.disabled = false;
  }
}

function stopCapture() {
  if (!session || !session.media) return;
  session.recorder.port.postMessage("flush");
  session.media.getTracks().forEach((track) => track.stop());
  const context = session.context;
  session.media = null;
  // let the flushed chunk reach the page before closing the audio graph
  setTimeout(() => context.close(), 200);
}

function stop() {
  if (!session) return;
  ui.stop.disabled = true;
  const ws = session.ws;
  stopCapture();
  setStatus("finishing");
  setTimeout(() => {
    if (ws.readyState === WebSocket.OPEN) ws.send("Done");
  }, 300);
}

ui.start.addEventListener("click", start);
ui.stop.addEventListener("click", stop);
if (new URLSearchParams(location.search).get("autostart") === "1") start();
