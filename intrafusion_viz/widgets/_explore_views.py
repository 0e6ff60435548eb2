"""What the explore dashboard shows: its figures (plan, neurons, accuracy curve, group map) and tables.

A mixin of :class:`intrafusion_viz.widgets.ExploreDashboard`; it reads the dashboard's state and builds
figures and tables, it changes nothing.
"""
from __future__ import annotations

from ..pruning._prune import METHODS
from ._controls import group_map_records, readout_html


class ExploreViews:
    """Figures and tables of :class:`ExploreDashboard` (see there for the attributes they read)."""

    def _labels(self):
        return dict(model_name=self.model_name, importance=self.importance.value)

    def _plan_figure(self):
        from ..figures import plan_comparison, plan_heatmap

        if self.compare.value:
            return plan_comparison(list(self._records.values()), config=self.config, **self._labels())
        return plan_heatmap(self.result, config=self.config, **self._labels())

    def _embedding_figure(self):
        from ..figures import neuron_embedding

        fold = self._base_config.fold_batchnorm
        return neuron_embedding(self.result, coords=self._coords_of(self.result.index, fold),
                                method=self.embedding, config=self.config, **self._labels())

    def _curve_figure(self):
        import plotly.graph_objects as go

        from ..figures import accuracy_vs_sparsity

        current = (self.group.value, self.importance.value, self.config)
        if self._curve is None or self._curve["key"] != current:
            return go.Figure().update_layout(
                title="Accuracy vs sparsity of this group: press 'accuracy curve of this group'", height=260,
                xaxis=dict(visible=False), yaxis=dict(visible=False), plot_bgcolor="rgba(0,0,0,0)")
        return accuracy_vs_sparsity(self._curve["rows"], group=self.group.value, marker_at=self.sparsity.value,
                                    model_name=self.model_name)

    def _render_readout(self) -> None:
        r = self.readout
        if not r:
            return
        self.readout_html.value = readout_html(r, METHODS)

    def readout_table(self):
        """The read-out as a DataFrame: one row per model (original, each method)."""
        import pandas as pd

        r = self.readout
        group = self.groups[r["group"]]
        rows = [dict(model="original", accuracy=r["original"], params=r["params_before"], macs=r["macs_before"])]
        rows += [dict(model=m, accuracy=r[m], params=r[f"params_{m}"], macs=r[f"macs_{m}"]) for m in METHODS
                 if m not in r["excluded"]]
        for row in rows:
            row.update(network=self.model_name, group=f"G{group.paper_index} {group.name}",
                       sparsity=r["sparsity"], kept=r["k"], channels=r["n"], importance=self.importance.value,
                       eval_samples=r["eval_samples"])
        return pd.DataFrame(rows)

    def _tables(self) -> dict:
        import pandas as pd

        out = {"readout": self.readout_table()}
        if self._curve is not None:
            out["curve"] = pd.DataFrame(self._curve["rows"])
        return out


    def _group_map_figure(self):
        """The model's groups and layers, the group shown pruned as the controls say (or a placeholder)."""
        import plotly.graph_objects as go

        from ..figures import group_map

        if not self._map_shown:
            return go.Figure().update_layout(
                title="Group map: press 'group map' to see which layers share channels", height=200,
                xaxis=dict(visible=False), yaxis=dict(visible=False), plot_bgcolor="rgba(0,0,0,0)")
        g = self.result
        fig = group_map(self._all_groups, result=group_map_records(self._all_groups, {g.index: g}),
                        model_name=self.model_name)
        return fig.update_layout(title=fig.layout.title.text.split("<br>")[0] + (
            f"<br><sup>the dashboard prunes one group at a time: G{g.paper_index} {g.name} at sparsity "
            f"{g.sparsity:.2f} keeps {g.k} of {g.n} ({self.method.value})</sup>"))

    def show_group_map(self):
        """Draw the group map (the button does this); it then follows the controls."""
        self._map_shown = True
        self._map_slot.update(self._group_map_figure())
        return self._map_slot.figure
