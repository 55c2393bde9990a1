// loophub labelers: image/text classification, bounding boxes, NER spans, review.
// The Python side (widgets/labeler.py) owns the data and writes every change through the
// loophub API; this side shows prefetched items at once, applies changes optimistically
// and measures latency from the key press to the API's confirmation.

const PALETTE = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4",
  "#f032e6", "#bfef45", "#469990", "#9a6324", "#800000", "#808000", "#000075"];
const CLASS_TYPE = { image_classification: "image_class", text_classification: "text_class" };

function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

function svg(tag, attrs = {}) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  return node;
}

// Code points, not UTF-16 units: an emoji is one character in the stored offsets.
const codePoints = (text) => Array.from(text);

function keyName(event) {
  const parts = [];
  if (event.ctrlKey || event.metaKey) parts.push("ctrl");
  if (event.shiftKey && event.key.length > 1) parts.push("shift");
  if (event.shiftKey && (event.ctrlKey || event.metaKey) && event.key.length === 1) {
    parts.push("shift");
  }
  if (event.altKey) parts.push("alt");
  const key = event.key.length === 1 ? event.key.toLowerCase() : event.key;
  return [...parts, key].join("+");
}

function render({ model, el }) {
  const st = {
    items: [], urls: [], pos: 0, exhausted: false, selected: null, drawLabel: null,
    zoom: 1, req: 0, pending: new Map(), persist: [], next: [], navStart: null,
    reviewMode: model.get("mode") === "review",
  };
  const task = () => model.get("task");
  const classes = () => model.get("classes");
  const keys = () => model.get("shortcuts");
  const colorOf = (label) => {
    const found = classes().findIndex((c) => c.name === label);
    const cls = classes()[found];
    return (cls && cls.color) || PALETTE[Math.max(found, 0) % PALETTE.length];
  };

  const root = h("div", { class: "lh-labeler", tabindex: "0", "data-lm-suppress-shortcuts": "true" });
  const title = h("div", { class: "lh-title" });
  const progressBar = h("div", { class: "lh-progress-fill" });
  const progressText = h("span", { class: "lh-progress-text" });
  const counts = h("div", { class: "lh-counts" });
  const labelBar = h("div", { class: "lh-labels" });
  const stage = h("div", { class: "lh-stage" });
  const suggest = h("div", { class: "lh-suggest" });
  const reviewBox = h("div", { class: "lh-review" });
  const filterBar = h("div", { class: "lh-filters" });
  const status = h("div", { class: "lh-status" });
  const button = (text, action, cls = "") => h("button", { class: `lh-btn ${cls}`, onclick: (e) => { e.preventDefault(); action(); root.focus(); } }, text);
  const nav = h("div", { class: "lh-nav" },
    button("← back", () => goTo(st.pos - 1), "lh-back"),
    button("skip", skip, "lh-skip"),
    button("next →", () => goTo(st.pos + 1), "lh-next"),
    button("undo", () => history("undo"), "lh-undo"),
    button("redo", () => history("redo"), "lh-redo"));
  root.append(
    h("div", { class: "lh-header" }, title,
      h("div", { class: "lh-progress" }, progressBar), progressText),
    counts, filterBar, labelBar, suggest, stage, reviewBox, nav, status);
  root.dataset.task = task();
  root.dataset.dataset = model.get("dataset");
  el.append(root);

  function send(msg) { model.send(msg); }

  function history(kind, t0 = performance.now()) {
    const req = ++st.req;
    st.pending.set(req, { t0, recordId: null });
    publishTimings();
    send({ type: kind, req, t0 });
  }
  const current = () => st.items[st.pos];

  function setStatus(text, kind = "") {
    status.textContent = text;
    status.className = `lh-status ${kind}`;
  }

  function publishTimings() {
    root.dataset.persistMs = JSON.stringify(st.persist);
    root.dataset.nextMs = JSON.stringify(st.next);
    root.dataset.pending = String(st.pending.size);
    root.dataset.sent = String(st.req);
    root.dataset.position = String(st.pos);
    const item = current();
    root.dataset.recordId = item ? item.record.id : "";
  }

  // -- header: title, progress, labels ------------------------------------------------

  function renderHeader() {
    const p = model.get("progress") || {};
    const total = p.total || 0;
    const done = p.done || 0;
    title.textContent = `${model.get("dataset")} · ${task().replace("_", " ")} · ${model.get("user")}` +
      (st.reviewMode ? " · review" : "");
    progressBar.style.width = total ? `${(100 * done) / total}%` : "0";
    progressText.textContent = `${done}/${total} done · ${p.mine || 0} by you` +
      (p.imported ? ` · ${p.imported} imported` : "");
    counts.replaceChildren(...Object.entries(p.labels || {}).map(([label, n]) => h("span",
      { class: "lh-count", style: `border-color:${colorOf(label)}` }, `${label}: ${n}`)));
    const hotkeys = model.get("hotkeys");
    labelBar.replaceChildren(...classes().map((cls) => h("button", {
      class: "lh-label", "data-label": cls.name, style: `--lh-color:${colorOf(cls.name)}`,
      onclick: (e) => { e.preventDefault(); chooseLabel(cls.name, performance.now()); root.focus(); },
    }, h("kbd", {}, hotkeys[cls.name] || ""), ` ${cls.name}`)));
    markLabels();
  }

  function renderFilters() {
    const f = model.get("filters") || {};
    const p = model.get("progress") || {};
    const select = (name, options, value) => h("select", { class: `lh-filter-${name}`, "aria-label": name },
      ...options.map(([label, v]) => {
        const opt = h("option", { value: v }, label);
        if (v === (value ?? "")) opt.selected = true;
        return opt;
      }));
    const show = select("show", [["needs my label", "todo"], ["all items", "all"]], f.unlabeled === false ? "all" : "todo");
    const split = select("split", [["any split", ""], ...Object.keys(p.splits || {}).filter((k) => k !== "unassigned").map((k) => [k, k])], f.split);
    const label = select("label", [["any label", ""], ...classes().map((c) => [c.name, c.name])], f.label);
    const origin = select("origin", [["any source", ""], ["from production", "production"]], f.origin);
    const annotator = h("input", { class: "lh-filter-annotator", placeholder: "annotator", value: f.annotator || "", size: "10" });
    const apply = () => {
      send({ type: "filter", unlabeled: show.value === "todo", split: split.value, label: label.value, annotator: annotator.value.trim(), origin: origin.value });
      root.focus();
    };
    for (const node of [show, split, label, origin]) node.addEventListener("change", apply);
    annotator.addEventListener("keydown", (e) => { e.stopPropagation(); if (e.key === "Enter") apply(); });
    filterBar.replaceChildren(h("span", { class: "lh-filter-title" }, "show"), show, split, label, origin, annotator);
  }

  function userAnnotations(item, user = model.get("user")) {
    return item.record.annotations.filter((a) => a.source && a.source.kind === "user" && a.source.name === user);
  }

  function markLabels() {
    const item = current();
    const chosen = new Set();
    if (item) {
      for (const a of userAnnotations(item)) if (a.label) chosen.add(a.label);
    }
    for (const node of labelBar.children) {
      const label = node.dataset.label;
      node.classList.toggle("lh-chosen", chosen.has(label));
      node.classList.toggle("lh-drawing", task() === "object_detection" && st.drawLabel === label);
    }
  }

  // -- items ---------------------------------------------------------------------------

  function addItems(items, buffers, offset) {
    items.forEach((entry, i) => {
      const index = offset + i;
      st.items[index] = { record: entry.record, revision: entry.revision, agreement: entry.agreement };
      const buffer = buffers && buffers[i];
      if (buffer && buffer.byteLength) {
        const blob = new Blob([buffer], { type: entry.media_type || "image/png" });
        st.urls[index] = URL.createObjectURL(blob);
        const warm = new Image();
        warm.src = st.urls[index];
        warm.decode().catch(() => {});
      }
    });
  }

  function goTo(position, t0 = performance.now()) {
    if (position < 0) return;
    if (position >= st.items.length) {
      if (st.exhausted) { setStatus("No more items here: all labeled, leased to others, or skipped.", "lh-done"); }
      else { setStatus("Loading more items…"); }
      position = Math.min(position, st.items.length);
    }
    st.pos = position;
    st.selected = null;
    st.navStart = t0;
    send({ type: "nav", pos: position });
    show();
  }

  function skip() {
    const t0 = performance.now();
    send({ type: "skip", pos: st.pos });
    st.pos += 1;
    st.selected = null;
    st.navStart = t0;
    show();
  }

  function show() {
    const item = current();
    if (st.cleanup) { st.cleanup(); st.cleanup = null; }
    stage.replaceChildren();
    suggest.replaceChildren();
    reviewBox.replaceChildren();
    markLabels();
    publishTimings();
    if (!item) {
      stage.append(h("div", { class: "lh-empty" }, st.exhausted ? "Nothing left to label here. 🎉" : "Loading…"));
      return;
    }
    const kind = task();
    if (kind === "image_classification") showImage(item);
    else if (kind === "object_detection") showBoxes(item);
    else if (kind === "ner") showSpans(item);
    else showText(item);
    showSuggestions(item);
    if (st.reviewMode) showReview(item);
    const meta = [item.record.id, item.record.split ? `split ${item.record.split}` : null,
      `${st.pos + 1}/${st.items.length}${st.exhausted ? "" : "+"}`].filter(Boolean).join(" · ");
    stage.prepend(h("div", { class: "lh-meta" }, meta));
  }

  function measureNext() {
    if (st.navStart !== null) {
      st.next.push(performance.now() - st.navStart);
      st.navStart = null;
      send({ type: "timing", kind: "next", ms: st.next[st.next.length - 1] });
      publishTimings();
    }
  }

  function showImage(item) {
    const url = st.urls[st.pos];
    const img = h("img", { class: "lh-image", alt: item.record.id });
    if (url) {
      img.src = url;
      img.decode().then(measureNext, measureNext);
    } else {
      measureNext();
    }
    stage.append(img);
  }

  function showText(item) {
    stage.append(h("div", { class: "lh-text" }, item.record.text || ""));
    requestAnimationFrame(measureNext);
  }

  function showSuggestions(item) {
    const preds = item.record.annotations.filter((a) => a.source && a.source.kind === "model");
    if (!preds.length) return;
    const names = preds.map((a) => a.label + (a.score !== undefined ? ` ${(a.score * 100).toFixed(0)}%` : ""));
    const by = preds[0].source;  // the model version, as predict_into records it
    suggest.append(h("span", {}, `Model ${by.name}${by.version ? "@" + by.version : ""} suggests: `),
      ...names.map((n) => h("span", { class: "lh-chip" }, n)),
      button(`accept (${keys().accept})`, () => op({ action: "accept" }), "lh-accept"));
  }

  // -- writing ---------------------------------------------------------------------------

  function op(fields, t0 = performance.now()) {
    const item = current();
    if (!item) return;
    const req = ++st.req;
    st.pending.set(req, { t0, recordId: item.record.id });
    publishTimings();
    send({ type: "op", req, t0, record_id: item.record.id, ...fields });
  }

  function optimistic(item, change) {
    change(item.record.annotations);
    show();
  }

  function chooseLabel(label, t0) {
    const item = current();
    if (!item) return;
    const kind = task();
    if (kind === "object_detection") {
      if (st.selected) {
        optimistic(item, (anns) => { const a = anns.find((x) => x.id === st.selected); if (a) a.label = label; });
        op({ action: "update", annotation_id: st.selected, fields: { label } }, t0);
      } else {
        st.drawLabel = label;
        markLabels();
      }
      return;
    }
    if (kind === "ner") { tagSelection(label, t0); return; }
    const mine = userAnnotations(item).filter((a) => a.type === CLASS_TYPE[kind]).map((a) => a.label);
    let labels;
    if (model.get("multi_label")) {
      labels = mine.includes(label) ? mine.filter((l) => l !== label) : [...mine, label];
    } else {
      labels = [label];
    }
    const user = model.get("user");
    optimistic(item, (anns) => {
      const others = anns.filter((a) => !(a.source && a.source.kind === "user" && a.source.name === user && a.type === CLASS_TYPE[kind]));
      anns.splice(0, anns.length, ...others, ...labels.map((l) => ({ type: CLASS_TYPE[kind], label: l, source: { kind: "user", name: user } })));
    });
    op({ action: "set_labels", labels }, t0);
    if (!model.get("multi_label") && model.get("auto_advance") && !st.reviewMode) goTo(st.pos + 1, t0);
  }

  model.on("msg:custom", (msg, buffers) => {
    if (msg.type === "sync") {
      st.items = []; st.urls = [];
      addItems(msg.items, buffers, 0);
      st.exhausted = msg.exhausted;
      st.pos = Math.min(msg.position, st.items.length);
      show();
    } else if (msg.type === "more") {
      const wasWaiting = !current();
      addItems(msg.items, buffers, msg.offset);
      st.exhausted = msg.exhausted;
      if (wasWaiting) show();
      if (st.exhausted && !msg.items.length && !current()) show();
    } else if (msg.type === "ack" || msg.type === "fail") {
      const pending = st.pending.get(msg.req);
      st.pending.delete(msg.req);
      if (pending && msg.type === "ack") {
        const ms = performance.now() - pending.t0;
        st.persist.push(ms);
        send({ type: "timing", kind: "persist", ms });
        setStatus(`saved ${msg.record_id} in ${ms.toFixed(0)} ms`, "lh-ok");
      } else if (msg.type === "fail") {
        setStatus(`not saved: ${msg.error}`, "lh-error");
      }
      const index = st.items.findIndex((it) => it && it.record.id === msg.record_id);
      const stillPending = [...st.pending.values()].some((p) => p.recordId === msg.record_id);
      if (index >= 0 && msg.record && !stillPending) {
        st.items[index] = { ...st.items[index], record: msg.record, revision: msg.revision };
        if (index === st.pos) show();
      }
      publishTimings();
    } else if (msg.type === "show") {
      const index = st.items.findIndex((it) => it && it.record.id === msg.record_id);
      if (index >= 0) {
        if (msg.record) st.items[index] = { ...st.items[index], record: msg.record, revision: msg.revision };
        st.pos = index;
        st.selected = null;
        show();
        send({ type: "nav", pos: index });
      }
      if (msg.req && st.pending.has(msg.req)) {
        const ms = performance.now() - st.pending.get(msg.req).t0;
        st.pending.delete(msg.req);
        setStatus(`${msg.what} saved in ${ms.toFixed(0)} ms`, "lh-ok");
      }
      publishTimings();
    } else if (msg.type === "error") {
      if (msg.req) st.pending.delete(msg.req);
      setStatus(msg.error, "lh-error");
      publishTimings();
    }
  });

  // -- bounding boxes --------------------------------------------------------------------

  function showBoxes(item) {
    const url = st.urls[st.pos];
    const media = item.record.media || {};
    const frame = h("div", { class: "lh-frame" });
    const inner = h("div", { class: "lh-zoom" });
    const img = h("img", { class: "lh-box-image", draggable: "false" });
    const overlay = svg("svg", { class: "lh-overlay" });
    inner.append(img, overlay);
    frame.append(inner);
    stage.append(frame, h("div", { class: "lh-hint" },
      `drag to draw (${st.drawLabel || classes()[0]?.name || "?"}), click to select, drag to move, corners to resize, ` +
      `${keys().delete} deletes, a label key relabels, ${keys().zoom_in}/${keys().zoom_out} zoom (${st.zoom.toFixed(1)}×)`));
    const layout = () => {
      const w = img.naturalWidth || media.width || 400;
      const hgt = img.naturalHeight || media.height || 300;
      const fit = Math.min(1, 640 / w, 480 / hgt) || 1;
      const scale = (fit * st.zoom);
      img.style.width = `${w * scale}px`;
      img.style.height = `${hgt * scale}px`;
      overlay.setAttribute("viewBox", `0 0 ${w} ${hgt}`);
      overlay.setAttribute("width", `${w * scale}`);
      overlay.setAttribute("height", `${hgt * scale}`);
      drawBoxes(item, overlay, w, hgt, scale);
    };
    if (url) {
      img.src = url;
      img.decode().then(() => { layout(); measureNext(); }, () => { layout(); measureNext(); });
    } else {
      layout();
      measureNext();
    }
    attachDrawing(item, overlay);
  }

  function drawBoxes(item, overlay, w, hgt, scale) {
    overlay.replaceChildren(svg("rect", { x: 0, y: 0, width: w, height: hgt, class: "lh-canvas" }));
    const handle = 8 / scale;
    for (const ann of item.record.annotations) {
      if (ann.type !== "bbox") continue;
      const [x, y, bw, bh] = ann.normalized ? [ann.bbox[0] * w, ann.bbox[1] * hgt, ann.bbox[2] * w, ann.bbox[3] * hgt] : ann.bbox;
      const model_ = ann.source && ann.source.kind === "model";
      const group = svg("g", { class: `lh-box${st.selected === ann.id ? " lh-selected" : ""}${model_ ? " lh-predicted" : ""}`, "data-id": ann.id || "" });
      const color = colorOf(ann.label);
      group.append(svg("rect", { x, y, width: bw, height: bh, stroke: color, "stroke-width": 2 / scale, fill: color, "fill-opacity": 0.12, class: "lh-box-body" }));
      const tag = svg("text", { x: x + 3 / scale, y: y + 14 / scale, fill: color, "font-size": 13 / scale, class: "lh-box-label" });
      tag.textContent = ann.label + (model_ ? " (model)" : "");
      group.append(tag);
      if (st.selected === ann.id) {
        for (const [cx, cy, corner] of [[x, y, "nw"], [x + bw, y, "ne"], [x, y + bh, "sw"], [x + bw, y + bh, "se"]]) {
          group.append(svg("rect", { x: cx - handle / 2, y: cy - handle / 2, width: handle, height: handle, class: "lh-handle", "data-corner": corner }));
        }
      }
      overlay.append(group);
    }
  }

  function attachDrawing(item, overlay) {
    const toImage = (event) => {
      const box = overlay.getBoundingClientRect();
      const vb = overlay.viewBox.baseVal;
      return [(event.clientX - box.left) * (vb.width / box.width), (event.clientY - box.top) * (vb.height / box.height)];
    };
    let drag = null;
    overlay.addEventListener("mousedown", (event) => {
      event.preventDefault();
      root.focus();
      const [px, py] = toImage(event);
      const target = event.target;
      const group = target.closest("g.lh-box");
      const id = group ? group.dataset.id : null;
      const ann = id ? item.record.annotations.find((a) => a.id === id) : null;
      if (target.classList.contains("lh-handle") && ann) {
        drag = { mode: "resize", corner: target.dataset.corner, ann, start: [px, py], orig: [...ann.bbox] };
      } else if (ann && ann.source && ann.source.kind === "user") {
        // No re-render here: it would replace this overlay and drop the drag under way.
        st.selected = id;
        for (const g of overlay.querySelectorAll("g.lh-box")) g.classList.toggle("lh-selected", g === group);
        drag = { mode: "move", ann, start: [px, py], orig: [...ann.bbox] };
      } else {
        st.selected = null;
        const shape = svg("rect", { class: "lh-rubber", x: px, y: py, width: 0, height: 0 });
        overlay.append(shape);
        drag = { mode: "draw", start: [px, py], shape };
      }
    });
    const onMove = (event) => {
      if (!drag) return;
      const [px, py] = toImage(event);
      const [sx, sy] = drag.start;
      if (drag.mode === "draw") {
        drag.shape.setAttribute("x", Math.min(px, sx)); drag.shape.setAttribute("y", Math.min(py, sy));
        drag.shape.setAttribute("width", Math.abs(px - sx)); drag.shape.setAttribute("height", Math.abs(py - sy));
      } else {
        drag.ann.bbox = moved(drag, px - sx, py - sy);
        const body = overlay.querySelector(`g[data-id="${drag.ann.id}"] .lh-box-body`);
        if (body) { const [x, y, w, hh] = drag.ann.bbox; body.setAttribute("x", x); body.setAttribute("y", y); body.setAttribute("width", w); body.setAttribute("height", hh); }
      }
    };
    const onUp = (event) => {
      if (!drag) return;
      const finished = drag;
      drag = null;
      const [px, py] = toImage(event);
      const [sx, sy] = finished.start;
      const t0 = performance.now();
      if (finished.mode === "draw") {
        finished.shape.remove();
        const box = [Math.min(px, sx), Math.min(py, sy), Math.abs(px - sx), Math.abs(py - sy)].map((v) => Math.round(v * 10) / 10);
        if (box[2] < 3 || box[3] < 3) { show(); return; }
        const label = st.drawLabel || classes()[0].name;
        const id = `b${Date.now().toString(36)}${Math.random().toString(36).slice(2, 6)}`;
        const annotation = { id, type: "bbox", label, bbox: box };
        optimistic(item, (anns) => anns.push({ ...annotation, source: { kind: "user", name: model.get("user") } }));
        st.selected = id;
        show();
        op({ action: "add", annotation }, t0);
      } else if (Math.abs(px - sx) + Math.abs(py - sy) > 1) {
        const bbox = finished.ann.bbox.map((v) => Math.round(v * 10) / 10);
        finished.ann.bbox = bbox;
        show();
        op({ action: "update", annotation_id: finished.ann.id, fields: { bbox } }, t0);
      } else {
        finished.ann.bbox = finished.orig;
        show();
      }
    };
    window.addEventListener("mousemove", onMove);
    window.addEventListener("mouseup", onUp, { once: false });
    st.cleanup = () => { window.removeEventListener("mousemove", onMove); window.removeEventListener("mouseup", onUp); };
  }

  function moved(drag, dx, dy) {
    const [x, y, w, hh] = drag.orig;
    if (drag.mode === "move") return [x + dx, y + dy, w, hh];
    let [x0, y0, x1, y1] = [x, y, x + w, y + hh];
    if (drag.corner.includes("w")) x0 += dx; else x1 += dx;
    if (drag.corner.includes("n")) y0 += dy; else y1 += dy;
    return [Math.min(x0, x1), Math.min(y0, y1), Math.abs(x1 - x0), Math.abs(y1 - y0)];
  }

  // -- NER spans ---------------------------------------------------------------------------

  function showSpans(item) {
    const chars = codePoints(item.record.text || "");
    const spans = item.record.annotations.filter((a) => a.type === "span").sort((a, b) => a.start - b.start);
    const box = h("div", { class: "lh-text lh-ner" });
    let at = 0;
    const plain = (start, end) => h("span", { class: "lh-seg", "data-start": String(start) }, chars.slice(start, end).join(""));
    for (const span of spans) {
      if (span.start < at) continue; // overlapping spans are listed below, not inlined
      if (span.start > at) box.append(plain(at, span.start));
      const predicted = span.source && span.source.kind === "model";
      const mark = h("mark", {
        class: `lh-span${st.selected === span.id ? " lh-selected" : ""}${predicted ? " lh-predicted" : ""}`,
        "data-id": span.id || "", style: `--lh-color:${colorOf(span.label)}`,
        onmousedown: (e) => { if (!predicted) { e.preventDefault(); st.selected = span.id; show(); root.focus(); } },
      }, h("span", { class: "lh-seg", "data-start": String(span.start) }, chars.slice(span.start, span.end).join("")),
      h("sub", { class: "lh-span-label" }, span.label));
      box.append(mark);
      at = span.end;
    }
    if (at < chars.length) box.append(plain(at, chars.length));
    stage.append(box, h("div", { class: "lh-hint" }, "select text, then press a label key; click a tag to select it; " +
      `${keys().delete} deletes. Offsets are Unicode code points.`));
    requestAnimationFrame(measureNext);
  }

  function offsetIn(node, offset) {
    // A DOM (node, UTF-16 offset) inside a segment -> code-point offset into the text.
    const seg = (node.nodeType === 3 ? node.parentElement : node).closest(".lh-seg");
    if (!seg) return null;
    const text = node.nodeType === 3 ? node.data : seg.textContent;
    const units = node.nodeType === 3 ? offset : (offset ? seg.textContent.length : 0);
    return Number(seg.dataset.start) + codePoints(text.slice(0, units)).length;
  }

  function tagSelection(label, t0) {
    const item = current();
    if (!item) return;
    if (st.selected) {
      optimistic(item, (anns) => { const a = anns.find((x) => x.id === st.selected); if (a) a.label = label; });
      op({ action: "update", annotation_id: st.selected, fields: { label } }, t0);
      return;
    }
    const sel = window.getSelection();
    if (!sel || sel.isCollapsed || !stage.contains(sel.anchorNode)) {
      setStatus("Select some text first, then press a label key.");
      return;
    }
    let a = offsetIn(sel.anchorNode, sel.anchorOffset);
    let b = offsetIn(sel.focusNode, sel.focusOffset);
    if (a === null || b === null) return;
    if (a > b) [a, b] = [b, a];
    const chars = codePoints(item.record.text || "");
    while (a < b && /\s/.test(chars[a])) a += 1; // trim the spaces a drag picks up
    while (b > a && /\s/.test(chars[b - 1])) b -= 1;
    if (a === b) return;
    sel.removeAllRanges();
    const id = `s${Date.now().toString(36)}${Math.random().toString(36).slice(2, 6)}`;
    const annotation = { id, type: "span", label, start: a, end: b, text: chars.slice(a, b).join("") };
    optimistic(item, (anns) => anns.push({ ...annotation, source: { kind: "user", name: model.get("user") } }));
    op({ action: "add", annotation }, t0);
  }

  // -- review ------------------------------------------------------------------------------

  function showReview(item) {
    const anns = item.record.annotations.filter((a) => a.source && a.source.kind === "user");
    const rows = anns.map((a) => {
      const state = (a.review && a.review.state) || "pending";
      const what = a.type === "bbox" ? `${a.label} [${a.bbox.map((v) => Math.round(v)).join(", ")}]`
        : a.type === "span" ? `${a.label} “${a.text || ""}” ${a.start}-${a.end}` : a.label;
      return h("div", { class: `lh-review-row lh-${state}`, "data-id": a.id },
        h("span", { class: "lh-who" }, a.source.name), h("span", { class: "lh-what" }, what),
        h("span", { class: "lh-state" }, state),
        button("accept", () => op({ action: "review", annotation_id: a.id, state: "accepted" }), "lh-accept-one"),
        button("reject", () => op({ action: "review", annotation_id: a.id, state: "rejected" }), "lh-reject-one"));
    });
    const agreement = item.agreement === null || item.agreement === undefined ? "one labeler" : `agreement ${(item.agreement * 100).toFixed(0)}%`;
    reviewBox.append(h("div", { class: "lh-review-head" }, `Review · ${agreement} · a: accept all · r: reject all · a label key: fix (your label, others rejected)`), ...rows);
  }

  // -- keyboard ----------------------------------------------------------------------------

  function onKey(event) {
    const name = keyName(event);
    const k = keys();
    const t0 = performance.now();
    const hotkeys = model.get("hotkeys");
    const label = Object.keys(hotkeys).find((l) => hotkeys[l] === name);
    let handled = true;
    if (name === k.undo) history("undo", t0);
    else if (name === k.redo || name === "ctrl+y") history("redo", t0);
    else if (name === k.next) goTo(st.pos + 1, t0);
    else if (name === k.back) goTo(st.pos - 1, t0);
    else if (name === k.skip && !st.reviewMode) skip();
    else if (name === k.accept) op({ action: "accept" }, t0);
    else if ((name === k.delete || name === "Backspace") && st.selected) {
      const id = st.selected;
      st.selected = null;
      const item = current();
      optimistic(item, (anns) => { const i = anns.findIndex((a) => a.id === id); if (i >= 0) anns.splice(i, 1); });
      op({ action: "delete", annotation_id: id }, t0);
    } else if (name === "Escape") { st.selected = null; show(); }
    else if (task() === "object_detection" && (name === k.zoom_in || name === "=")) { st.zoom = Math.min(8, st.zoom * 1.5); show(); }
    else if (task() === "object_detection" && name === k.zoom_out) { st.zoom = Math.max(0.25, st.zoom / 1.5); show(); }
    else if (task() === "object_detection" && name === k.zoom_reset && !label) { st.zoom = 1; show(); }
    else if (st.reviewMode && name === "a") op({ action: "review_all", state: "accepted" }, t0);
    else if (st.reviewMode && name === "r") op({ action: "review_all", state: "rejected" }, t0);
    else if (label && st.reviewMode && task() in CLASS_TYPE) op({ action: "fix", labels: [label] }, t0);
    else if (label) chooseLabel(label, t0);
    else handled = false;
    if (handled) { event.preventDefault(); event.stopPropagation(); }
  }
  root.addEventListener("keydown", onKey);
  stage.addEventListener("wheel", (event) => {
    if (task() !== "object_detection" || !event.ctrlKey) return;
    event.preventDefault();
    st.zoom = Math.min(8, Math.max(0.25, st.zoom * (event.deltaY < 0 ? 1.2 : 1 / 1.2)));
    show();
  }, { passive: false });

  for (const name of ["progress", "classes", "hotkeys", "dataset", "user"]) model.on(`change:${name}`, renderHeader);
  model.on("change:filters", renderFilters);
  renderHeader();
  if (!st.reviewMode) renderFilters();
  show();
  send({ type: "ready" });
  return () => {
    if (st.cleanup) st.cleanup();
    for (const url of st.urls) if (url) URL.revokeObjectURL(url);
  };
}

export default { render };
