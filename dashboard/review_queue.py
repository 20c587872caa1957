"""The Review queue in the browser: one ``st.components.v2`` component (HTML/CSS/JS inline, no build
step) inside an ``st.fragment``.

Why in the browser: before, every key (M/L/A/X/U/P/N) was a full Streamlit script run, so its
latency was the server's load (0.17-1.1 s for N, 5.6 s for a verdict on a busy machine). Now the
page holds a window of the queue (``WINDOW`` images ahead, their pixels as PNG data URLs decoded in
advance) and every key acts at once in the page; the server is only told.

Verdicts: each key makes an *action* with a client id ``{id, kind: mark|undo|undo-last, row,
verdict, label, note}``. The page shows it as **pending** and sends every pending action (the
trigger ``events``); the fragment's callback records each through ``core.review`` (one committed
SQLite transaction each) and returns the ids it committed (``acked``) with the next render. Only
then does the page show the action as **saved**. At most two batches are on their way: the first
key made while one is goes at once, later ones wait for the server's answer (a trigger sent while
the fragment runs for the last one interrupts that run: on a busy server, with a key every 300 ms
and triggers sent freely, no run finished until the keys stopped, 9-12 s per acknowledgement; one
follow-up per answer interrupts at most one run). The answer says which batch the server has
handled (``nonce``) and in which server session (a restarted server is a new one). A batch unanswered for ``RETRY_MS`` is sent again (a lost trigger),
and at once when the page reconnects to a restarted server; closing the tab with one pending asks
first.
A resent action (``sent > 1``) whose verdict is already in force is acknowledged without writing
again, so a retry after a lost acknowledgement does not double the history.

``U`` undoes the reviewer's most recent verdict (the newest one this page made that is still in
force, else the reviewer's newest in force on this run's images, found by the server), not the
verdict on the image shown.

Everything from user data (file names, class names, notes) reaches the page as JSON and is shown
with ``textContent``, never as HTML.
"""

from __future__ import annotations

import base64
import functools
import sqlite3
import uuid
from collections import deque

import numpy as np
import streamlit as st

from core.review.verdicts import MAX_NOTE, VERDICTS, ReviewError, Verdict
from core.run.store import Run
from dashboard import cache, gallery, review_ui, ui, views
from dashboard.state import keep, url_position

WINDOW = 32  # images without a verdict sent ahead of the position (where the verdict keys go)
AHEAD = 12  # and the next and previous images (where N and P go)
BEHIND = 6
ACKED_KEPT = 400  # ids of committed actions a session remembers (and re-sends while the page may wait)
RETRY_MS = 5000  # a batch unanswered this long is sent again (a lost trigger); a reconnect sends at once
IMAGE_PX = gallery.DETAIL_PX
COMPONENT_KEY = "review-queue"
_SESSION = "review-queue-session"  # {"acked": deque of ids, "failed": {id: message}, "open": row | None}

CSS = """
.rq { font-family: var(--st-font, sans-serif); color: var(--st-text-color, #31333f); font-size: 0.95rem; }
.rq-progress { margin: 0 0 .4rem 0; }
.rq-bar { height: 6px; background: var(--st-secondary-background-color, #f0f2f6); border-radius: 3px; }
.rq-bar > div { height: 6px; background: var(--st-primary-color, #ff4b4b); border-radius: 3px; width: 0; }
.rq-body { display: flex; gap: 1.2rem; align-items: flex-start; margin-top: .6rem; flex-wrap: wrap; }
.rq-imgbox { width: 320px; height: 320px; display: flex; align-items: center; justify-content: center;
  background: #111; border-radius: 6px; flex: none; }
.rq-img { max-width: 320px; max-height: 320px; width: 320px; height: 320px; object-fit: contain;
  image-rendering: pixelated; }
.rq-side { flex: 1; min-width: 280px; display: flex; flex-direction: column; gap: .45rem; }
.rq-title { font-weight: 600; font-size: 1.1rem; overflow-wrap: anywhere; }
.rq-facts { color: var(--st-text-color, #555); opacity: .8; font-size: .85rem; white-space: pre-line;
  overflow-wrap: anywhere; }
.rq-status { font-size: .9rem; }
.rq-row { display: flex; gap: .4rem; flex-wrap: wrap; align-items: center; }
.rq button { font: inherit; padding: .3rem .7rem; border-radius: .5rem; cursor: pointer;
  border: 1px solid rgba(49, 51, 63, .25); background: var(--st-background-color, #fff);
  color: inherit; }
.rq button.on { background: var(--st-primary-color, #ff4b4b); color: #fff; border-color: transparent; }
.rq button:disabled { opacity: .45; cursor: default; }
.rq kbd { font-size: .75rem; opacity: .7; margin-left: .3rem; }
.rq select, .rq input { font: inherit; padding: .25rem; max-width: 100%; }
.rq-log { margin-top: .6rem; font-size: .8rem; max-height: 9.5rem; overflow-y: auto; }
.rq-log div { white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
.rq-log [data-status=pending] { color: #b26b00; }
.rq-log [data-status=saved] { color: #157a2f; }
.rq-log [data-status=failed] { color: #c0262d; }
.rq-warn { color: #b26b00; font-weight: 600; }
"""

