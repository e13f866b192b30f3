// The page of `python -m mnist_lightning serve`: draw or drop a digit, POST it to /predict, show the answer.
"use strict";

const pad = document.getElementById("pad");
const ink = pad.getContext("2d");
const seen = document.getElementById("seen");
const bars = document.getElementById("bars");
const digit = document.getElementById("digit");
const confidence = document.getElementById("confidence");
const status = document.getElementById("status");
let classes = [...Array(10).keys()].map(String);
let drawing = false;
let strokes = 0;
let latestRequest = 0;

function clearPad() {
  // Black paper, as PNG transparency would be flattened onto white and hide white ink.
  ink.fillStyle = "#000";
  ink.fillRect(0, 0, pad.width, pad.height);
  strokes = 0;
  latestRequest += 1; // answers still on their way are for the old drawing
  clearAnswer();
  status.textContent = "";
  document.body.dataset.strokes = "0";
}

// No answer on show: the digit, its confidence, the bars and the image the model saw all go, so that nothing
// left from an earlier image passes for the answer to the current one.
function clearAnswer() {
  digit.textContent = "?";
  confidence.textContent = "";
  showBars(null);
  seen.getContext("2d").clearRect(0, 0, seen.width, seen.height);
}

function pointOf(event) {
  const box = pad.getBoundingClientRect();
  return [(event.clientX - box.left) * (pad.width / box.width), (event.clientY - box.top) * (pad.height / box.height)];
}

pad.addEventListener("pointerdown", (event) => {
  drawing = true;
  pad.setPointerCapture(event.pointerId);
  ink.strokeStyle = "#fff";
  ink.lineWidth = 22;
  ink.lineCap = "round";
  ink.lineJoin = "round";
  ink.beginPath();
  ink.moveTo(...pointOf(event));
  ink.lineTo(...pointOf(event)); // a tap leaves a dot
  ink.stroke();
});

pad.addEventListener("pointermove", (event) => {
  if (!drawing) return;
  ink.lineTo(...pointOf(event));
  ink.stroke();
});

function endStroke() {
  if (!drawing) return;
  drawing = false;
  strokes += 1;
  document.body.dataset.strokes = String(strokes);
  const stroke = strokes;
  pad.toBlob((blob) => send(blob, `drawing of ${stroke} stroke${stroke > 1 ? "s" : ""}`, stroke), "image/png");
}
pad.addEventListener("pointerup", endStroke);
pad.addEventListener("pointercancel", endStroke);

async function send(image, what, stroke) {
  const request = ++latestRequest;
  status.textContent = "";
  let answer;
  try {
    answer = await predict(image);
  } catch (error) {
    if (request === latestRequest) {
      clearAnswer();
      status.textContent = `${what}: ${error.message}`;
      document.body.dataset.failedStrokes = String(stroke ?? 0);
    }
    return;
  }
  if (request !== latestRequest) return; // a newer drawing is on its way
  show(answer);
  document.body.dataset.predictedStrokes = String(stroke ?? 0);
}

// The server's answer for `image`, or an Error whose message says what went wrong.
async function predict(image) {
  let response;
  try {
    response = await fetch("/predict", {
      method: "POST",
      headers: { "Content-Type": image.type || "application/octet-stream" },
      body: image,
    });
  } catch {
    throw new Error("the server does not answer: is `python -m mnist_lightning serve` still running?");
  }
  let answer;
  try {
    answer = await response.json();
  } catch {
    throw new Error(`the server answered HTTP ${response.status} without an explanation`);
  }
  if (!response.ok) throw new Error(answer.error || `HTTP ${response.status}`);
  return answer;
}

function show(answer) {
  digit.textContent = answer.label;
  confidence.textContent = `${(100 * answer.probabilities[answer.digit]).toFixed(1)} % sure`;
  showBars(answer);
  const pixels = new ImageData(seen.width, seen.height);
  answer.image.flat().forEach((grey, i) => {
    pixels.data.set([grey, grey, grey, 255], 4 * i);
  });
  seen.getContext("2d").putImageData(pixels, 0, 0);
}

function showBars(answer) {
  bars.replaceChildren(
    ...classes.map((name, i) => {
      const p = answer ? answer.probabilities[i] : 0;
      const row = document.createElement("li");
      row.dataset.class = String(i);
      row.dataset.probability = String(p);
      if (answer && i === answer.digit) row.className = "best";
      row.innerHTML = '<span class="name"></span><span class="track"><span class="fill"></span></span><span class="value"></span>';
      row.querySelector(".name").textContent = name;
      row.querySelector(".fill").style.width = `${100 * p}%`;
      row.querySelector(".value").textContent = answer ? p.toFixed(3) : "";
      return row;
    }),
  );
}

function sendFile(file) {
  if (!file) return;
  clearPad();
  send(file, file.name);
}

document.getElementById("clear").addEventListener("click", clearPad);
document.getElementById("file").addEventListener("change", (event) => sendFile(event.target.files[0]));
document.addEventListener("dragover", (event) => {
  event.preventDefault();
  document.body.classList.add("dragging");
});
document.addEventListener("dragleave", () => document.body.classList.remove("dragging"));
document.addEventListener("drop", (event) => {
  event.preventDefault();
  document.body.classList.remove("dragging");
  sendFile(event.dataTransfer.files[0]);
});

fetch("/health")
  .then((response) => response.json())
  .then((health) => {
    classes = health.classes;
    // The model's image shape (channels, height, width): 1×28×28 for MNIST.
    [, seen.height, seen.width] = health.image_shape;
    const size = `${seen.height}×${seen.width}`;
    seen.setAttribute("aria-label", `the ${size} image the model saw`);
    document.getElementById("seen-caption").textContent = `what the model saw (${size})`;
    const accuracy = health.val_accuracy == null ? "" : `, ${(100 * health.val_accuracy).toFixed(2)} % on validation`;
    document.getElementById("model").textContent = `${health.dataset} model on ${health.runtime}${accuracy}`;
    showBars(null);
  })
  .catch(() => {
    status.textContent = "the server does not answer /health";
  });

clearPad();
