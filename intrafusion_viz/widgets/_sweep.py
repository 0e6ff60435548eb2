"""``sweep_dashboard``: choose groups, sparsities and methods, run the per-layer sweep with progress."""
from __future__ import annotations

from typing import Optional

from .._groups import find_groups
from .._transport import OTConfig
from ._render import FigureSlot, pick_renderer


class SweepDashboard:
    """Controls for :func:`intrafusion_viz.sweeps.layer_sweep` and its heatmap and bars.

    Controls: ``groups`` (SelectMultiple), ``sparsities`` (SelectMultiple), ``methods``
    (SelectMultiple), ``importance`` (Dropdown), ``run_button``; ``progress`` (IntProgress).
    After :meth:`run`: ``table`` (the tidy DataFrame), ``heatmap_fig``, ``bars_fig``.
    ``executor`` (a ``concurrent.futures.Executor`` or ``dask.distributed.Client``) runs the cells there.
    """

    def __init__(self, model, data, example_inputs, *, groups=None, sparsities=(0.3, 0.5, 0.7),
                 methods=("default", "intra-fusion"), importance: str = "l1", config: Optional[OTConfig] = None,
                 renderer: str = "auto", eval_samples: Optional[int] = 512, cache=None, run: bool = False,
                 executor=None):
        import ipywidgets as W
        import plotly.graph_objects as go

        from ..sweeps import SWEEP_METHODS
        from ._explore import IMPORTANCE_CHOICES, fixed_eval_batch

        self.model, self.example_inputs = model, example_inputs
        self.eval_data = fixed_eval_batch(data, eval_samples)
        self.config = config or OTConfig()
        self.cache = {} if cache is None else cache
        self.executor = executor
        self.renderer = pick_renderer(renderer)
        found = find_groups(model, example_inputs)
        options = [(f"G{g.paper_index} {g.name} (n={g.size})", g.index) for g in found]
        chosen = [g.index for g in found] if groups is None else [
            g.index for g in found if g.index in set(groups) or g.name in set(groups)
            or f"G{g.paper_index}" in set(groups)]
        grid = sorted({round(0.1 * i, 2) for i in range(1, 10)} | {float(s) for s in sparsities})
        layout = W.Layout(width="260px", height="140px")
        self.groups = W.SelectMultiple(options=options, value=tuple(chosen), description="groups", layout=layout)
        self.sparsities = W.SelectMultiple(options=[(f"{s:.2f}", s) for s in grid],
                                           value=tuple(float(s) for s in sparsities), description="sparsities",
                                           layout=W.Layout(width="200px", height="140px"))
        self.methods = W.SelectMultiple(options=list(SWEEP_METHODS), value=tuple(methods), description="methods",
                                        layout=W.Layout(width="260px", height="80px"))
        self.importance = W.Dropdown(options=list(IMPORTANCE_CHOICES), value=importance, description="importance")
        self.run_button = W.Button(description="run sweep", button_style="primary")
        self.progress = W.IntProgress(value=0, min=0, max=1, description="progress")
        self.status = W.HTML()
        self.table = None
        self.run_button.on_click(lambda _: self.run())
        empty = go.Figure().update_layout(title="press 'run sweep'")
        self._heatmap_slot = FigureSlot(empty, self.renderer)
        self._bars_slot = FigureSlot(go.Figure(empty), self.renderer)
        self.widget = W.VBox([W.HBox([self.groups, self.sparsities, W.VBox([self.methods, self.importance])]),
                              W.HBox([self.run_button, self.progress]), self.status,
                              self._heatmap_slot.widget, self._bars_slot.widget])
        if run:
            self.run()

    @property
    def heatmap_fig(self):
        return self._heatmap_slot.figure

    @property
    def bars_fig(self):
        return self._bars_slot.figure

    def run(self):
        """Run the sweep for the chosen controls, update the figures; returns the tidy table."""
        from ..figures import sweep_bars, sweep_heatmap
        from ..sweeps import layer_sweep

        if not (self.groups.value and self.sparsities.value and self.methods.value):
            self.status.value = "choose at least one group, sparsity and method"
            return self.table

        def step(done, total):
            self.progress.max = max(total, 1)
            self.progress.value = done

        self.run_button.disabled = True
        try:
            self.table = layer_sweep(self.model, self.eval_data, self.example_inputs, groups=list(self.groups.value),
                                     sparsities=sorted(self.sparsities.value), methods=list(self.methods.value),
                                     importance=self.importance.value, config=self.config, cache=self.cache,
                                     progress=False, on_step=step, executor=self.executor,
                                     batch=self.eval_data if self.importance.value == "taylor" else None)
            self._heatmap_slot.update(sweep_heatmap(self.table))
            self._bars_slot.update(sweep_bars(self.table))
            self.status.value = f"{len(self.table) - 1} results"
        except Exception as exc:
            self.status.value = f"<span style='color:#b00'>error: {type(exc).__name__}: {exc}</span>"
            raise
        finally:
            self.run_button.disabled = False
        return self.table

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)


def sweep_dashboard(model, data, example_inputs, **kwargs) -> SweepDashboard:
    """Build the per-layer sweep dashboard; ``run=True`` runs it right away.  See :class:`SweepDashboard`."""
    return SweepDashboard(model, data, example_inputs, **kwargs)