HTML = """<div class="rq">
  <div class="rq-progress"><span class="rq-progress-text"></span><div class="rq-bar"><div></div></div></div>
  <div class="rq-body">
    <div class="rq-imgbox"><img class="rq-img" alt=""><span class="rq-loading"></span></div>
    <div class="rq-side">
      <div class="rq-title"></div>
      <div class="rq-facts"></div>
      <div class="rq-status"></div>
      <label>Right class (label wrong) <select class="rq-class"></select></label>
      <label>Note (optional, kept with the verdict) <input class="rq-note" type="text"></label>
      <div class="rq-row rq-verdicts"></div>
      <div class="rq-row rq-nav"></div>
    </div>
  </div>
  <div class="rq-pending rq-warn"></div>
  <div class="rq-log"></div>
</div>"""

JS = r"""
const NAMES = {"model-wrong": "model wrong", "label-wrong": "label wrong", "ambiguous": "ambiguous",
               "exclude": "exclude"};
const KEYS = {m: "model-wrong", l: "label-wrong", a: "ambiguous", x: "exclude"};

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

export default function (component) {
  const { data, parentElement, setStateValue, setTriggerValue } = component;
  if (!data) return;
  const all = (window.__reviewQueues = window.__reviewQueues || {});
  let s = all[data.key];
  if (!s) {
    s = all[data.key] = { at: data.start, items: new Map(), images: new Map(), local: new Map(),
                          pending: [], log: [], undoStack: [], seq: 0, sends: 0, lastSend: 0, inflight: 0,
                          asked: null, status: new Map() };
  }
  window.__reviewQueueActive = s;
  // the queue's rows and classes come once per session (then only what changed): keep what the
  // server does not send again
  s.data = Object.assign({}, s.data, data);
  s.setStateValue = setStateValue;
  s.setTriggerValue = setTriggerValue;
  const root = parentElement.querySelector(".rq");
  s.root = root;

  // ---- merge what the server sent: the window's images, acknowledgements, refusals
  for (const it of data.items) {
    s.items.set(it.row, it);
    if (!s.images.has(it.row) && it.src) {
      const im = new Image();
      im.src = it.src;
      s.images.set(it.row, im);
      im.decode().catch(() => {});
    }
  }
  const acked = new Set(data.acked);
  const failed = new Map(data.failed);
  const before = s.pending.length;
  s.pending = s.pending.filter((a) => {
    if (acked.has(a.id)) {
      a.status = "saved";
      settle(s, a);
      (window.__reviewQueueAcks = window.__reviewQueueAcks || []).push({ id: a.id, made: a.t, sent: a.firstSent,
                                                                          saved: performance.now() });
      return false;
    }
    if (failed.has(a.id)) { a.status = "failed"; a.error = failed.get(a.id); s.local.delete(a.row); return false; }
    return true;
  });
  // the server has handled (committed, refused, or failed to write) the latest batch sent, or this
  // is a new server session (a restarted server): the next batch may go (one not handled: wait)
  if (data.session !== s.session || (typeof data.nonce === "number" && data.nonce >= s.sends)) s.inflight = 0;
  s.session = data.session;

  // ---- the skeleton's controls, wired once per mounted element
  if (!root.__wired) {
    root.__wired = true;
    const verdicts = root.querySelector(".rq-verdicts");
    for (const [k, v] of Object.entries(KEYS)) {
      const b = el("button", "", NAMES[v].charAt(0).toUpperCase() + NAMES[v].slice(1));
      b.dataset.verdict = v;
      b.appendChild(el("kbd", "", k.toUpperCase()));
      b.addEventListener("click", (e) => act(window.__reviewQueues[root.__key], "mark", v, e.timeStamp));
      verdicts.appendChild(b);
    }
    const nav = root.querySelector(".rq-nav");
    const buttons = [["previous", "Previous", "P"], ["next", "Next", "N"], ["undo", "Undo", "U"],
                     ["open", "Open detail", ""]];
    for (const [name, label, key] of buttons) {
      const b = el("button", "rq-" + name, label);
      if (key) b.appendChild(el("kbd", "", key));
      b.addEventListener("click", (e) => command(window.__reviewQueues[root.__key], name, e.timeStamp));
      nav.appendChild(b);
    }
  }
  root.__key = data.key;
  const select = root.querySelector(".rq-class");
  const classes = s.data.classes;
  if (select.__classes !== classes.join("\u0000")) {
    select.replaceChildren(...classes.map((c, i) => { const o = el("option", "", i + " · " + c); o.value = i; return o; }));
    select.__classes = classes.join("\u0000");
  }
  root.querySelector(".rq-note").maxLength = data.maxNote;

  // ---- keys, the retry timer and the close warning: one of each per page, acting on the active queue
  if (window.__reviewQueueKeys) document.removeEventListener("keydown", window.__reviewQueueKeys, true);
  window.__reviewQueueKeys = (e) => {
    const q = window.__reviewQueueActive;
    if (!q || !q.root || !q.root.isConnected) return;
    if (e.ctrlKey || e.metaKey || e.altKey || e.repeat) return;
    const t = e.composedPath ? e.composedPath()[0] : e.target;
    if (t && (t.tagName === "INPUT" || t.tagName === "TEXTAREA" || t.tagName === "SELECT" || t.isContentEditable)) return;
    if (document.querySelector("[role=dialog]")) return;  // the image detail has its own keys
    const k = e.key.toLowerCase();
    const now = e.timeStamp;  // when the key event was made: the latency the reviewer sees starts there
    if (KEYS[k]) act(q, "mark", KEYS[k], now);
    else if (k === "n") command(q, "next", now);
    else if (k === "p") command(q, "previous", now);
    else if (k === "u") command(q, "undo", now);
    else return;
    e.preventDefault();
    e.stopPropagation();
  };
  document.addEventListener("keydown", window.__reviewQueueKeys, true);
  if (!window.__reviewQueueTimer) {
    window.__reviewQueueTimer = setInterval(() => {
      for (const q of Object.values(window.__reviewQueues)) {
        if (q.pending.length && (!q.inflight || performance.now() - q.lastSend > RETRY_MS_VALUE)) send(q, true);
      }
    }, 500);
    window.addEventListener("beforeunload", (e) => {
      const waiting = Object.values(window.__reviewQueues).reduce((n, q) => n + q.pending.length, 0);
      if (waiting) { e.preventDefault(); e.returnValue = waiting + " verdict(s) not saved yet"; return e.returnValue; }
    });
  }
  render(s);
  if (s.pending.length && !s.inflight) send(s);  // what was made while the last batch was on its way
  ask(s);
}

const RETRY_MS_VALUE = __RETRY_MS__;
const MAX_OUTSTANDING = 2;

function codeOf(s, pos) {
  const row = s.data.rows[pos];
  if (s.local.has(row)) return s.local.get(row).verdict;
  return s.data.codes[pos];
}

function labelOf(s, pos) {
  const row = s.data.rows[pos];
  if (s.local.has(row)) return s.local.get(row).label;
  return s.data.labels[pos];
}

function settle(s, a) {
  // an acknowledged undo: the verdict now in force is the server's (it may restore an older one)
  if (a.kind !== "mark") s.local.delete(a.row);
}

function send(q, retry) {
  // At most MAX_OUTSTANDING batches on their way: the first key made while a batch is on its way
  // goes at once (the server answers both with one run), later ones wait for the answer. A trigger
  // sent while the server runs the fragment for the last one interrupts that run (Streamlit checks
  // for a newer request before each element it sends), and with a key every 300 ms on a busy
  // server, triggers sent freely left no run to finish (no acknowledgement until the keys stopped);
  // one follow-up per answer interrupts at most one run.
  if (!q.pending.length || (!retry && q.inflight >= MAX_OUTSTANDING)) return;
  q.inflight = retry ? 1 : q.inflight + 1;
  q.sends += 1;
  q.lastSend = performance.now();
  for (const a of q.pending) { a.sent = (a.sent || 0) + 1; if (a.sent === 1) a.firstSent = q.lastSend; }
  q.setTriggerValue("events", { nonce: q.sends, actions: q.pending.map(({ status, error, t, firstSent, ...a }) => a) });
}

function ask(s) {
  // ask for the images around the position when those held run low: the next few (N), the
  // previous few (P) and the next ones without a verdict (where a verdict moves on to)
  const d = s.data;
  let need = false;
  for (let p = Math.max(0, s.at - 3); p < Math.min(d.total, s.at + 6) && !need; p++) need = !s.items.has(d.rows[p]);
  for (let p = s.at + 1, todo = 0; p < d.total && todo < 12 && !need; p++) {
    if (!codeOf(s, p)) { todo++; need = !s.items.has(d.rows[p]); }
  }
  if (need && s.asked !== s.at) {
    s.asked = s.at;
    s.setStateValue("at", s.at);
  }
}

function nextTodo(s, from) {
  for (let p = from; p < s.data.total; p++) if (!codeOf(s, p)) return p;
  return Math.min(from, s.data.total - 1);
}

function act(s, kind, verdict, t0) {
  const d = s.data;
  const row = d.rows[s.at];
  const item = s.items.get(row);
  if (!item) return;
  const note = s.root.querySelector(".rq-note").value.trim();
  const a = { id: Date.now().toString(36) + "-" + (s.seq++) + "-" + Math.random().toString(36).slice(2, 7),
              kind, row, verdict, label: null, note: note || null, status: "pending", file: item.file, t: t0 };
  if (verdict === "label-wrong") {
    a.label = parseInt(s.root.querySelector(".rq-class").value, 10);
    if (a.label === item.true) { flash(s, "'label wrong' needs a class other than the given one"); return; }
  }
  s.local.set(row, { verdict, label: a.label === null ? -1 : a.label });
  s.pending.push(a);
  s.log.unshift(a);
  s.undoStack.push(a);
  s.root.querySelector(".rq-note").value = "";
  if (s.at + 1 < d.total) s.at = nextTodo(s, s.at + 1);
  send(s);
  render(s, t0);
  ask(s);
}

function command(s, name, t0) {
  const d = s.data;
  if (name === "next" && s.at + 1 < d.total) s.at += 1;
  else if (name === "previous" && s.at > 0) s.at -= 1;
  else if (name === "undo") {
    let last;
    while ((last = s.undoStack.pop()) && last.status === "failed") {}
    const a = { id: Date.now().toString(36) + "-" + (s.seq++) + "-" + Math.random().toString(36).slice(2, 7),
                kind: last ? "undo" : "undo-last", row: last ? last.row : null, verdict: null, label: null,
                note: null, status: "pending", file: last ? last.file : "your most recent verdict" };
    if (last) {
      s.local.set(last.row, { verdict: "", label: -1 });
      const pos = d.rows.indexOf(last.row);
      if (pos >= 0) s.at = pos;
    }
    s.pending.push(a);
    s.log.unshift(a);
    send(s);
  } else if (name === "open") {
    s.setTriggerValue("open", d.rows[s.at]);
    return;
  } else return;
  render(s, t0);
  ask(s);
}

function flash(s, text) {
  s.root.querySelector(".rq-pending").textContent = text;
}

function render(s, t0) {
  const d = s.data, root = s.root;
  if (!d.total) return;
  s.at = Math.max(0, Math.min(s.at, d.total - 1));
  const row = d.rows[s.at];
  // the review position is in the address (qimg=<row>): a reload or a shared link opens it again
  const u = new URL(location.href);
  u.searchParams.set("qimg", String(row));
  if (u.href !== location.href) history.replaceState(history.state, "", u.href);
  const item = s.items.get(row);
  let reviewed = 0;
  for (let p = 0; p < d.total; p++) if (codeOf(s, p)) reviewed++;
  const pend = s.pending.length;
  root.querySelector(".rq-progress-text").textContent =
    `${reviewed.toLocaleString()} of ${d.total.toLocaleString()} reviewed · image ${(s.at + 1).toLocaleString()} of ` +
    `${d.total.toLocaleString()} · reviewer: ${d.reviewer}`;
  root.querySelector(".rq-bar > div").style.width = (100 * reviewed / d.total).toFixed(1) + "%";
  const img = root.querySelector(".rq-img");
  const loading = root.querySelector(".rq-loading");
  if (item) {
    const im = s.images.get(row);
    if (img.dataset.row !== String(row)) {
      img.src = im ? im.src : item.src;
      img.alt = item.file;
      img.dataset.row = String(row);
    }
    img.style.display = item.src ? "" : "none";
    loading.textContent = item.src ? "" : "(image unavailable: " + item.why + ")";
    const code = codeOf(s, s.at), lab = labelOf(s, s.at);
    root.querySelector(".rq-title").textContent = `${d.classes[item.true]} → ${d.classes[item.pred]}`;
    root.querySelector(".rq-facts").textContent =
      `confidence ${item.conf.toFixed(3)}, p(given class) ${item.ptrue.toFixed(3)}\nfile: ${item.file}\n` +
      `suggested class: ${d.classes[item.suggested]}`;
    const waiting = s.pending.some((a) => a.row === row);
    root.querySelector(".rq-status").textContent = "verdict now: " +
      (code ? NAMES[code] + (code === "label-wrong" && lab >= 0 ? " → " + d.classes[lab] : "") : "no verdict") +
      (waiting ? " (pending, not saved yet)" : "");
    const select = root.querySelector(".rq-class");
    const want = String(code === "label-wrong" && lab >= 0 ? lab : item.suggested);
    if (select.__row !== row) { select.value = want; select.__row = row; }
    for (const b of root.querySelectorAll(".rq-verdicts button")) b.classList.toggle("on", b.dataset.verdict === code);
  } else {
    img.style.display = "none";
    delete img.dataset.row;
    loading.textContent = "loading…";
  }
  root.querySelector(".rq-previous").disabled = s.at === 0;
  root.querySelector(".rq-next").disabled = s.at >= d.total - 1;
  root.querySelector(".rq-pending").textContent = pend
    ? `${pend} verdict${pend > 1 ? "s" : ""} pending: not saved yet (waiting for the server)` : "";
  const log = root.querySelector(".rq-log");
  log.replaceChildren(...s.log.slice(0, 60).map((a) => {
    const what = a.kind === "mark" ? NAMES[a.verdict] + (a.label !== null ? " → " + d.classes[a.label] : "")
                                   : "undo";
    const state = a.status === "saved" ? "saved ✓" : a.status === "failed" ? "refused: " + a.error : "pending…";
    const line = el("div", "", `${a.file}: ${what} · ${state}`);
    line.dataset.status = a.status;
    line.dataset.id = a.id;
    line.dataset.row = a.row === null ? "" : String(a.row);
    line.dataset.kind = a.kind;
    line.dataset.verdict = a.verdict || "";
    return line;
  }));
  if (t0 !== undefined && item) {
    // for the benchmark: when the image of this key is on screen (two frames: after its paint)
    requestAnimationFrame(() => requestAnimationFrame(() => {
      window.__reviewQueueDrawn = { row, key: t0, drawn: performance.now() };
    }));
  }
}
""".replace("__RETRY_MS__", str(RETRY_MS))

