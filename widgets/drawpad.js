// loophub DrawPad (widgets/drawpad.py): draw on a canvas with a mouse, a pen or a finger.
// Pointer events cover all three; at the end of each stroke the whole canvas goes to the
// kernel as one PNG data URL (`value`), so the kernel sees finished strokes only and never
// a stream of points.

function render({ model, el }) {
  const canvas = document.createElement("canvas");
  canvas.className = "lh-drawpad-canvas";
  const clear = document.createElement("button");
  clear.className = "lh-drawpad-clear";
  clear.type = "button";
  clear.textContent = "Clear";
  const root = document.createElement("div");
  root.className = "lh-drawpad";
  root.append(canvas, clear);
  el.append(root);
  const ctx = canvas.getContext("2d");
  let drawing = null; // the pointer id of the stroke under way
  let last = null; // its previous point
  let sent = model.get("value"); // what this view last sent or drew

  function paintBackground() {
    ctx.fillStyle = model.get("background");
    ctx.fillRect(0, 0, canvas.width, canvas.height);
  }

  // The canvas keeps its own pixel size (width x height) whatever its CSS size: the PNG
  // is then the size the analyst asked for, and points are mapped back to it.
  function setUp() {
    canvas.width = model.get("width");
    canvas.height = model.get("height");
    canvas.style.width = `${canvas.width}px`;
    paintBackground();
    const value = model.get("value");
    if (value) {
      // another view's drawing, or one set from Python: show it
      const image = new Image();
      image.onload = () => ctx.drawImage(image, 0, 0, canvas.width, canvas.height);
      image.src = value;
    }
  }

  function point(event) {
    const rect = canvas.getBoundingClientRect();
    return {
      x: ((event.clientX - rect.left) * canvas.width) / rect.width,
      y: ((event.clientY - rect.top) * canvas.height) / rect.height,
    };
  }

  function pen() {
    ctx.strokeStyle = model.get("color");
    ctx.fillStyle = model.get("color");
    ctx.lineWidth = model.get("stroke");
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
  }

  canvas.addEventListener("pointerdown", (event) => {
    if (event.button !== 0 || drawing !== null) return;
    // no text selection, no notebook drag, no scrolling while drawing
    event.preventDefault();
    canvas.setPointerCapture(event.pointerId);
    drawing = event.pointerId;
    last = point(event);
    pen();
    ctx.beginPath(); // a dot, so a tap alone leaves a mark
    ctx.arc(last.x, last.y, model.get("stroke") / 2, 0, 2 * Math.PI);
    ctx.fill();
  });

  canvas.addEventListener("pointermove", (event) => {
    if (event.pointerId !== drawing) return;
    event.preventDefault();
    // a fast stroke delivers several points per frame: draw them all, not just the last
    const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [event];
    pen();
    ctx.beginPath();
    ctx.moveTo(last.x, last.y);
    for (const e of events.length ? events : [event]) {
      last = point(e);
      ctx.lineTo(last.x, last.y);
    }
    ctx.stroke();
  });

  function end(event) {
    if (event.pointerId !== drawing) return;
    drawing = null;
    last = null;
    sent = canvas.toDataURL("image/png");
    model.set("value", sent);
    model.save_changes();
  }
  canvas.addEventListener("pointerup", end);
  canvas.addEventListener("pointercancel", end);

  clear.addEventListener("click", () => {
    paintBackground();
    sent = "";
    model.set("value", "");
    model.save_changes();
  });

  function changed() {
    const value = model.get("value");
    if (value === sent) return; // this view's own stroke coming back
    sent = value;
    setUp(); // cleared or replaced from Python or another view
  }
  model.on("change:value", changed);
  const sizes = ["change:width", "change:height", "change:background"];
  for (const name of sizes) model.on(name, setUp);
  setUp();

  // the model outlives this view (a re-rendered output): leave it no dead listeners
  return () => {
    model.off("change:value", changed);
    for (const name of sizes) model.off(name, setUp);
  };
}

export default { render };
