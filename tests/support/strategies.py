"""Hypothesis strategies shared by the tests."""

from __future__ import annotations

from hypothesis import strategies as st


def upload_name(max_size: int) -> st.SearchStrategy[str]:
    """One path segment as users name uploads: any Unicode but '/' and NUL (and no lone
    surrogates, which JSON round-trips but no real file name produces), Japanese favoured."""
    return st.text(
        alphabet=st.one_of(
            st.characters(blacklist_categories=("Cs",), blacklist_characters="/\0"),
            st.sampled_from("日本語の報告書写真ファイルアップロード"),
        ),
        min_size=1,
        max_size=max_size,
    ).filter(lambda s: s not in (".", ".."))
