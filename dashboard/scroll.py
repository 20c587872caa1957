"""Bring an element of the page into view from Python: ``scroll_to(key, nonce)`` scrolls the
container ``st.container(key=key)`` to the top of the window once per new ``nonce`` (a JS-only
``st.components.v2`` component; Streamlit has no scroll command of its own).

Used by the confusion page: a clicked cell's images were drawn below the fold (issue 24).
"""

from __future__ import annotations

import streamlit as st

JS = r"""
export default function (component) {
  const { data } = component;
  if (!data || !data.key) return;
  window.__scrolledTo = window.__scrolledTo || {};
  if (window.__scrolledTo[data.key] === data.nonce) return;  // once per nonce, not on every rerun
  window.__scrolledTo[data.key] = data.nonce;
  if (!data.nonce) return;  // nothing asked yet (the page as opened)
  const go = (tries) => {
    const target = document.querySelector(".st-key-" + CSS.escape(data.key));
    if (!target) { if (tries > 0) requestAnimationFrame(() => go(tries - 1)); return; }
    target.style.scrollMarginTop = "4rem";  // below Streamlit's header
    target.scrollIntoView({ block: "start", behavior: "instant" });
  };
  requestAnimationFrame(() => go(60));
}
"""

_component = st.components.v2.component("classifier_scroll_to", js=JS)


def scroll_to(key: str, nonce: str) -> None:
    """Scroll the container keyed ``key`` into view, once for each new ``nonce``."""
    _component(key=f"scroll-to-{key}", data={"key": key, "nonce": nonce}, height=0)