_component = st.components.v2.component("classifier_review_queue", html=HTML, css=CSS, js=JS)


# --------------------------------------------------------------------------- server side

def _session() -> dict:
    return st.session_state.setdefault(_SESSION, {"acked": deque(maxlen=ACKED_KEPT), "failed": {}, "open": None})


def image_url(run: Run, row: int) -> tuple[str | None, str | None]:
    """Row ``row``'s image as a PNG data URL at most ``IMAGE_PX`` on its long side (small images keep
    their size: the page enlarges them, crisp), or (None, why not)."""
    return _image_url(run, cache.run_key(run), int(row))


@st.cache_data(max_entries=4096, show_spinner=False)
def _image_url(_run: Run, key: str, row: int) -> tuple[str | None, str | None]:
    from core.data.images import encode_png, read_image, thumbnail

    try:
        file = _run.image_file(row)
        img = _run.image(row) if file is None else read_image(file)
    except (ValueError, OSError) as exc:
        return None, views.one_line(exc)
    if img is None:
        return None, "the run stores no image for this row"
    if max(img.shape[:2]) > IMAGE_PX:
        img = thumbnail(img, size=IMAGE_PX)
    return "data:image/png;base64," + base64.b64encode(encode_png(np.ascontiguousarray(img))).decode(), None


