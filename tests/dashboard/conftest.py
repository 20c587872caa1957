"""Fixtures shared by the dashboard's tests."""

from __future__ import annotations

import pytest
import streamlit


@pytest.fixture
def served(monkeypatch) -> dict:
    """What the pages hand to st.download_button, by widget key (bytes, or a callable)."""
    served = {}
    original = streamlit.download_button

    def spy(label, data, *args, **kwargs):
        served[kwargs.get("key")] = data
        return original(label, data, *args, **kwargs)

    monkeypatch.setattr(streamlit, "download_button", spy)
    return served
