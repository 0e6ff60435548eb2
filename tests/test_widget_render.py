"""The dashboards' live figures: what goes over the wire between kernel and browser."""
from __future__ import annotations

import re

import pytest

pytest.importorskip("plotly")
pytest.importorskip("anywidget")

from intrafusion_viz.widgets import _render  # noqa: E402

EMPTY_DELTA = re.compile(r"_sendTraceDeltas\((\w+)\)\{this\.model\.set\(\"_js2py_traceDeltas\","
                         r"\{trace_deltas:\[\],trace_edit_id:\1\}\);this\.touch\(\);return;")


def _plotly_esm() -> str:
    import plotly.graph_objects as go

    return str(go.FigureWidget._esm)


def test_figure_widget_front_end_sends_no_trace_data_back():
    """The installed plotly's front-end is patched in exactly one place: its trace deltas are empty."""
    source = _plotly_esm()
    patched = _render.esm_without_trace_deltas(source)
    assert patched is not None, "plotly's FigureWidget front-end changed: _sendTraceDeltas not found once"
    assert len(EMPTY_DELTA.findall(patched)) == 1
    inserted = EMPTY_DELTA.search(patched)
    assert patched != source
    # nothing else changed: removing the inserted statement gives plotly's code back
    head = patched[:inserted.start()] + f"_sendTraceDeltas({inserted.group(1)}){{"
    assert head + patched[inserted.end():] == source
    widget_class = _render._compact_figure_widget_class()
    assert str(widget_class._esm) == patched


def test_unexpected_front_end_code_is_left_alone():
    assert _render.esm_without_trace_deltas("export default {render() {}}") is None
    twice = "a._sendTraceDeltas(x){f()} b._sendTraceDeltas(y){g()}"
    assert _render.esm_without_trace_deltas(twice) is None


def test_empty_trace_delta_completes_the_edit_in_python():
    """The browser's empty answer still ends the edit: ``on_edits_completed`` callbacks run."""
    import numpy as np
    import plotly.graph_objects as go

    slot = _render.FigureSlot(go.Figure(go.Heatmap(z=np.arange(400.0).reshape(20, 20))), "widget")
    fig = slot.figure
    slot.update(go.Figure(go.Heatmap(z=np.ones((20, 20)))).update_layout(title="next"))
    assert fig._trace_edit_in_process
    done = []
    fig._js2py_layoutDelta = {"layout_delta": {}, "layout_edit_id": fig._last_layout_edit_id}
    fig.on_edits_completed(lambda: done.append(True))
    assert not done  # the trace edit is still open
    fig._js2py_traceDeltas = {"trace_deltas": [], "trace_edit_id": fig._last_trace_edit_id}
    assert done == [True] and not fig._trace_edit_in_process
    np.testing.assert_array_equal(np.asarray(fig.data[0].z), np.ones((20, 20)))  # the data stay Python's


def test_update_shows_the_new_figure_not_a_mix():
    """A layout property the old figure set and the new one does not is reset to the template's value,
    not carried over (the browser side is checked in tests/test_browser.py: the curve's title)."""
    import plotly.graph_objects as go

    slot = _render.FigureSlot(go.Figure().update_layout(title="placeholder", plot_bgcolor="rgba(0,0,0,0)",
                                                        xaxis=dict(visible=False)), "widget")
    slot.update(go.Figure(go.Scatter(x=[0, 1], y=[1, 2])).update_layout(title="curve"))
    layout = slot.figure.layout
    assert layout.title.text == "curve" and layout.xaxis.visible is None
    assert layout.plot_bgcolor == layout.template.layout.plot_bgcolor != "rgba(0,0,0,0)"  # the template's again