def _apply(review, rows: np.ndarray, action: dict, *, reviewer: str) -> Verdict | None:
    """Record one action from the page on ``review`` (a ``core.review.reviewed.RunReview``), checked first: it
    comes from the browser. Raises ReviewError with one line saying what was refused."""
    run = review.run
    kind = action.get("kind")
    if kind == "undo-last":
        mine = review.verdicts()
        mine = mine[mine["reviewer"] == reviewer]
        if mine.empty:
            raise ReviewError(f"{reviewer!r} has no verdict in force on this run's images to undo")
        return review.undo(str(mine.loc[mine["id"].idxmax(), "path"]), reviewer=reviewer)
    row = action.get("row")
    if not isinstance(row, int) or isinstance(row, bool) or not np.any(rows == row):
        raise ReviewError(f"Image {row!r} is not in this queue")
    if kind == "undo":
        return review.undo(str(review.paths[row]), reviewer=reviewer)
    if kind != "mark":
        raise ReviewError(f"Unknown action {kind!r}. Actions: ['mark', 'undo', 'undo-last']")
    verdict, label, note = action.get("verdict"), action.get("label"), action.get("note")
    if label is not None and (not isinstance(label, int) or isinstance(label, bool)
                              or not 0 <= label < len(run.classes)):
        raise ReviewError(f"Unknown class index {label!r} (the run has {len(run.classes)} classes)")
    if note is not None and not isinstance(note, str):
        raise ReviewError(f"A note must be text. Received: {note!r}")
    label_name = run.classes[label] if label is not None else None
    sent = action.get("sent")
    if isinstance(sent, int) and sent > 1:  # a retry: its first send may have been committed
        current = review.verdicts().set_index("row")
        if row in current.index and current.at[row, "verdict"] == verdict and \
                (label_name is None or current.at[row, "new_label"] == label_name):
            return None
    return review.mark_row(row, verdict, label=label_name, note=note or None, reviewer=reviewer)


