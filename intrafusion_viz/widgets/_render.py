"""Figure holders for dashboards: a live ``go.FigureWidget`` updated in place, or a static fallback
(a ``go.Figure`` redrawn as HTML in an ``Output`` widget) where FigureWidget does not render (Colab)."""
from __future__ import annotations

import sys

RENDERERS = ("auto", "widget", "static")
COMPACT_MIN_SIZE = 256  # numeric arrays at least this large travel to the browser as binary (base64)
_DTYPES = {"f": ("f4", "<f4"), "i": ("i4", "<i4"), "u": ("u4", "<u4"), "b": ("u1", "u1")}  # plotly.js name, numpy


def compact_arrays(value):
    """``value`` (a plotly message: dicts, lists, arrays) with every large numeric numpy array as a
    plotly.js typed-array spec ``{"dtype", "bdata", "shape"}``: float32 / int32 bytes in base64, which
    plotly.js decodes itself.  A FigureWidget otherwise sends an (n, k) heatmap and its (n, k, 3)
    hover data as nested JSON lists: megabytes per slider move for a 512-channel group."""
    import base64

    import numpy as np

    if isinstance(value, dict):
        return {key: compact_arrays(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [compact_arrays(item) for item in value]
    if isinstance(value, np.ndarray) and value.size >= COMPACT_MIN_SIZE and value.dtype.kind in _DTYPES \
            and 1 <= value.ndim <= 3:
        dtype, numpy_dtype = _DTYPES[value.dtype.kind]
        if value.dtype.kind in "iu" and value.size and (value.max() > 2**31 - 1 or value.min() < -2**31):
            return value
        data = np.ascontiguousarray(value, dtype=numpy_dtype)
        return {"dtype": dtype, "bdata": base64.b64encode(data.tobytes()).decode("ascii"),
                "shape": ",".join(map(str, value.shape))}
    return value


def esm_without_trace_deltas(source: str):
    """plotly's FigureWidget front-end (``source``) with its trace deltas cut, or None where the code
    is not as expected (then the widget keeps plotly's own).

    After every update, plotly's front-end sends each updated trace's full data back to Python (its
    "trace deltas": what plotly.js holds that the Python figure lacks, so that Python learns plotly.js
    defaults).  Arrays that went out as binary typed arrays come back as one buffer per row or cell:
    for a 32x17 plan with its (32, 17, 3) hover data, 3.6-5 MB per slider move, which the browser
    builds, the server relays and the kernel decodes before the next figure's message gets through.
    The dashboards never read those defaults, so the front-end here answers every update with an empty
    delta (Python still sees each edit complete: ``on_edits_completed`` callbacks run).
    """
    import re

    definitions = list(re.finditer(r"_sendTraceDeltas\((\w+)\)\{", source))
    if len(definitions) != 1:
        return None
    match = definitions[0]
    edit_id = match.group(1)
    empty = (f'this.model.set("_js2py_traceDeltas",{{trace_deltas:[],trace_edit_id:{edit_id}}});'
             f"this.touch();return;")
    return source[:match.end()] + empty + source[match.end():]


def _compact_figure_widget_class():
    """A ``go.FigureWidget`` whose messages to the browser carry large arrays as binary (see
    :func:`compact_arrays`) and whose front-end sends no trace data back (see
    :func:`esm_without_trace_deltas`); in Python its data stay numpy arrays."""
    import pathlib

    import plotly.graph_objects as go

    esm = go.FigureWidget._esm
    try:  # anywidget holds it as FileContents (str() is the text), a path or the text itself
        source = esm.read_text() if isinstance(esm, pathlib.PurePath) else str(esm)
    except (OSError, TypeError, ValueError):
        source = None
    patched = esm_without_trace_deltas(source) if isinstance(source, str) else None

    class CompactFigureWidget(go.FigureWidget):
        if patched is not None:
            _esm = patched

        def _send_restyle_msg(self, restyle_data, trace_indexes=None, source_view_id=None):
            super()._send_restyle_msg(compact_arrays(restyle_data), trace_indexes, source_view_id)

        def _send_update_msg(self, restyle_data, relayout_data, trace_indexes=None, source_view_id=None):
            super()._send_update_msg(compact_arrays(restyle_data), compact_arrays(relayout_data), trace_indexes,
                                     source_view_id)

        def _send_addTraces_msg(self, new_traces_data):
            super()._send_addTraces_msg(compact_arrays(new_traces_data))

        def _repr_mimebundle_(self, *args, **kwargs):
            bundle = super()._repr_mimebundle_(*args, **kwargs)
            self._widget_data = compact_arrays(self._widget_data)
            return bundle

    CompactFigureWidget.__name__ = CompactFigureWidget.__qualname__ = "FigureWidget"
    return CompactFigureWidget


_COMPACT = []


def pick_renderer(renderer: str = "auto") -> str:
    """``"widget"`` or ``"static"``: ``"auto"`` is static on Colab (FigureWidget may not render there)."""
    if renderer not in RENDERERS:
        raise ValueError(f"renderer must be one of {RENDERERS}, got {renderer!r}")
    if renderer == "auto":
        return "static" if "google.colab" in sys.modules else "widget"
    return renderer


DEFAULT_HEIGHT = 450  # plotly.js's height of a figure that sets none


class FigureSlot:
    """One figure area of a dashboard; ``.figure`` is the current figure, ``.widget`` what to display."""

    def __init__(self, figure, renderer: str, width: int = 640):
        import ipywidgets as W
        import plotly.graph_objects as go

        self.renderer = renderer
        # A FigureWidget is drawn before its output area has a size, so plotly would fall back to 700 px
        # and never refit: give it a width (the dashboards wrap figures side by side or stacked).
        self.width = width
        if renderer == "widget":
            try:
                if figure.layout.width is None:
                    figure = go.Figure(figure).update_layout(width=width)
                if not _COMPACT:
                    _COMPACT.append(_compact_figure_widget_class())
                self.figure = _COMPACT[0](figure)
                self.figure._widget_data = compact_arrays(self.figure._widget_data)
                self.widget = self.figure
                return
            except Exception:  # anywidget missing or broken: fall back, keep the same controls
                self.renderer = "static"
        self.figure = figure
        self.widget = W.Output()
        self._draw()

    def _draw(self):
        html = self.figure.to_html(full_html=False, include_plotlyjs="cdn", default_width="100%",
                                   config={"responsive": True})
        self.widget.outputs = ({"output_type": "display_data", "metadata": {},
                                "data": {"text/html": html, "text/plain": f"<{self.figure.layout.title.text}>"}},)

    def update(self, new_figure) -> None:
        """Show ``new_figure``: in place (one ``batch_update``) for a FigureWidget, else redraw."""
        if self.renderer == "static":
            self.figure = new_figure
            self._draw()
            return
        fig = self.figure
        same = len(fig.data) == len(new_figure.data) and all(
            a.type == b.type for a, b in zip(fig.data, new_figure.data))
        if not same:
            with fig.batch_update():
                fig.data = ()
            fig.add_traces(list(new_figure.data))
        with fig.batch_update():
            if same:
                for old, new in zip(fig.data, new_figure.data):
                    old.update(new.to_plotly_json(), overwrite=True)
            layout = new_figure.layout.to_plotly_json()
            layout.setdefault("width", self.width)
            # a figure without a height of its own gets plotly's default, not the placeholder's (260 px
            # left the accuracy curve a 110 px strip)
            layout.setdefault("height", DEFAULT_HEIGHT)
            shown = fig.layout.to_plotly_json()
            # Set before, not in the new figure: back to the template's value (a null here makes
            # plotly's front-end fail on the whole update).
            defaults = (layout.get("template") or {}).get("layout", {})
            for key in set(shown) - set(layout) - {"template"}:
                if key in defaults:
                    layout[key] = defaults[key]
            # The template is large and the same every time: re-validating it costs more than the data.
            if layout.get("template") == shown.get("template"):
                layout.pop("template")
            if list(fig.layout.shapes) or layout.get("shapes"):
                fig.layout.shapes = layout.pop("shapes", ())
            fig.layout.update(layout, overwrite=True)
