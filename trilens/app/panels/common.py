"""What every panel shares: downloads of the data and the figure it shows, and errors shown in the page."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pandas as pd
import streamlit as st

from ...errors import TrilensError
from ...viz import figure_html


@contextmanager
def shown_errors() -> Iterator[None]:
    """A ``TrilensError`` (bad input, a model that cannot do this) becomes a message in the page, not a traceback."""
    try:
        yield
    except TrilensError as err:
        st.warning(str(err))


def downloads(name: str, frame: Callable[[], pd.DataFrame] | pd.DataFrame, figure: Any = None,
              extra: dict[str, Any] | None = None) -> None:
    """Download buttons: the data shown as CSV and JSON, the figure as standalone HTML (offline). Files are built
    when clicked, not on every rerun."""
    get = frame if callable(frame) else (lambda: frame)
    with st.container(horizontal=True):
        st.download_button("CSV", lambda: get().to_csv(index=False), f"{name}.csv", "text/csv", key=f"dl-{name}-csv",
                           on_click="ignore", icon=":material/download:")
        st.download_button("JSON", lambda: json.dumps({"rows": get().to_dict(orient="records"), **(extra or {})},
                                                      default=_jsonable),
                           f"{name}.json", "application/json", key=f"dl-{name}-json", on_click="ignore",
                           icon=":material/download:")
        if figure is not None:
            st.download_button("figure (HTML)", lambda: figure_html(figure), f"{name}.html", "text/html",
                               key=f"dl-{name}-html", on_click="ignore", icon=":material/download:")


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def chart(figure: Any, key: str) -> None:
    """The figure as the library draws it (the house look, as in the downloaded HTML): Streamlit's own chart theme
    merges its template into the figure in the browser at every draw, 0.04-0.12 s per change of two charts here."""
    st.plotly_chart(figure, key=key, width="stretch", theme=None, config={"displaylogo": False})


def html_table(frame: pd.DataFrame) -> None:
    """A small static table as plain HTML: no data-grid or Arrow script for the browser to load (about 1 MB)."""
    st.html(_TABLE_STYLE + frame.to_html(index=False, border=0, classes="trilens-table"))


_TABLE_STYLE = ("<style>.trilens-table{border-collapse:collapse;font-size:0.9rem}.trilens-table th{text-align:left;"
                "font-weight:600}.trilens-table th,.trilens-table td{padding:0.25rem 0.75rem;border-bottom:1px solid "
                "rgba(49,51,63,0.1)}</style>")