class StoreUnavailable(Exception):
    """The verdicts file cannot be written now (busy, read-only, broken): the actions not yet
    committed stay pending and the page sends them again."""


def record_actions(review, rows: np.ndarray, actions: list, *, reviewer: str, acked: deque,
                   failed: dict[str, str]) -> list[Verdict]:
    """Record the page's ``actions`` (dicts, oldest first) on ``review`` in order, skipping the ids in
    ``acked`` or ``failed``; each committed id is appended to ``acked``, each refused one is put in
    ``failed`` with its one-line reason. Returns the history rows written now (a retry already in
    force is acknowledged without one). Raises StoreUnavailable, leaving the rest pending, when the
    verdicts file cannot be written."""
    done, written = set(acked), []
    for action in actions[:200]:
        if not isinstance(action, dict):
            continue
        action_id = str(action.get("id"))[:64]
        if action_id in done or action_id in failed:
            continue
        try:
            verdict = _apply(review, rows, action, reviewer=reviewer)
        except sqlite3.Error as exc:
            raise StoreUnavailable(str(exc)) from None
        except ReviewError as exc:
            if str(exc).startswith(f"{review.db.path}:"):  # the file, not the verdict (core.review's _error)
                raise StoreUnavailable(str(exc)) from None

            failed[action_id] = views.one_line(exc)
            continue
        acked.append(action_id)
        if verdict is not None:
            written.append(verdict)
    return written


