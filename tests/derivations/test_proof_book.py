"""The committed proof book (docs/proofs/) must be exactly what the derivations produce.

SymForce's pattern: the generated pages are committed; this test regenerates them in
memory and fails on any difference.  After changing a derivation, update the pages with

    SOFTMAXLAB_UPDATE_PROOFS=1 pytest tests/derivations/test_proof_book.py

(or ``softmaxlab derive``) and commit them.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from softmaxlab.derivations import book

BOOK = Path(__file__).resolve().parents[2] / "docs" / "proofs"
UPDATE = os.environ.get("SOFTMAXLAB_UPDATE_PROOFS") == "1"


def test_proof_book_regenerates_without_diff(records):
    pages = book.render_pages(records)
    if UPDATE:
        book.write_pages(BOOK, pages)
        for stale in book.differing_pages(BOOK, pages):
            (BOOK / stale).unlink()
    differing = book.differing_pages(BOOK, pages)
    assert not differing, (
        f"docs/proofs/ differs from the derivations in {differing}; regenerate with "
        "`SOFTMAXLAB_UPDATE_PROOFS=1 pytest tests/derivations/test_proof_book.py` "
        "or `softmaxlab derive`, and commit the pages"
    )


def test_pages_are_deterministic(records):
    assert book.render_pages(records) == book.render_pages(records)
    for text in book.render_pages(records).values():
        assert " s |" not in text and "seconds" not in text  # no timings in the pages


def test_every_statement_has_an_anchor_on_its_page(records):
    pages = book.render_pages(records)
    for record in records:
        page = pages[f"{record.family}.md"]
        assert f'<a id="{record.slug}"></a>' in page
        assert f"{record.family}.md#{record.slug}" in pages["index.md"]


def _replay(records):
    """A stand-in for ``derive_all`` that reports the session's records without re-deriving."""

    def derive_all(families=None, on_record=None):
        for record in records:
            if on_record is not None:
                on_record(record)
        return records

    return derive_all


def _arguments(out: Path, check: bool) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    book.add_arguments(parser)
    return parser.parse_args(["--out", str(out)] + (["--check"] if check else []))


def test_derive_writes_then_check_passes_and_detects_an_edit(tmp_path, records, monkeypatch, capsys):
    monkeypatch.setattr(book, "derive_all", _replay(records))
    out = tmp_path / "proofs"
    assert book.run(_arguments(out, check=True)) == 2  # nothing there yet: not a checkout's proof book
    assert not out.exists(), "--check must write nothing"
    out.mkdir()
    assert book.run(_arguments(out, check=True)) == 1  # an empty proof book: every page differs
    assert book.run(_arguments(out, check=False)) == 0
    assert book.run(_arguments(out, check=True)) == 0
    edited = out / "softmax.md"
    edited.write_text(edited.read_text(encoding="utf-8") + "\nhand edit\n", encoding="utf-8")
    (out / "stale.md").write_text("old page\n", encoding="utf-8")
    capsys.readouterr()
    assert book.run(_arguments(out, check=True)) == 1
    printed = capsys.readouterr().out
    assert "softmax.md" in printed and "stale.md" in printed
    assert edited.read_text(encoding="utf-8").endswith("hand edit\n"), "--check must not rewrite"


def test_derive_prints_one_line_per_statement(tmp_path, records, monkeypatch, capsys):
    monkeypatch.setattr(book, "derive_all", _replay(records))
    book.run(_arguments(tmp_path, check=False))
    lines = capsys.readouterr().out.splitlines()
    for record in records:
        assert any(record.title in line and record.status in line and line.startswith(record.family)
                   for line in lines), record.title
    assert lines[-1].startswith("total ")


def test_check_without_a_proof_book_says_so_instead_of_listing_differences(tmp_path, capsys):
    assert book.run(argparse.Namespace(out=tmp_path / "docs" / "proofs", check=True)) == 2
    err = capsys.readouterr().err
    assert "there is no proof book at" in err and "softmaxlab checkout" in err
