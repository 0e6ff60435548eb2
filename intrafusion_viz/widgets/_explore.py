"""``explore``: pick a group, move the sparsity slider, see the plan, the neurons and the accuracy."""
from __future__ import annotations

import dataclasses
import time
from typing import Optional

import torch

from .._fusion import channel_features
from .._groups import find_groups
from .._importance import group_importance, resolve_importance
from .._prune import num_kept, prune
from .._transport import OTConfig
from ._render import FigureSlot, pick_renderer

IMPORTANCE_CHOICES = ("l1", "l2", "lamp", "random", "taylor")


def fixed_eval_batch(data, max_samples: Optional[int] = 512):
    """A fixed (x, y) tensor pair from ``data`` (tensor pair or iterable of batches), at most ``max_samples``."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and torch.is_tensor(data[0]):
        x, y = data
    else:
        xs, ys, count = [], [], 0
        for xb, yb in data:
            xs.append(xb)
            ys.append(yb)
            count += len(yb)
            if max_samples is not None and count >= max_samples:
                break
        x, y = torch.cat(xs), torch.cat(ys)
    if max_samples is not None:
        x, y = x[:max_samples], y[:max_samples]
    return x, y


class ExploreDashboard:
    """Sliders over one group's pruning, with the plan heatmap, the neuron embedding and accuracies.

    Controls (ipywidgets, set them from code too): ``group``, ``sparsity``, ``method``, ``importance``,
    ``p``, ``target``, ``source_mass``, ``target_mass``, ``solver``, ``reg``.  Figures: ``plan_fig``,
    ``embedding_fig`` (``go.FigureWidget`` updated in place, or ``go.Figure`` with the static
    renderer).  ``readout``: accuracies (%) of the original model and of default and Intra-Fusion
    pruning of the chosen group; ``result``: the ``GroupResult`` drawn; ``error``: the last error or None.

    What does not change with the controls is cached per dashboard: the traced groups, importance per
    (group, importance), channel features and their 2-D embedding per group, a fixed evaluation
    batch, and every (group, sparsity, method, importance, config) result already computed; a control
    change prunes one group (once per method) and evaluates the fixed batch.
    """

    def __init__(self, model, data, example_inputs, *, groups=None, sparsity: float = 0.5,
                 method: str = "intra-fusion", importance: str = "l1", config: Optional[OTConfig] = None,
                 renderer: str = "auto", eval_samples: Optional[int] = 512, embedding: str = "pca",
                 seed: int = 0):
        import ipywidgets as W

        from .._train import accuracy

        self.model = model
        self.example_inputs = example_inputs
        self.eval_data = fixed_eval_batch(data, eval_samples)
        self.seed = seed
        self.embedding = embedding
        self.renderer = pick_renderer(renderer)
        self._accuracy = accuracy
        import ot  # noqa: F401  (the solver's first import takes ~1 s: pay it here, not on a slider move)
        all_groups = find_groups(model, example_inputs)
        if groups is not None:
            wanted = set(groups)
            all_groups = [g for g in all_groups
                          if g.index in wanted or g.name in wanted or f"G{g.paper_index}" in wanted]
        if not all_groups:
            raise ValueError("no prunable groups to explore")
        self.groups = {g.index: g for g in all_groups}
        self._importance, self._features, self._coords, self._results = {}, {}, {}, {}
        self.original_accuracy = accuracy(model, self.eval_data)
        config = config or OTConfig()
        self._base_config = config
        self.error = None
        self.timings = []

        style = dict(description_width="110px")
        self.group = W.Dropdown(options=[(f"G{g.paper_index} {g.name} (n={g.size})", g.index) for g in all_groups],
                                value=all_groups[-1].index, description="group", style=style)
        self.sparsity = W.FloatSlider(value=sparsity, min=0.05, max=0.95, step=0.05, description="sparsity",
                                      continuous_update=False, readout_format=".2f", style=style)
        self.method = W.ToggleButtons(options=["default", "intra-fusion"], value=method, description="plan of")
        self.importance = W.Dropdown(options=list(IMPORTANCE_CHOICES), value=importance, description="importance",
                                     style=style)
        self.p = W.BoundedFloatText(value=config.p, min=1.0, max=10.0, step=0.5, description="p (norm)", style=style)
        self.target = W.Dropdown(options=["most_important", "centroid"], value=config.target, description="target",
                                 style=style)
        self.source_mass = W.Dropdown(options=["uniform", "importance"], value=config.source_mass,
                                      description="source mass", style=style)
        self.target_mass = W.Dropdown(options=["uniform", "importance"], value=config.target_mass,
                                      description="target mass", style=style)
        self.solver = W.ToggleButtons(options=["emd", "sinkhorn"], value=config.solver, description="solver")
        self.reg = W.FloatLogSlider(value=config.reg, base=10, min=-3, max=0, step=0.1, description="Sinkhorn reg",
                                    continuous_update=False, readout_format=".3f", style=style)
        self.readout_html = W.HTML()
        self.status = W.HTML()
        self.readout = {}
        self.result = None
        self._generation = 0
        self._busy = False
        self._dirty = False
        self._compute()
        self._plan_slot = FigureSlot(self._plan_figure(), self.renderer)
        self._embedding_slot = FigureSlot(self._embedding_figure(), self.renderer)
        self._render_readout()
        for control in self.controls.values():
            control.observe(self._on_change, names="value")
        self.widget = W.VBox([
            W.HBox([W.VBox([self.group, self.sparsity, self.method, self.importance]),
                    W.VBox([self.p, self.target, self.source_mass, self.target_mass, self.solver, self.reg])]),
            self.readout_html, self.status,
            W.HBox([self._plan_slot.widget, self._embedding_slot.widget])])

    # -- public --------------------------------------------------------------------------------
    @property
    def controls(self) -> dict:
        names = ("group", "sparsity", "method", "importance", "p", "target", "source_mass", "target_mass",
                 "solver", "reg")
        return {name: getattr(self, name) for name in names}

    @property
    def plan_fig(self):
        return self._plan_slot.figure

    @property
    def embedding_fig(self):
        return self._embedding_slot.figure

    @property
    def config(self) -> OTConfig:
        """The OTConfig the controls describe."""
        return dataclasses.replace(self._base_config, p=float(self.p.value), target=self.target.value,
                                   source_mass=self.source_mass.value, target_mass=self.target_mass.value,
                                   solver=self.solver.value, reg=float(self.reg.value))

    def refresh(self) -> None:
        """Recompute for the current control values and redraw (latest values win)."""
        if self._busy:  # a control changed while we were drawing: run again once we are done
            self._dirty = True
            return
        self._busy = True
        try:
            self._dirty = True
            while self._dirty:
                self._dirty = False
                generation = self._generation
                start = time.perf_counter()
                ok = self._compute()
                if self._generation != generation:
                    continue  # stale: controls moved on while computing
                if ok:
                    self._plan_slot.update(self._plan_figure())
                    self._embedding_slot.update(self._embedding_figure())
                self._render_readout()
                self.timings.append(time.perf_counter() - start)
        finally:
            self._busy = False

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)

    # -- internals -----------------------------------------------------------------------------
    def _on_change(self, change) -> None:
        self._generation += 1
        self.refresh()

    def _importance_of(self, index: int, name: str):
        key = (index, name)
        if key not in self._importance:
            self._importance[key] = group_importance(self.groups[index], resolve_importance(name, self.seed))
        return self._importance[key]

    def _features_of(self, index: int, fold: bool):
        key = (index, fold)
        if key not in self._features:
            self._features[key] = channel_features(self.model, self.groups[index], fold=fold)
        return self._features[key]

    def _coords_of(self, index: int, fold: bool):
        from ..figures import embed_features

        key = (index, fold, self.embedding)
        if key not in self._coords:
            self._coords[key] = embed_features(self._features_of(index, fold), self.embedding)
        return self._coords[key]

    def _prune_one(self, index: int, sparsity: float, method: str, importance: str, config: OTConfig):
        key = (index, round(sparsity, 6), method, importance, config if method == "intra-fusion" else None)
        if key not in self._results:
            if importance == "taylor":
                imp, batch = "taylor", self.eval_data
            else:
                scores = self._importance_of(index, importance)
                imp, batch = (lambda group: scores), None
            fold = config.fold_batchnorm
            res = prune(self.model, self.example_inputs, {index: sparsity}, groups=[index], method=method,
                        importance=imp, config=config, batch=batch, seed=self.seed,
                        features=lambda model, group: self._features_of(group.index, fold))
            self._results[key] = (res.groups[0], self._accuracy(res.model, self.eval_data))
        return self._results[key]

    def _compute(self) -> bool:
        index, sparsity = self.group.value, float(self.sparsity.value)
        try:
            config = self.config
            accs = {}
            for method in ("default", "intra-fusion"):
                record, accs[method] = self._prune_one(index, sparsity, method, self.importance.value, config)
                if method == self.method.value:
                    self.result = record
        except Exception as exc:  # a bad combination (e.g. Sinkhorn not converging) must not kill the UI
            self.error = exc
            self.status.value = f"<span style='color:#b00'>error: {type(exc).__name__}: {exc}</span>"
            return False
        self.error = None
        self.status.value = ""
        group = self.groups[index]
        self.readout = {"group": index, "sparsity": sparsity, "k": num_kept(group.size, sparsity), "n": group.size,
                        "original": self.original_accuracy, "default": accs["default"],
                        "intra-fusion": accs["intra-fusion"]}
        return True

    def _plan_figure(self):
        from ..figures import plan_heatmap

        return plan_heatmap(self.result)

    def _embedding_figure(self):
        from ..figures import neuron_embedding

        fold = self._base_config.fold_batchnorm
        return neuron_embedding(self.result, coords=self._coords_of(self.result.index, fold),
                                method=self.embedding)

    def _render_readout(self) -> None:
        r = self.readout
        if not r:
            return
        cells = "".join(
            f"<td style='padding:2px 12px'><b>{name}</b><br>{r[name]:.2f}%</td>"
            for name in ("original", "default", "intra-fusion"))
        self.readout_html.value = (f"<table><tr>{cells}<td style='padding:2px 12px'>keeps {r['k']} of {r['n']} "
                                   f"neurons<br>eval on {len(self.eval_data[1])} samples</td></tr></table>")


def explore(model, data, example_inputs, **kwargs) -> ExploreDashboard:
    """Build the exploration dashboard (display it as the last expression of a cell).

    Parameters
    ----------
    model : nn.Module
        Not modified.
    data : (x, y) tensors or iterable of (x, y)
        Evaluation data; the first ``eval_samples`` samples are used, fixed.
    example_inputs : Tensor
        A batch shaped like the inputs (tracing).
    **kwargs
        ``groups``, ``sparsity``, ``method``, ``importance``, ``config`` (OTConfig), ``renderer``
        (``"auto"`` | ``"widget"`` | ``"static"``; auto is static on Colab), ``eval_samples``,
        ``embedding`` (``"pca"`` | ``"mds"``), ``seed``.

    Returns
    -------
    ExploreDashboard
    """
    return ExploreDashboard(model, data, example_inputs, **kwargs)