def _patch_codes(session: dict, run: Run, written: list[Verdict]) -> None:
    """Bring the session's copy of the verdicts in force up to date with the rows this session has
    just written, without reading the whole table again, when nobody else has written since the copy
    (the new ids follow the copy's revision without a gap); otherwise drop it (read again)."""
    held = session.get("codes")
    ids = sorted(v.id for v in written)
    if held is None or held[0] != cache.run_key(run) or ids != list(range(held[1] + 1, held[1] + 1 + len(ids))):
        session.pop("codes", None)
        return
    _, _, verdicts, labels = held
    index = {c: i for i, c in enumerate(run.classes)}
    review = review_ui._review(run)
    for v in sorted(written, key=lambda v: v.id):
        row = review.row(v.path)
        verdicts[row] = v.verdict or ""
        labels[row] = index.get(v.label, -1) if v.verdict == "label-wrong" else -1
        if v.verdict == "label-wrong" and labels[row] < 0:
            verdicts[row] = ""  # as row_arrays: a class this run does not have counts as none
    session["codes"] = (held[0], ids[-1], verdicts, labels)


def _codes(session: dict, run: Run) -> tuple[np.ndarray, np.ndarray]:
    """(verdicts, new_labels) of every row (``RunReview.row_arrays``), from the session's copy while
    the verdicts file's revision is the one it reflects, else read again."""
    key, root = cache.run_key(run), cache.store_root()
    revision = cache.review_db(root).revision()
    held = session.get("codes")
    if held is None or held[0] != key or held[1] != revision:
        verdicts, labels = cache.review_rows(run, key, root, revision)
        held = session["codes"] = (key, revision, verdicts.copy(), labels.copy())
    return held[2], held[3]


