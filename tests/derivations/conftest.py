"""Shared fixtures for the derivation tests: the proof book is derived once per session."""

from __future__ import annotations

import pytest

from softmaxlab.derivations import book


@pytest.fixture(scope="session")
def records():
    """``derive_all()``, run once for the whole session (SymPy is the slow part)."""
    return book.derive_all()


@pytest.fixture(scope="session")
def records_by_slug(records):
    return {record.slug: record for record in records}
