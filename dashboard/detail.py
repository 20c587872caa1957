"""The image detail in the browser: one ``st.components.v2`` component per gallery (HTML/CSS/JS
inline, no build step) inside an ``st.fragment``.

Why in the browser: the detail used to be Streamlit's dialog, so opening it was a full script run
(about 3 s on a busy server) and each ←/→ another (3.0-4.4 s). Now every gallery sends, with its
page, the detail of each of its images and of the images just before and after the page (the
*window*): the image at up to ``gallery.DETAIL_PX`` as a PNG data URL (decoded in advance by the
page), the given and predicted class, confidence, p(given class), the top classes (the given one
always among them), the caption lines every gallery shows (the diagnosis' cause line from
``core.diagnose.findings``, the verdict, ...) and the nearest images of the given and of the
predicted (or runner-up) class with their thumbnails. A click anywhere on a thumbnail's tile opens
the detail as an overlay at once; ←/→ step through the gallery's images (past the page's end too:
the next images are in the window, and the page asks for more when the ones held run low), Esc or a
click beside it closes it.

What needs the server goes as an event and is handled in the fragment:

* verdict keys M/L/A/X (and U, undo) in the detail are the Review queue's actions, recorded by
  ``review_queue.record_actions`` (one committed SQLite transaction each); an action shows as
  *pending* until the server's acknowledgement comes back, then *saved*; a batch unanswered for
  ``review_queue.RETRY_MS`` is sent again, and closing the tab with one pending asks first;
* "Full detail" opens the server's dialog (``gallery._detail_dialog``) on the image shown: it holds
  what is computed on demand or is made of Streamlit widgets (attention maps, which run the model;
  the review history table with its Undo; the error-cause section; the other registered detail
  sections). Tables, confused pairs and flips still open that dialog directly.

Closing the detail after verdicts were saved reruns the page, so the tiles' verdict boxes show them.

Everything from user data (file names, class names, caption lines) reaches the page as JSON, its
invisible and bidi control characters written out (``ui.visible``), and is shown with
``textContent``, never as HTML.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import threading
from collections import OrderedDict, deque
from collections.abc import Sequence

import numpy as np
import streamlit as st

from core.analysis import neighbours
from core.review.verdicts import MAX_NOTE
from core.run.store import Run
from dashboard import cache, gallery, review_queue, review_ui, state, ui, views

AHEAD = 24  # images sent after the page's last (←/→ past the page's end, the next page's first images)
BEHIND = 8  # and before its first
ASK_MARGIN = 6  # the page asks for the window around its position when fewer are held on either side
TOP_K = 10
_SESSION = "gallery-detail-session"  # {"acked": deque, "failed": {id: message}, "full": {key: row}, "rerun": set}

CSS = """
.gd-overlay { position: fixed; inset: 0; z-index: 1000200; background: rgba(14, 17, 23, .55);
  display: none; align-items: flex-start; justify-content: center; padding-top: 4vh; }