def _on_events(run_id: str, rows: np.ndarray) -> None:
    """The trigger callback: record every action of the payload not yet committed by this session."""
    payload = st.session_state.get(COMPONENT_KEY, {}).get("events")
    if not isinstance(payload, dict) or not isinstance(payload.get("actions"), list):
        return
    session = _session()
    if isinstance(payload.get("nonce"), int) and not isinstance(payload.get("nonce"), bool):
        # handled, whatever comes of it: the page may send its next batch (the newest wins)
        session["nonce"] = max(session.get("nonce") or 0, payload["nonce"])
    recorded = record_page_actions(run_id, rows, payload["actions"], session)
    if recorded is not None and recorded[1]:
        _patch_codes(session, *recorded)


def record_page_actions(run_id: str, rows: np.ndarray, actions: list, session: dict
                        ) -> tuple[Run, list[Verdict]] | None:
    """A page's verdict actions (the queue's, or an in-page detail's) recorded for this session
    (``session``: its ``acked`` and ``failed``): (run, the history rows written now), or None when
    nothing could be recorded. A run that cannot be loaded fails each action with its reason; a
    verdicts file that cannot be written is said above the page, its actions stay pending (the page
    sends them again) and the session's copy of the verdicts (``codes``) is dropped."""
    try:
        run = cache.load_run(cache.store_root(), run_id)
    except cache.RUN_ERRORS as exc:
        for action in actions[:100]:
            if isinstance(action, dict):
                session["failed"][str(action.get("id"))[:64]] = views.one_line(exc)
        return None
    try:
        committed = record_actions(review_ui._review(run), rows, actions, reviewer=review_ui.reviewer(),
                                   acked=session["acked"], failed=session["failed"])
    except StoreUnavailable as exc:
        review_ui._fail(ReviewError(str(exc)))
        session.pop("codes", None)
        return None
    if committed:
        review_ui._recent.clear()
    return run, committed


def _on_at() -> None:
    """The position's callback: the page asks for the images around it (the fragment's rerun reads
    it), and sends them all again, in case a reply it never got had some of them."""
    _session()["resend"] = True


def _on_open() -> None:
    row = st.session_state.get(COMPONENT_KEY, {}).get("open")
    if isinstance(row, int) and not isinstance(row, bool):
        _session()["open"] = row


def queue_component(run: Run, rows: np.ndarray, *, how: str, identity: str) -> None:
    """The queue (see the module docstring): drawn in a fragment, so a verdict reruns only it."""
    rows = np.asarray(rows, dtype=np.int64)
    st.caption(ui.plain(f"{views.plural(rows.size, 'image')}: {how}."))  # how names classes: text, never Markdown
    if rows.size == 0:
        st.info("No images in this set.")
        return
    gallery.register_source(run, review_ui.QUEUE_SOURCE, rows, title=f"review queue: {how}")
    _queue_fragment(run, rows, identity)
    st.caption("Keys: M model wrong, L label wrong (the class chosen), A ambiguous, X exclude, U undo your most "
               "recent verdict, P previous, N next. A verdict moves on to the next image without one; it shows "
               "as saved once the server has committed it.")


