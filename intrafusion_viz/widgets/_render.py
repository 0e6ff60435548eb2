"""Figure holders for dashboards: a live ``go.FigureWidget`` updated in place, or a static fallback
(a ``go.Figure`` redrawn as HTML in an ``Output`` widget) where FigureWidget does not render (Colab)."""
from __future__ import annotations

import sys

RENDERERS = ("auto", "widget", "static")


def pick_renderer(renderer: str = "auto") -> str:
    """``"widget"`` or ``"static"``: ``"auto"`` is static on Colab (FigureWidget may not render there)."""
    if renderer not in RENDERERS:
        raise ValueError(f"renderer must be one of {RENDERERS}, got {renderer!r}")
    if renderer == "auto":
        return "static" if "google.colab" in sys.modules else "widget"
    return renderer


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
                self.figure = go.FigureWidget(figure)
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
            # The template is large and the same every time: re-validating it costs more than the data.
            if layout.get("template") == fig.layout.template.to_plotly_json():
                layout.pop("template")
            if list(fig.layout.shapes) or layout.get("shapes"):
                fig.layout.shapes = layout.pop("shapes", ())
            fig.layout.update(layout, overwrite=True)
