"""Shared plumbing of the chapters' widgets and plots.

Each explorer is a small class: its ``update(...)`` method computes and draws for one choice of
the controls (usable without a browser, and what the tests call), and its ``widget`` (shown
when the object is the last expression of a cell) wires ``ipywidgets`` controls to it. Slow
callbacks run only when a slider is released (``continuous_update=False``) and report progress
in a status line; plots are real matplotlib figures rendered into an ``ipywidgets.Output``.
"""

from __future__ import annotations

import html
import logging
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

__all__ = ["plt", "widgets", "show_figure", "Explorer", "control", "BLUE", "GREY", "RED", "GREEN", "ORANGE"]

log = logging.getLogger(__name__)

BLUE, GREY, RED, GREEN, ORANGE = "tab:blue", "0.6", "tab:red", "tab:green", "tab:orange"


def plt() -> Any:
    """``matplotlib.pyplot``."""
    import matplotlib.pyplot as plt

    return plt


def widgets() -> Any:
    """The ``ipywidgets`` module."""
    import ipywidgets

    return ipywidgets


def show_figure(out: Any, fig: Any) -> None:
    """Render ``fig`` into the ``ipywidgets.Output`` ``out`` (replacing what was there) and close it."""
    from IPython.display import display

    with out:
        out.clear_output(wait=True)
        display(fig)
    plt().close(fig)
    _LAST_FIGURE[id(out)] = fig  # for Explorer.snapshot


#: The last figure drawn into each output area (by ``id``), for :meth:`Explorer.snapshot`.
_LAST_FIGURE: dict[int, Any] = {}


class Explorer:
    """Shared plumbing: a status line with a progress bar, an output area, and display."""

    def _init_ui(self, controls: Sequence[Any], extra: Sequence[Any] = (),
                 rows: Sequence[Sequence[Any]] | None = None) -> None:
        """Lay out ``controls`` three to a row (or as the given ``rows``), then ``extra``, the
        progress bar and status line, the result line and the plot."""
        W = widgets()
        self.status = W.HTML(value="")
        self.progress = W.IntProgress(value=0, min=0, max=1, layout=W.Layout(width="160px", visibility="hidden"))
        self.text = W.HTML(value="")
        self.out = W.Output(layout=W.Layout(min_height="120px"))
        if rows is None:
            rows = [controls[i:i + 3] for i in range(0, len(controls), 3)]
        rows = [W.HBox(list(r)) for r in rows]
        self.widget = W.VBox(rows + list(extra) + [W.HBox([self.progress, self.status]), self.text, self.out])

    @contextmanager
    def busy(self, what: str, steps: int = 1) -> Iterator[Callable[[str], None]]:
        """Show ``what`` and a progress bar while the block runs; yields ``advance(label)``."""
        t0 = time.perf_counter()
        self.progress.max = max(1, steps)
        self.progress.value = 0
        self.progress.layout.visibility = "visible"
        self.status.value = f"<i>{html.escape(what)}...</i>"

        def advance(label: str) -> None:
            self.progress.value = min(self.progress.max, self.progress.value + 1)
            self.status.value = f"<i>{html.escape(label)}...</i>"

        try:
            yield advance
            self.status.value = f"<span style='color:gray'>updated in {time.perf_counter() - t0:.1f} s</span>"
        except Exception as exc:
            why = f"{html.escape(type(exc).__name__)}: {html.escape(str(exc))}"
            self.status.value = f"<span style='color:#b00'>{why}</span>"
            log.exception("widget update failed")
        finally:
            self.progress.value = self.progress.max
            self.progress.layout.visibility = "hidden"

    def snapshot(self) -> Any:
        """Show what the widget shows now as plain outputs (its result line as HTML, its figure as
        a PNG), so that a notebook stored with its outputs reads without a kernel (GitHub renders
        no live widgets). Returns the figure."""
        from IPython.display import HTML, display

        fig = _LAST_FIGURE.get(id(self.out))
        if self.text.value:
            display(HTML(self.text.value))
        if fig is not None:
            display(fig)
        return fig

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)


def control(kind: str, **kw: Any) -> Any:
    """An ``ipywidgets`` control of class ``kind``: sliders update on release, labels take the
    room they need."""
    W = widgets()
    if kind.endswith("Slider"):
        kw.setdefault("continuous_update", False)
    style = {"description_width": "initial"}
    if kind == "ToggleButtons":
        style["button_width"] = "auto"
    kw.setdefault("style", style)
    return getattr(W, kind)(**kw)