def _items(run: Run, rows: np.ndarray) -> list[dict]:
    """What the page shows of each of ``rows``: its image (a data URL, or why there is none), file,
    classes, confidence, p(given class) and the class suggested for 'label wrong'."""
    df = run.predictions
    true, pred = df["true"].to_numpy(), df["predicted"].to_numpy()
    conf, ptrue, paths = df["confidence"].to_numpy(), df["true_prob"].to_numpy(), df["path"].to_numpy()
    items = []
    for row in rows.tolist():
        src, why = image_url(run, row)
        items.append({"row": row, "src": src, "why": why, "file": ui.visible(paths[row]), "true": int(true[row]),
                      "pred": int(pred[row]), "conf": float(conf[row]), "ptrue": float(ptrue[row]),
                      "suggested": review_ui.suggestion(run, row)})
    return items


QUEUE_IMG_PARAM = "qimg"  # the image the queue shows (its row), kept in the address by the page


@st.fragment
def _queue_fragment(run: Run, rows: np.ndarray, identity: str) -> None:
    session = _session()
    try:
        verdicts, new_labels = _codes(session, run)
    except ReviewError as exc:
        st.caption(ui.plain(review_ui._fail(exc)))
        return
    codes, labels = verdicts[rows], new_labels[rows]
    first = review_ui._first_unreviewed(rows, verdicts)
    queue_id = f"{run.id}|{cache.run_key(run)}|{identity}"
    keep(QUEUE_IMG_PARAM)
    state = st.session_state.get(COMPONENT_KEY)
    at = state.get("at") if isinstance(state, dict) else None
    addressed = None
    if session.get("queue") != queue_id:  # a new queue (or a reload): the address's image, else the first to do
        addressed = url_position(QUEUE_IMG_PARAM, rows)
        at = first if addressed is None else addressed
    else:
        at = first if not isinstance(at, int) else min(max(at, 0), rows.size - 1)
    session["queue"] = queue_id
    # the images around the position (N, P) and the next ones without a verdict (where a verdict goes)
    near = np.arange(max(at - BEHIND, 0), min(at + AHEAD, rows.size))
    todo = at + 1 + np.flatnonzero(codes[at + 1:] == "")[:WINDOW]
    positions = np.union1d(near, todo)
    cached = session.setdefault("items", {})
    if session.get("items-of") != queue_id or len(cached) > 4 * WINDOW:
        cached.clear()
        session["items-of"] = queue_id
    missing = [int(r) for r in rows[positions] if int(r) not in cached]
    for item in _items(run, np.asarray(missing, dtype=np.int64)):
        cached[item["row"]] = item
    # What the page keeps is sent once per session (a reload is a new session): the queue's rows
    # and classes, and each image. A verdict's rerun sent them all again: 50 images as data URLs
    # (with 224-px photos, megabytes) on every acknowledgement.
    sent = session.get("sent")
    if sent is None or sent["queue"] != queue_id:
        sent = session["sent"] = {"queue": queue_id, "static": False, "rows": set()}
    if session.pop("resend", False):
        sent["rows"].clear()
    items = [cached[int(r)] for r in rows[positions] if int(r) not in sent["rows"]]
    data = {"key": queue_id, "reviewer": review_ui.reviewer(), "total": int(rows.size),
            "codes": [str(c) for c in codes], "labels": [int(x) for x in labels], "items": items,
            "start": first if addressed is None else addressed,
            "acked": list(session["acked"]),
            "failed": [(k, ui.visible(v)) for k, v in list(session["failed"].items())[-100:]],
            "maxNote": MAX_NOTE, "verdicts": list(VERDICTS), "nonce": session.get("nonce"),
            "session": session.setdefault("token", uuid.uuid4().hex)}
    if not sent["static"]:
        data.update(rows=rows.tolist(), classes=[ui.visible(c) for c in run.classes])
    _component(key=COMPONENT_KEY, data=data, default={"at": first}, height="content",
               on_at_change=_on_at, on_events_change=functools.partial(_on_events, run.id, rows),
               on_open_change=_on_open)
    sent["static"] = True  # the element is on its way (a run stopped later still sends it)
    sent["rows"].update(item["row"] for item in items)
    if session.get("open") is not None:
        row = session.pop("open")
        session["open"] = None
        gallery.open_detail(run.id, row, source=review_ui.QUEUE_SOURCE)
        st.rerun(scope="app")