.gd-overlay.open { display: flex; }
.gd-panel { background: var(--st-background-color, #fff); color: var(--st-text-color, #31333f);
  font-family: var(--st-font, sans-serif); font-size: .92rem; border-radius: 10px; padding: 1rem 1.2rem;
  width: min(1100px, 94vw); max-height: 90vh; overflow-y: auto; box-shadow: 0 8px 40px rgba(0,0,0,.35); }
.gd-head { display: flex; gap: .5rem; align-items: center; flex-wrap: wrap; margin-bottom: .6rem; }
.gd-pos { flex: 1; opacity: .75; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.gd-body { display: flex; gap: 1.2rem; align-items: flex-start; flex-wrap: wrap; }
.gd-imgbox { width: 320px; height: 320px; display: flex; align-items: center; justify-content: center;
  background: #111; border-radius: 6px; flex: none; color: #ddd; text-align: center; font-size: .85rem; }
.gd-img { width: 320px; height: 320px; object-fit: contain; image-rendering: pixelated; }
.gd-side { flex: 1; min-width: 300px; display: flex; flex-direction: column; gap: .4rem; }
.gd-title { font-weight: 600; font-size: 1.1rem; overflow-wrap: anywhere; }
.gd-facts, .gd-lines { opacity: .85; font-size: .85rem; white-space: pre-line; overflow-wrap: anywhere; }
.gd-top { display: grid; grid-template-columns: minmax(6rem, 14rem) 1fr 3.2rem; gap: 2px .5rem;
  font-size: .8rem; align-items: center; }
.gd-top .name { white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
.gd-top .bar { height: 10px; background: rgba(49, 51, 63, .35); border-radius: 2px; }
.gd-top .bar.true { background: #2e7d32; } .gd-top .bar.pred { background: #c62828; }
.gd-top .bar.true.pred { background: #1565c0; }
.gd-top .p { text-align: right; font-variant-numeric: tabular-nums; }
.gd-row { display: flex; gap: .4rem; flex-wrap: wrap; align-items: center; }
.gd-panel button { font: inherit; padding: .25rem .65rem; border-radius: .5rem; cursor: pointer;
  border: 1px solid rgba(49, 51, 63, .25); background: var(--st-background-color, #fff); color: inherit; }
.gd-panel button.on { background: var(--st-primary-color, #ff4b4b); color: #fff; border-color: transparent; }
.gd-panel button:disabled { opacity: .45; cursor: default; }
.gd-panel kbd { font-size: .72rem; opacity: .7; margin-left: .3rem; }
.gd-panel select, .gd-panel input { font: inherit; padding: .2rem; max-width: 100%; }
.gd-status { font-size: .88rem; }
.gd-status[data-status=pending] { color: #b26b00; } .gd-status[data-status=saved] { color: #157a2f; }
.gd-status[data-status=failed] { color: #c0262d; }
.gd-near { margin-top: .8rem; display: flex; gap: 1.5rem; flex-wrap: wrap; }
.gd-near-group { flex: 1; min-width: 300px; }
.gd-near-head { font-size: .85rem; font-weight: 600; margin-bottom: .3rem; overflow-wrap: anywhere; }
.gd-near-cells { display: grid; grid-template-columns: repeat(5, 1fr); gap: .4rem; }
.gd-near-cell { font-size: .72rem; min-width: 0; }
.gd-near-cell img { width: 100%; aspect-ratio: 1; object-fit: contain; background: #111; border-radius: 4px;
  image-rendering: pixelated; display: block; }
.gd-near-cell div { white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
"""

HTML = """<div class="gd"><div class="gd-overlay" role="dialog" aria-modal="true" aria-label="Image detail">
  <div class="gd-panel" tabindex="-1">
    <div class="gd-head">
      <button class="gd-prev" title="Previous image (left arrow key)">← Previous</button>
      <button class="gd-next" title="Next image (right arrow key)">Next →</button>
      <span class="gd-pos"></span>
      <button class="gd-full" title="Attention maps, verdict history, error cause: drawn by the server">Full detail…</button>
      <button class="gd-close" title="Close (Esc)">✕</button>
    </div>
    <div class="gd-body">
      <div class="gd-imgbox"><img class="gd-img" alt=""><span class="gd-why"></span></div>
      <div class="gd-side">
        <div class="gd-title"></div>
        <div class="gd-facts"></div>
        <div class="gd-lines"></div>
        <div class="gd-top"></div>
        <div class="gd-review">
          <div class="gd-status"></div>
          <div class="gd-row"><label>Right class (label wrong) <select class="gd-class"></select></label>
            <label>Note <input class="gd-note" type="text"></label></div>
          <div class="gd-row gd-verdicts"></div>
        </div>
        <div class="gd-problem"></div>
      </div>
    </div>
    <div class="gd-near"></div>
  </div>
</div></div>"""

JS = r"""
const NAMES = {"model-wrong": "model wrong", "label-wrong": "label wrong", "ambiguous": "ambiguous",
               "exclude": "exclude"};
const KEYS = {m: "model-wrong", l: "label-wrong", a: "ambiguous", x: "exclude"};
const TILE = /^st-key-gtile-(.+)-(\d+)$/;

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = text;
  return e;
}

export default function (component) {
  const { data, parentElement, setStateValue, setTriggerValue } = component;
  if (!data) return;
  const all = (window.__galleryDetails = window.__galleryDetails || {});
  let s = all[data.key];
  if (!s || s.ident !== data.ident) {
    const old = s;
    s = all[data.key] = { ident: data.ident, items: new Map(), images: new Map(), at: null, asked: null,
                          pending: old ? old.pending : [], local: new Map(), undoStack: [], seq: 0, sends: 0,
                          lastSend: 0, saved: 0 };
  }
  s.data = data;
  s.setStateValue = setStateValue;
  s.setTriggerValue = setTriggerValue;
  s.root = parentElement.querySelector(".gd");
  for (const it of data.items) {
    s.items.set(it.pos, it);
    if (it.src && (!s.images.has(it.row) || s.images.get(it.row).src !== it.src)) {  // new, or redrawn (attention)
      const im = new Image();
      im.src = it.src;
      s.images.set(it.row, im);
      im.decode().catch(() => {});
    }
  }
  // acknowledgements: the queue's protocol (review_queue.record_actions on the server)
  const acked = new Set(data.acked), failed = new Map(data.failed);
  s.pending = s.pending.filter((a) => {
    if (acked.has(a.id)) { a.status = "saved"; s.saved += 1; if (a.kind !== "mark") s.local.delete(a.row); return false; }
    if (failed.has(a.id)) { a.status = "failed"; a.error = failed.get(a.id); s.local.delete(a.row); return false; }
    return true;
  });
  s.inflight = false;
  wire(s);
  install();
  if (s.pending.length) send(s);
  // the detail the address names (img=<row>, a reload or a shared link), once
  // (the server read it: by now the page's own address may be written without it)
  if (data.urlAt !== null && !s.urlDone && !window.__galleryDetailOpen && s.items.has(data.urlAt)) {
    s.urlDone = true;
    open(s, data.urlAt);
  }
  if (s.at !== null && window.__galleryDetailOpen === s) {  // open across a rerun (a remounted element too)
    s.root.querySelector(".gd-overlay").classList.add("open");
    render(s);
  }
}

function wire(s) {
  const root = s.root;
  if (root.__wired) { root.__state = s; return; }
  root.__wired = true;
  root.__state = s;
  const on = (cls, f) => root.querySelector(cls).addEventListener("click", (e) => f(root.__state, e));
  on(".gd-prev", (q, e) => step(q, -1, e.timeStamp));
  on(".gd-next", (q, e) => step(q, 1, e.timeStamp));
  on(".gd-close", (q) => close(q));
  on(".gd-full", (q) => { const it = q.items.get(q.at); if (it) { close(q, true); q.setTriggerValue("full", it.row); } });
  root.querySelector(".gd-overlay").addEventListener("click", (e) => {
    if (e.target === root.querySelector(".gd-overlay")) close(root.__state);
  });
  const verdicts = root.querySelector(".gd-verdicts");
  for (const [k, v] of Object.entries(KEYS)) {
    const b = el("button", "", NAMES[v].charAt(0).toUpperCase() + NAMES[v].slice(1));
    b.dataset.verdict = v;
    b.appendChild(el("kbd", "", k.toUpperCase()));
    b.addEventListener("click", (e) => act(root.__state, v, e.timeStamp));
    verdicts.appendChild(b);
  }
  const undo = el("button", "gd-undo", "Undo");
  undo.appendChild(el("kbd", "", "U"));
  undo.addEventListener("click", () => undoLast(root.__state));
  verdicts.appendChild(undo);
}

function install() {
  if (window.__galleryDetailInstalled) return;
  window.__galleryDetailInstalled = true;
  // a click anywhere on a thumbnail's tile (its invisible Streamlit button covers it) opens the
  // detail here, before the button would start a script run
  document.addEventListener("click", (e) => {
    if (e.button !== 0 || e.ctrlKey || e.metaKey || e.shiftKey) return;
    for (const node of e.composedPath()) {
      if (!node.classList) continue;
      for (const c of node.classList) {
        const m = TILE.exec(c);
        if (!m) continue;
        const s = (window.__galleryDetails || {})[m[1]];
        if (!s || !s.root || !s.root.isConnected) return;
        const pos = s.data.start + parseInt(m[2], 10);
        if (!s.items.has(pos)) return;  // not sent (yet): the server's dialog opens it
        e.preventDefault();
        e.stopPropagation();
        open(s, pos, e.timeStamp);
        return;
      }
    }
  }, true);
  window.addEventListener("keydown", (e) => {
    const s = window.__galleryDetailOpen;
    if (!s) return;
    if (!s.root.isConnected) { window.__galleryDetailOpen = null; return; }
    const t = e.composedPath ? e.composedPath()[0] : e.target;
    const typing = t && (t.tagName === "INPUT" || t.tagName === "TEXTAREA" || t.tagName === "SELECT");
    if (e.key === "Escape") close(s);
    else if (typing || e.ctrlKey || e.metaKey || e.altKey) return;
    else if (e.key === "ArrowLeft") step(s, -1, e.timeStamp);
    else if (e.key === "ArrowRight") step(s, 1, e.timeStamp);
    else if (!e.repeat && KEYS[e.key.toLowerCase()] && s.data.canReview) act(s, KEYS[e.key.toLowerCase()], e.timeStamp);
    else if (!e.repeat && e.key.toLowerCase() === "u" && s.data.canReview) undoLast(s);
    else return;
    e.preventDefault();
    e.stopImmediatePropagation();
  }, true);
  setInterval(() => {
    for (const q of Object.values(window.__galleryDetails || {})) {
      if (q.pending.length && (!q.inflight || performance.now() - q.lastSend > __RETRY_MS__)) send(q, true);
    }
  }, 500);
  window.addEventListener("beforeunload", (e) => {
    const waiting = Object.values(window.__galleryDetails || {}).reduce((n, q) => n + q.pending.length, 0);
    if (waiting) { e.preventDefault(); e.returnValue = waiting + " verdict(s) not saved yet"; return e.returnValue; }
  });
}

function open(s, pos, t0) {
  s.at = pos;
  s.savedAtOpen = s.saved;
  window.__galleryDetailOpen = s;
  s.root.querySelector(".gd-overlay").classList.add("open");
  render(s, t0);
  s.root.querySelector(".gd-panel").focus({ preventScroll: true });
  ask(s);
}

function address(row) {
  // the open detail is in the address (img=<row>), as the server's dialog kept it
  const u = new URL(location.href);
  if (row === null) u.searchParams.delete("img"); else u.searchParams.set("img", String(row));
  if (u.href !== location.href) history.replaceState(history.state, "", u.href);
}

function close(s, quiet) {
  address(null);
  s.root.querySelector(".gd-overlay").classList.remove("open");
  if (window.__galleryDetailOpen === s) window.__galleryDetailOpen = null;
  s.at = null;
  // verdicts saved while it was open: the page's tiles are redrawn to show them
  if (!quiet && (s.saved !== s.savedAtOpen || s.pending.length)) s.setTriggerValue("closed", s.saved);
}

function step(s, delta, t0) {
  const to = s.at + delta;
  if (to < 0 || to >= s.data.total) return;
  s.at = to;
  render(s, t0);
  ask(s);
}

function ask(s) {
  // the window around the position, when the images held run low on either side
  let need = false;
  for (let p = Math.max(0, s.at - __MARGIN__); p < Math.min(s.data.total, s.at + __MARGIN__ + 1) && !need; p++)
    need = !s.items.has(p);
  if (need && s.asked !== s.at) { s.asked = s.at; s.setStateValue("at", s.at); }
}

function newId(s) {
  return Date.now().toString(36) + "-" + (s.seq++) + "-" + Math.random().toString(36).slice(2, 7);
}

function act(s, verdict, t0) {
  const it = s.items.get(s.at);
  if (!it || !s.data.canReview) return;
  const note = s.root.querySelector(".gd-note").value.trim();
  const a = { id: newId(s), kind: "mark", row: it.row, verdict, label: null, note: note || null,
              status: "pending", t: t0 };
  if (verdict === "label-wrong") {
    a.label = parseInt(s.root.querySelector(".gd-class").value, 10);
    if (a.label === it.true) { s.root.querySelector(".gd-problem").textContent = "'label wrong' needs a class other than the given one"; return; }
  }
  s.local.set(it.row, { verdict, label: a.label === null ? -1 : a.label, id: a.id });
  s.pending.push(a);
  s.undoStack.push(a);
  s.root.querySelector(".gd-note").value = "";
  send(s);
  if (s.at + 1 < s.data.total) step(s, 1, t0); else render(s, t0);
}

function undoLast(s) {
  let last;
  while ((last = s.undoStack.pop()) && last.status === "failed") {}
  const a = { id: newId(s), kind: last ? "undo" : "undo-last", row: last ? last.row : null, verdict: null,
              label: null, note: null, status: "pending" };
  if (last) s.local.set(last.row, { verdict: "", label: -1, id: a.id });
  s.pending.push(a);
  send(s);
  render(s);
}

function send(q, retry) {
  // one batch on its way at a time (the queue's rule: a trigger sent while the fragment runs for
  // the last one would interrupt that run); what is made meanwhile goes with the next
  if (!q.pending.length || (q.inflight && !retry)) return;
  q.inflight = true;
  q.sends += 1;
  for (const a of q.pending) a.sent = (a.sent || 0) + 1;
  q.lastSend = performance.now();
  q.setTriggerValue("events", { nonce: q.sends, actions: q.pending.map(({ status, error, t, ...a }) => a) });
}

function verdictOf(s, it) {
  const mine = s.local.get(it.row);
  if (mine) {
    const a = s.pending.find((x) => x.id === mine.id) || s.undoStack.find((x) => x.id === mine.id);
    return { code: mine.verdict, label: mine.label, status: s.pending.some((x) => x.id === mine.id) ? "pending"
             : (a && a.status === "failed" ? "failed" : "saved"), error: a && a.error };
  }
  return { code: it.verdict, label: it.newLabel, status: it.verdict ? "saved" : "" };
}

function render(s, t0) {
  const d = s.data, root = s.root, it = s.items.get(s.at);
  root.querySelector(".gd-prev").disabled = s.at <= 0;
  root.querySelector(".gd-next").disabled = s.at >= d.total - 1;
  root.querySelector(".gd-pos").textContent =
    `Image ${(s.at + 1).toLocaleString()} of ${d.total.toLocaleString()}` + (d.title ? " · " + d.title : "");
  const img = root.querySelector(".gd-img"), why = root.querySelector(".gd-why");
  root.querySelector(".gd-full").disabled = !it;
  if (!it) {
    img.style.display = "none";
    delete img.dataset.row;
    why.textContent = "loading…";
    for (const c of [".gd-title", ".gd-facts", ".gd-lines", ".gd-status"]) root.querySelector(c).textContent = "";
    root.querySelector(".gd-top").replaceChildren();
    root.querySelector(".gd-near").replaceChildren();
    return;
  }
  const im = s.images.get(it.row), src = im ? im.src : (it.src || "");
  address(it.row);
  if (img.dataset.row !== String(it.row) || img.__src !== src) {
    img.src = src;
    img.__src = src;
    img.alt = it.file;
    img.dataset.row = String(it.row);
  }
  img.style.display = it.src ? "" : "none";
  why.textContent = it.src ? "" : "(image unavailable: " + it.why + ")";
  root.querySelector(".gd-title").textContent =
    `${d.classes[it.true]} → ${d.classes[it.pred]} (${it.true === it.pred ? "correct" : "wrong"}, confidence ${it.conf.toFixed(3)})`;
  root.querySelector(".gd-facts").textContent =
    `file: ${it.file}\nsplit: ${it.split} · row ${it.row.toLocaleString()}\np(given class) = ${it.ptrue.toFixed(3)}`;
  root.querySelector(".gd-lines").textContent = it.lines.join("\n");
  const top = root.querySelector(".gd-top");
  top.replaceChildren(...it.top.flatMap(([c, p]) => {
    const bar = el("div", "bar" + (c === it.true ? " true" : "") + (c === it.pred ? " pred" : ""));
    bar.style.width = Math.max(1, Math.round(p * 100)) + "%";
    const cell = el("div");
    cell.appendChild(bar);
    const name = el("div", "name", d.classes[c] + (c === it.true ? " (given)" : ""));
    name.title = d.classes[c];
    return [name, cell, el("div", "p", p.toFixed(3))];
  }));
  const review = root.querySelector(".gd-review");
  review.style.display = d.canReview ? "" : "none";
  root.querySelector(".gd-problem").textContent = d.canReview ? "" : d.problem;
  if (d.canReview) {
    const select = root.querySelector(".gd-class");
    if (select.__classes !== d.ident) {
      select.replaceChildren(...d.classes.map((c, i) => { const o = el("option", "", i + " · " + c); o.value = i; return o; }));
      select.__classes = d.ident;
    }
    root.querySelector(".gd-note").maxLength = d.maxNote;
    const v = verdictOf(s, it);
    if (select.__row !== it.row) { select.value = String(v.code === "label-wrong" && v.label >= 0 ? v.label : it.suggested); select.__row = it.row; }
    const status = root.querySelector(".gd-status");
    status.dataset.status = v.status;
    status.textContent = "verdict now: " + (v.code ? NAMES[v.code] + (v.code === "label-wrong" && v.label >= 0
      ? " → " + d.classes[v.label] : "") : "no verdict") + (v.status === "pending" ? " (pending, not saved yet)"
      : v.status === "failed" ? " (refused: " + v.error + ")" : v.code ? " (saved ✓)" : "");
    for (const b of root.querySelectorAll(".gd-verdicts button[data-verdict]")) b.classList.toggle("on", b.dataset.verdict === v.code);
  }
  const near = root.querySelector(".gd-near");
  near.replaceChildren(...it.near.map((g) => {
    const box = el("div", "gd-near-group");
    box.appendChild(el("div", "gd-near-head", g.head));
    const cells = el("div", "gd-near-cells");
    for (const n of g.rows) {
      const cell = el("div", "gd-near-cell");
      const im = el("img");
      if (d.thumbs[n.row]) im.src = d.thumbs[n.row];
      im.alt = n.file;
      im.title = n.file;
      cell.append(im, el("div", "", n.cap), el("div", "", "distance " + n.d.toFixed(2)));
      cells.appendChild(cell);
    }
    if (!g.rows.length) box.appendChild(el("div", "gd-near-cell", g.none));
    box.appendChild(cells);
    return box;
  }));
  if (t0 !== undefined) {
    // for the benchmark and the tests: when this image is on screen (two frames: after its paint)
    const row = it.row;
    requestAnimationFrame(() => requestAnimationFrame(() => {
      window.__galleryDetailDrawn = { key: d.key, pos: s.at, row, t0, drawn: performance.now() };
    }));
  }
}
""".replace("__RETRY_MS__", str(review_queue.RETRY_MS)).replace("__MARGIN__", str(ASK_MARGIN))

_component = st.components.v2.component("classifier_image_detail", html=HTML, css=CSS, js=JS)


# --------------------------------------------------------------------------- payloads

def _session() -> dict:
    return st.session_state.setdefault(_SESSION, {"acked": deque(maxlen=review_queue.ACKED_KEPT), "failed": {},
                                                  "full": {}, "rerun": set()})


def _thumb_url(run: Run, row: int) -> str | None:
    """Row ``row``'s neighbour thumbnail as a data URL (at most ``gallery.NEIGHBOUR_PX``; a smaller
    image keeps its size, the page enlarges it), or None."""
    img, _ = _detail_pixels(run, row, size=gallery.NEIGHBOUR_PX)
    return None if img is None else _png_url(img)


JPEG_OVER_PX = 64  # a colour image larger than this on its long side is sent as JPEG (quality 90)


def _png_url(img: np.ndarray) -> str:
    """An RGB or gray uint8 image as a data URL: PNG (exact pixels; ``encode_png`` takes RGB), or
    JPEG for a colour photo over ``JPEG_OVER_PX`` px (a page sends some 50 detail images: a noisy
    320-px photo is 240 kB as PNG in base64, 25 kB as JPEG)."""
    from core.data.images import encode_png

    img = np.ascontiguousarray(img)
    if img.ndim == 3 and img.shape[2] == 3 and max(img.shape[:2]) > JPEG_OVER_PX:
        import cv2

        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
        if ok:
            return "data:image/jpeg;base64," + base64.b64encode(buf.tobytes()).decode()
    return "data:image/png;base64," + base64.b64encode(encode_png(img)).decode()


def _detail_pixels(run: Run, row: int, size: int = gallery.DETAIL_PX) -> tuple[np.ndarray | None, str | None]:
    """Row ``row``'s image at most ``size`` px on its long side (a smaller one keeps its size: the
    page enlarges it, crisp), or (None, why not in one line)."""
    from core.data.images import read_image, thumbnail

    try:
        file = run.image_file(row)
        img = run.image(row) if file is None else read_image(file, min_size=(size, size))
    except (ValueError, OSError) as exc:  # OSError: PermissionError for a path outside the root
        return None, views.one_line(exc)
    if img is None:
        return None, "the run stores no image for this row"
    return (thumbnail(img, size=size) if max(img.shape[:2]) > size else img), None


def image_url(run: Run, row: int, *, transformed: bool = False) -> tuple[str | None, str | None]:
    """Row ``row``'s detail image as a data URL, with the gallery's active transforms applied when
    ``transformed``, or (None, why not)."""
    img, why = _detail_pixels(run, int(row))
    if img is None:
        return None, why
    return _png_url(gallery._transformed(run, int(row), img) if transformed else img), None


# What does not change while a run's files do not: each row's image, facts, top classes and
# neighbours (with their thumbnails), process-wide per run key and row, the oldest dropped first.
# A plain dict, not st.cache_data: hashing the arguments of ~600 calls per page run cost 0.6 s.
STATIC_KEPT = 1024
_STATIC: OrderedDict[tuple[str, int], tuple[dict, dict[int, str | None]]] = OrderedDict()
_STATIC_LOCK = threading.Lock()


def _static_item(run: Run, key: str, row: int) -> tuple[dict, dict[int, str | None]]:
    with _STATIC_LOCK:
        held = _STATIC.get((key, row))
        if held is not None:
            _STATIC.move_to_end((key, row))
            return held
    df = run.predictions
    src, why = image_url(run, row)
    near, shown = neighbour_groups(run, row)
    item = {"row": row, "src": src, "why": why and ui.visible(why), "file": ui.visible(df["path"].iat[row]),
            "split": ui.visible(df["split"].iat[row]), "true": int(df["true"].iat[row]),
            "pred": int(df["predicted"].iat[row]), "conf": float(df["confidence"].iat[row]),
            "ptrue": float(df["true_prob"].iat[row]),
            "top": top_classes(np.asarray(run.probs[row]), int(df["true"].iat[row])), "near": near}
    held = (item, {n: _thumb_url(run, n) for n in shown})
    with _STATIC_LOCK:
        _STATIC[(key, row)] = held
        while len(_STATIC) > STATIC_KEPT:
            _STATIC.popitem(last=False)
    return held


def transforms_active() -> bool:
    """Whether a registered transform (the attention overlay) is on for the galleries now."""
    return any(st.session_state.get(f"gtransform-{t.name}", t.default) for t in gallery._TRANSFORMS.values())


def top_classes(probs: np.ndarray, true: int, k: int = TOP_K) -> list[tuple[int, float]]:
    """The ``k`` most probable classes, most probable first, with the given class ``true`` always
    among them (in place of the k-th when it is not): [(class, p), ...]."""
    probs = np.asarray(probs, dtype=np.float64)
    order = np.argsort(-probs, kind="stable")[:k].tolist()
    if true not in order:
        order[-1] = true
        order.sort(key=lambda c: (-probs[c], c))
    return [(int(c), float(probs[c])) for c in order]


def _first_caption_line(run: Run, row: int) -> str:
    """``gallery.caption_lines(run, row)[0]`` from the columns (a row read through pandas is slow)."""
    df = run.predictions
    pred = int(df["predicted"].iat[row])
    mark = "✓" if pred == int(df["true"].iat[row]) else "→"
    return f"{mark} {run.classes[pred]} {float(df['confidence'].iat[row]):.2f}"


def neighbour_groups(run: Run, row: int) -> tuple[list[dict], list[int]]:
    """'Why confused', as data: the nearest images of the given class and of the predicted one (the
    runner-up for a correct image), as ``gallery.neighbours_ui`` draws them; and the rows shown."""
    embeddings = run.embeddings
    if embeddings is None:
        return [], []
    df = run.predictions
    true, pred = int(df["true"].iat[row]), int(df["predicted"].iat[row])
    kind, pools = cache.reference_pools(run, cache.run_key(run))
    second, what = pred, "predicted class"
    if pred == true:
        top2 = gallery.df_value(run, row, "top2")
        second, what = (int(top2) if top2 is not None and int(top2) != true else None), "runner-up class"
    groups, shown = [], []
    for cls, name in ((true, "given class"), (second, what)):
        if cls is None:
            continue
        near, dist = neighbours.nearest(embeddings, row, pools[cls], k=gallery.NEIGHBOURS)
        cells = [{"row": int(n), "d": float(d), "file": ui.visible(df["path"].iat[int(n)]),
                  "cap": ui.visible(_first_caption_line(run, int(n)))} for n, d in zip(near, dist)]
        shown.extend(int(n) for n in near)
        groups.append({"head": ui.visible(f"nearest {kind} images, {name}: {run.classes[cls]}"), "rows": cells,
                       "none": ui.visible(f"(no other {kind} images of {run.classes[cls]})")})
    return groups, shown


def detail_items(run: Run, rows: np.ndarray, positions: Sequence[int], fields: Sequence[gallery.CaptionField] = (),
                 transformed: tuple[int, int] | None = None) -> tuple[list[dict], dict[int, str]]:
    """What the page shows in the detail of ``rows[p]`` for each position ``p``, and the neighbours'
    thumbnails ({row: data URL}). ``transformed``: the positions (start, stop) whose image is drawn
    with the gallery's active transforms (the attention overlay), computed for the page's thumbnails
    already; None when none is active."""
    verdicts, new_labels = review_ui.current(run)  # none at all when the verdicts file cannot be read
    key = cache.run_key(run)
    stored = cache.label_suggestions(run, key, cache.derived_stamp(run, "label_issues"))
    items, thumbs = [], {}
    for pos in positions:
        row = int(rows[pos])
        static, near_thumbs = _static_item(run, key, row)
        thumbs.update(near_thumbs)
        item = {**static, "pos": int(pos), "verdict": str(verdicts[row]), "newLabel": int(new_labels[row]),
                "suggested": review_ui.suggested_class(static["true"], np.asarray(run.probs[row]),
                                                       -1 if stored is None else int(stored[row])),
                "lines": [ui.visible(line) for line in gallery._field_lines(run, row, fields)]}
        if transformed is not None:
            if transformed[0] <= pos < transformed[1]:
                item["src"], item["why"] = image_url(run, row, transformed=True)
            else:
                item["lines"].append("(the attention overlay is drawn for the gallery's page only: "
                                     "Full detail… shows it)")
        items.append(item)
    return items, thumbs


def window(total: int, start: int, count: int, at: int | None) -> np.ndarray:
    """The positions sent: the page's (``start``, ``count`` of them), ``BEHIND`` before it and ``AHEAD``
    after it, and the same span around ``at`` (the detail's position) when it has left the page."""
    spans = [np.arange(max(start - BEHIND, 0), min(start + count + AHEAD, total))]
    if at is not None and not start <= at < start + count:
        spans.append(np.arange(max(at - BEHIND, 0), min(at + AHEAD, total)))
    return np.unique(np.concatenate(spans))


# --------------------------------------------------------------------------- server side

def _on_events(run_id: str, rows: np.ndarray, component_key: str) -> None:
    """The trigger callback: record the page's verdict actions not yet committed by this session."""
    payload = st.session_state.get(component_key, {}).get("events")
    if not isinstance(payload, dict) or not isinstance(payload.get("actions"), list):
        return
    review_queue.record_page_actions(run_id, rows, payload["actions"], _session())


def _on_full(gallery_key: str, component_key: str) -> None:
    row = st.session_state.get(component_key, {}).get("full")
    if isinstance(row, int) and not isinstance(row, bool):
        _session()["full"][gallery_key] = row


def _on_closed(gallery_key: str) -> None:
    _session()["rerun"].add(gallery_key)


def _nothing() -> None:
    """The position's callback: the fragment's rerun reads it (to send the window around it)."""


def detail_component(run: Run, rows: np.ndarray, *, key: str, start: int, count: int, title: str = "",
                     fields: Sequence[gallery.CaptionField] = ()) -> None:
    """The browser detail of gallery ``key`` (see the module docstring): ``rows`` are the gallery's
    rows in order, its page shows ``count`` of them from position ``start``."""
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size == 0:
        return
    _detail_fragment(run, rows, key, int(start), int(count), title, tuple(fields))


@st.fragment
def _detail_fragment(run: Run, rows: np.ndarray, key: str, start: int, count: int, title: str,
                     fields: tuple[gallery.CaptionField, ...]) -> None:
    session = _session()
    component_key = f"gdetail-{key}"
    ident = f"{run.id}|{cache.run_key(run)}|{hashlib.blake2b(rows.tobytes(), digest_size=8).hexdigest()}"
    state.keep(gallery.IMG_PARAM)
    url_at = state.url_position(gallery.IMG_PARAM, rows)
    held = st.session_state.get(component_key)
    at = held.get("at") if isinstance(held, dict) else None
    at = at if isinstance(at, int) and not isinstance(at, bool) and 0 <= at < rows.size else None
    positions = window(rows.size, start, count, at if at is not None else url_at).tolist()
    items, thumbs = detail_items(run, rows, positions, fields,
                                 transformed=(start, start + count) if transforms_active() else None)
    problem = review_ui.problem()
    data = {"key": key, "ident": ident, "title": ui.visible(title), "total": int(rows.size), "start": start,
            "classes": [ui.visible(c) for c in run.classes], "items": items, "thumbs": thumbs,
            "acked": list(session["acked"]),
            "failed": [(k, ui.visible(v)) for k, v in list(session["failed"].items())[-100:]],
            "urlAt": url_at, "canReview": problem is None, "problem": ui.visible(problem or ""), "maxNote": MAX_NOTE}
    _component(key=component_key, data=data, default={"at": None}, height="content",
               on_at_change=_nothing,
               on_events_change=functools.partial(_on_events, run.id, rows, component_key),
               on_full_change=functools.partial(_on_full, key, component_key),
               on_closed_change=functools.partial(_on_closed, key))
    if key in session["full"]:
        gallery.open_detail(run.id, session["full"].pop(key), source=key)
        st.rerun(scope="app")
    if key in session["rerun"]:
        session["rerun"].discard(key)
        st.rerun(scope="app")


gallery.register_page_detail(detail_component)
