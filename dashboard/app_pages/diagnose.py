"""Diagnose: why the model errs, one card per finding, the most important first.

Cards come from the stored results of ``core.diagnose`` (``dashboard.diagnose_ui``):
suspected label errors, leaks and duplicates, odd images, calibration, error
slices. They are ranked by how many misclassified images of the evaluation
split each explains; "Show images" opens the card's gallery, ordered by the
finding's score. A run without them offers "Compute diagnoses".
"""

from __future__ import annotations

import streamlit as st

from core import diagnose
from dashboard import causes_ui, diagnose_ui, figures, gallery, state, ui, views

OPEN_KEY = "diagnose-open"
CARD_PARAM = "card"


def _toggle(key: str, card: str) -> None:
    st.session_state[key] = None if st.session_state.get(key) == card else card


def status_ui(run, findings: dict) -> list[str]:
    """One line per kind that is not stored: why (a recorded skip) or that it is not computed yet.
    Returns the kinds not stored and not known to be impossible on this run."""
    missing = [name for name, stored in findings.items() if stored is None]
    skipped = diagnose_ui.skipped_reasons(run)
    for name in missing:
        if name in skipped:
            st.caption(ui.plain(f"{name}: cannot run on this run: {skipped[name]}"))
    pending = [name for name in missing if name not in skipped]
    # a result stored but no longer current (an older version of the kind, other settings, or an input it
    # reads recomputed since) is out of date, not absent: its card is hidden until it is recomputed
    stale = [name for name in pending if run.derived_info(name) is not None]
    never = [name for name in pending if name not in stale]
    if never:
        st.info(ui.plain("Not computed yet for this run: " + ", ".join(never) + "."))
    if stale:
        st.info(ui.plain("Out of date (made by an older version of the tool, with other settings, or before what "
                         "it reads was recomputed): " + ", ".join(stale) + ". Compute diagnoses to bring "
                         f"{'it' if len(stale) == 1 else 'them'} up to date."))
    return pending


def calibration_ui(run) -> None:
    stored = diagnose_ui.stored_findings(run)["calibration"]
    s = stored.summary
    # before and after are measured on the images that did not fit the temperature: where those are part of
    # the evaluated split, "before" differs from the card's ECE (of the whole split) and must say so
    n_held, n_eval = s.get("n_held_out"), s.get("n_evaluated")
    part = isinstance(n_held, int) and isinstance(n_eval, int) and n_held != n_eval
    where = f" ({n_held:,} held-out images)" if part else ""
    cols = st.columns(3)
    cols[0].metric(f"ECE before temperature scaling{where}", f"{s['ece_before']:.4f}")
    cols[1].metric(f"ECE after{where}", f"{s['ece_after']:.4f}", delta=f"{s['ece_after'] - s['ece_before']:+.4f}",
                   delta_color="inverse")
    cols[2].metric("Temperature", f"{s['temperature']:.3f}")
    st.caption(ui.plain(f"Fitted: {s['fit_on']}"
                        + (f"; the ECE above, {s['ece']:.4f}, is of all {n_eval:,}." if part else "")))
    cols = st.columns(3)
    cols[0].plotly_chart(figures.reliability_figure(stored.table("reliability")), key=f"reliability-{run.id}")
    histogram = stored.table("confidence_histogram")
    cols[1].plotly_chart(figures.confidence_histogram_figure(histogram, probabilities="raw"),
                         key=f"confidence-raw-{run.id}")
    cols[2].plotly_chart(figures.confidence_histogram_figure(histogram, probabilities="scaled"),
                         key=f"confidence-scaled-{run.id}")


def card_ui(run, card: diagnose_ui.Card, rank: int, open_key: str) -> None:
    with st.container(border=True, key=f"diagnose-card-{card.key}"):
        head, side = st.columns([5, 1], vertical_alignment="center")
        head.subheader(ui.plain(f"{rank}. {card.title}"), anchor=False)
        side.metric("errors explained", f"{card.explains:,}")
        st.markdown(ui.plain(card.text))
        for note in card.notes:
            st.caption(ui.plain(note))
        if card.kind == "calibration":
            calibration_ui(run)
        is_open = st.session_state.get(open_key) == card.key
        if card.rows.size == 0:
            st.caption("No images.")
            return
        st.button(("Hide" if is_open else "Show") + f" its {views.plural(card.rows.size, 'image')}",
                  key=f"diagnose-show-{card.key}", on_click=_toggle, args=(open_key, card.key))
        if is_open:
            gallery.gallery_ui(run, card.rows, key=f"diagnose-{card.key}", order_note=card.order_note,
                               title=card.title, page_key=ui.scoped(run, f"diagnose-page-{card.key}"))


def render() -> None:
    run = ui.current_run()
    st.title("Diagnose")
    st.caption("Why does the model err? One card per finding, ranked by how many misclassified images of "
               f"the '{ui.plain(run.eval_split)}' split it explains (its images that are such errors; an error "
               f"may count on several cards; calibration counts mistakes made with confidence ≥ "
               f"{diagnose_ui.CONFIDENT:.0%}).")
    findings = diagnose_ui.stored_findings(run)
    pending = status_ui(run, findings)
    if pending:
        diagnose_ui.compute_ui(run, pending)
    cards = diagnose_ui.cards(run)
    open_key = ui.scoped(run, OPEN_KEY)
    keys = [c.key for c in cards]
    # the open card is in the address (card=<key>), so a reload or a shared link opens it again
    state.seed(open_key, CARD_PARAM, lambda t: state.decode_choice(t, keys, name=CARD_PARAM),
               scope=ui.run_scope(run))
    for rank, card in enumerate(cards, start=1):
        card_ui(run, card, rank, open_key)
    opened = st.session_state.get(open_key)
    state.publish(**{CARD_PARAM: opened if opened in keys else None})
    causes_ui.pair_mix_ui(run)  # "Shirt → T-shirt/top: 41 label, 12 model, 30 ambiguous"
    headlines = {name: diagnose.headline(name, s.summary) for name, s in findings.items() if s is not None}
    with st.expander("Every diagnosis, one line each"):
        st.caption("  \n".join(ui.plain(f"{name}: {line}") for name, line in headlines.items()))


render()
