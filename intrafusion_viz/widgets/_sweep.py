"""``sweep_dashboard``: choose groups, sparsities and methods, run the per-layer sweep with progress."""
from __future__ import annotations

from typing import Optional

from ..groups._trace import find_groups
from ..plan._importance import IMPORTANCES
from ..plan._config import OTConfig
from ._export import ExportMixin
from ._render import FigureSlot, pick_renderer


class SweepDashboard(ExportMixin):
    """Controls for :func:`intrafusion_viz.evaluation.sweeps.layer_sweep` and its heatmap and bars.

    Controls: ``groups`` (SelectMultiple), ``sparsities`` (SelectMultiple), ``methods``
    (SelectMultiple), ``importance`` (Dropdown), ``run_button``; ``progress`` (IntProgress, empty
    until a run starts).  After :meth:`run`: ``table`` (the tidy DataFrame), ``heatmap_fig``,
    ``bars_fig``.  Changing a control after a run marks the figures out of date (``stale`` is True,
    the figures' titles and the status say so) until the next run.  Export: :meth:`save_figures`
    (PNG), :meth:`save_tables` (CSV).  ``executor`` (a ``concurrent.futures.Executor`` or
    ``dask.distributed.Client``) runs the cells there.
    """

    def __init__(self, model, data, example_inputs, *, groups=None, sparsities=(0.3, 0.5, 0.7),
                 methods=("default", "intra-fusion"), importance: str = "l1", config: Optional[OTConfig] = None,
                 renderer: str = "auto", eval_samples: Optional[int] = 512, cache=None, run: bool = False,
                 model_name: Optional[str] = None, export_dir: str = "exports", executor=None):
        import ipywidgets as W
        import plotly.graph_objects as go

        from ..evaluation.sweeps import SWEEP_METHODS
        from ._explore import check_importance, check_sparsity, fixed_eval_batch, pick_groups

        importance = check_importance(importance)
        sparsities = [check_sparsity(s, "each sparsity") for s in sparsities]
        unknown = [m for m in methods if m not in SWEEP_METHODS]
        if unknown or not methods:
            raise ValueError(f"methods must be a non-empty selection of {list(SWEEP_METHODS)}; got {list(methods)}")
        self.model, self.example_inputs = model, example_inputs
        self.model_name = model_name or type(model).__name__
        self.eval_data = fixed_eval_batch(data, eval_samples)
        self.config = config or OTConfig()
        self.cache = {} if cache is None else cache
        self.executor = executor
        self.renderer = pick_renderer(renderer)
        found = find_groups(model, example_inputs)
        chosen = [g.index for g in pick_groups(found, groups)]
        self.num_classes = None
        options = [(f"G{g.paper_index} {g.name} (n={g.size})", g.index) for g in found]
        grid = sorted({round(0.1 * i, 2) for i in range(1, 10)} | {float(s) for s in sparsities})
        style = dict(description_width="80px")
        self.groups = W.SelectMultiple(options=options, value=tuple(chosen), description="groups", style=style,
                                       layout=W.Layout(width="340px", height="150px"))
        self.sparsities = W.SelectMultiple(options=[(f"{s:.2f}", s) for s in grid],
                                           value=tuple(float(s) for s in sparsities), description="sparsities",
                                           style=style, layout=W.Layout(width="200px", height="150px"))
        self.methods = W.SelectMultiple(options=list(SWEEP_METHODS), value=tuple(methods), description="methods",
                                        style=style, layout=W.Layout(width="300px", height="70px"))
        self.importance = W.Dropdown(options=list(IMPORTANCES), value=importance, description="importance",
                                     style=style, layout=W.Layout(width="300px"))
        self.hint = W.HTML("<span style='color:#666;font-size:90%'>Ctrl-click (&#8984;-click on a Mac) or "
                           "Shift-click to choose several</span>")
        self.chosen = W.HTML()
        self.run_button = W.Button(description="run sweep", button_style="primary", icon="play")
        self.progress = W.IntProgress(value=0, min=0, max=1, description="progress", style=style,
                                      layout=W.Layout(width="340px"))
        self.progress_text = W.HTML()
        self.status = W.HTML()
        self.table = None
        self.stale = False
        self.run_button.on_click(lambda _: self.run())
        empty = go.Figure().update_layout(title="press 'run sweep'", height=260, xaxis=dict(visible=False),
                                          yaxis=dict(visible=False))
        self._heatmap_slot = FigureSlot(empty, self.renderer, width=880)
        self._bars_slot = FigureSlot(go.Figure(empty), self.renderer, width=880)
        for control in (self.groups, self.sparsities, self.methods, self.importance):
            control.observe(self._on_change, names="value")
        self._show_chosen()
        self.widget = W.VBox([
            W.HBox([self.groups, self.sparsities, W.VBox([self.methods, self.importance])],
                   layout=W.Layout(flex_flow="row wrap", grid_gap="4px 16px")),
            self.hint, self.chosen,
            W.HBox([self.run_button, self.progress, self.progress_text], layout=W.Layout(align_items="center")),
            self.status,
            W.Box([self._heatmap_slot.widget], layout=W.Layout(max_width="100%", overflow="auto")),
            W.Box([self._bars_slot.widget], layout=W.Layout(max_width="100%", overflow="auto")),
            self.export_row(W, export_dir)])
        if run:
            self.run()

    @property
    def heatmap_fig(self):
        return self._heatmap_slot.figure

    @property
    def bars_fig(self):
        return self._bars_slot.figure

    @property
    def figures(self) -> dict:
        return {"heatmap": self.heatmap_fig, "bars": self.bars_fig}

    def _tables(self) -> dict:
        if self.table is None:
            raise ValueError("nothing to save yet: press 'run sweep' first")
        return {"sweep": self.table}

    def _current_prune(self):
        raise ValueError("the sweep dashboard prunes one group at a time; use ifv.prune or the explore "
                         "dashboard to save a pruned model")

    def _show_chosen(self) -> None:
        labels = {v: k.split(" (")[0] for k, v in self.groups.options}
        self.chosen.value = ("<span style='font-size:90%'>chosen: " + ", ".join(labels[g] for g in self.groups.value)
                             + " &middot; sparsities " + ", ".join(f"{s:.2f}" for s in sorted(self.sparsities.value))
                             + " &middot; " + ", ".join(self.methods.value) + "</span>")

    def _on_change(self, change) -> None:
        self._show_chosen()
        if self.table is None:
            return
        self.stale = True
        self.progress.value = 0
        self.progress_text.value = ""
        self.status.value = ("<span style='color:#b54708'><b>settings changed</b>: the figures below show the "
                             "previous run; press 'run sweep' to update them</span>")
        for slot in (self._heatmap_slot, self._bars_slot):
            fig = slot.figure
            title = fig.layout.title.text or ""
            if not title.startswith(STALE_PREFIX):
                new = go_figure(fig)
                new.update_layout(title=STALE_PREFIX + title, paper_bgcolor="#f3f3f3")
                slot.update(new)

    def run(self):
        """Run the sweep for the chosen controls, update the figures; returns the tidy table."""
        from ..figures import sweep_bars, sweep_heatmap
        from ..evaluation.sweeps import layer_sweep

        if not (self.groups.value and self.sparsities.value and self.methods.value):
            self.status.value = "choose at least one group, sparsity and method"
            return self.table

        def step(done, total):
            self.progress.max = max(total, 1)
            self.progress.value = done
            self.progress_text.value = f"{done} / {total} prunes"

        self.progress.value = 0
        self.run_button.disabled = True
        self.status.value = "<span style='color:#666'>computing&hellip;</span>"
        try:
            table = layer_sweep(self.model, self.eval_data, self.example_inputs, groups=list(self.groups.value),
                                sparsities=sorted(self.sparsities.value), methods=list(self.methods.value),
                                importance=self.importance.value, config=self.config, cache=self.cache,
                                progress=False, on_step=step, executor=self.executor,
                                batch=self.eval_data if self.importance.value == "taylor" else None)
            if self.num_classes is None:
                self.num_classes = _num_classes(self.model, self.eval_data[0][:1])
            table = table.assign(model=self.model_name, num_classes=self.num_classes)
            self.table = table
            self._heatmap_slot.update(sweep_heatmap(table, model_name=self.model_name))
            self._bars_slot.update(sweep_bars(table, model_name=self.model_name))
            self.stale = False
            self.status.value = f"{len(table) - 1} results"
        except Exception as exc:
            self.status.value = f"<span style='color:#b00'>error: {type(exc).__name__}: {exc}</span>"
            raise
        finally:
            self.run_button.disabled = False
        return self.table

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)


STALE_PREFIX = "OUT OF DATE (press 'run sweep') · "


def go_figure(fig):
    import plotly.graph_objects as go

    return go.Figure(fig.to_dict())


def _num_classes(model, x) -> int:
    import torch

    from ._prefix import _device_of, _eval_mode

    with _eval_mode(model), torch.no_grad():
        out = model(x.to(_device_of(model)))
    return int(out.shape[-1]) if out.dim() > 1 else 1


def sweep_dashboard(model, data, example_inputs, **kwargs) -> SweepDashboard:
    """Build the per-layer sweep dashboard; ``run=True`` runs it right away.  See :class:`SweepDashboard`."""
    return SweepDashboard(model, data, example_inputs, **kwargs)
