"""``explore``: pick a group, move the sparsity slider, see the plan, the neurons and the accuracy."""
from __future__ import annotations

import dataclasses
import time
from typing import Optional

from ..merge._surgery import channel_features
from ..groups._trace import find_groups
from ..plan._importance import IMPORTANCES, group_importance, resolve_importance
from ..pruning._prune import METHODS, prune
from ..plan._config import OTConfig
from ._controls import (CONTROL_WIDTH, LABEL_WIDTH, SPARSITY_RANGE, check_arguments, check_importance,  # noqa: F401
                        check_sparsity, conv_linear_macs, figure_row, fixed_eval_batch, labelled, num_classes_of,
                        pick_groups, readout_html, weight_positions)
from ._explore_views import ExploreViews
from ._export import ExportMixin
from ._prefix import PrefixEvaluator
from ._render import FigureSlot, pick_renderer

FOLD_AUTO_MAX_PARAMS = 2_000_000  # above: Model Folding is off until ticked (its k-means blocks the slider)
STEP_DELAY_S = 0.005  # between the steps of a change: a newer slider value gets in first
CURVE_SPARSITIES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


class ExploreDashboard(ExploreViews, ExportMixin):
    """Sliders over one group's pruning, with the plan heatmap, the neuron embedding and accuracies.

    Controls (ipywidgets, set them from code too): ``group``, ``sparsity``, ``method``, ``importance``,
    ``p``, ``target``, ``source_mass``, ``target_mass``, ``solver``, ``reg`` (disabled under the exact
    solver), ``compare`` (default and Intra-Fusion plans side by side).  Figures: ``plan_fig``,
    ``embedding_fig``, ``curve_fig`` (the group's accuracy against sparsity, computed on
    ``curve_button``, with a marker at the slider); ``go.FigureWidget`` updated in place, or
    ``go.Figure`` with the static renderer.  ``readout``: accuracies (%) of the original model and of
    every method (``ifv.METHODS``) pruning the chosen group, and parameter counts; ``result``: the
    ``GroupResult`` drawn; ``error``: the last error or None.  Export: :meth:`save_model`,
    :meth:`export_onnx`, :meth:`save_figures`, :meth:`save_tables` (buttons in the last row).

    A change comes in steps (see :meth:`refresh`): figures, accuracies on the first images of the
    batch, the whole batch, Model Folding (``include_fold``); ``readout["eval_samples"]`` says on how
    many images the accuracies shown are, ``refining`` whether steps are pending, :meth:`settle`
    finishes them; ``timings`` holds, per change, the seconds to each step.

    What does not change with the controls is cached per dashboard: the traced groups, importance per
    (group, importance), channel features and their 2-D embedding per group, a fixed evaluation
    batch and the activations entering each group's first layer (only the rest of the network runs
    on a slider move), and every (group, sparsity, method, importance, config) result already computed.
    """

    def __init__(self, model, data, example_inputs, *, groups=None, sparsity: float = 0.5,
                 method: str = "intra-fusion", importance: str = "l1", config: Optional[OTConfig] = None,
                 renderer: str = "auto", eval_samples: Optional[int] = 512, embedding: str = "pca",
                 seed: int = 0, model_name: Optional[str] = None, export_dir: str = "exports",
                 include_fold: Optional[bool] = None, progressive="auto", first_budget_s: float = 0.25):
        import ipywidgets as W

        importance, sparsity, config = check_arguments(method, importance, sparsity, config, embedding,
                                                       progressive, first_budget_s, include_fold)
        self.renderer = pick_renderer(renderer)
        self.model = model
        self.example_inputs = example_inputs
        self.model_name = model_name or type(model).__name__
        self.eval_data = fixed_eval_batch(data, eval_samples)
        self.seed = seed
        self.embedding = embedding
        import ot  # noqa: F401  (the solver's first import takes ~1 s: pay it here, not on a slider move)
        self._all_groups = find_groups(model, example_inputs)
        all_groups = pick_groups(self._all_groups, groups)
        self.groups = {g.index: g for g in all_groups}
        self._importance, self._features, self._coords, self._results = {}, {}, {}, {}
        self._acc = {}      # (result key, samples) -> accuracy (%)
        self._models = {}   # result key -> pruned model, for the settings shown only (they are large)
        self._evaluator = PrefixEvaluator(model, *self.eval_data)
        self.original_accuracy = self._evaluator.original_accuracy
        self.num_classes = num_classes_of(self._evaluator._logits[0])
        self.params_before = sum(p.numel() for p in model.parameters())
        self._positions = weight_positions(model, example_inputs)
        self.macs_before = conv_linear_macs(model, self._positions)
        self._base_config = config
        self.error = None
        self.timings = []  # per settings change: seconds to figures / first accuracies / all (see refresh)
        self.progressive = progressive
        self.first_budget_s = float(first_budget_s)
        if include_fold is None:  # Model Folding's k-means takes seconds on wide groups: off for big models
            include_fold = self.params_before <= FOLD_AUTO_MAX_PARAMS

        style = dict(description_width=LABEL_WIDTH)
        box = W.Layout(width=CONTROL_WIDTH)
        toggles = dict(button_width="108px")
        self.group = W.Dropdown(options=[(f"G{g.paper_index} {g.name} (n={g.size})" + ("" if g.mergeable else " [no merge]"),
                                          g.index) for g in all_groups],
                                value=all_groups[-1].index, description="group", style=style, layout=box)
        self.sparsity = W.FloatSlider(value=sparsity, min=SPARSITY_RANGE[0], max=SPARSITY_RANGE[1], step=0.05,
                                      description="sparsity", continuous_update=False, readout_format=".2f",
                                      style=style, layout=box)
        self.method = W.ToggleButtons(options=list(METHODS), value=method, style=toggles,
                                      tooltips=[f"draw the plan of {m} pruning" for m in METHODS])
        self.importance = W.Dropdown(options=list(IMPORTANCES), value=importance, description="importance",
                                     style=style, layout=box)
        self.p = W.BoundedFloatText(value=config.p, min=1.0, max=10.0, step=0.5, description="p (norm)",
                                    style=style, layout=box)
        self.target = W.Dropdown(options=["most_important", "centroid"], value=config.target, description="target",
                                 style=style, layout=box)
        self.source_mass = W.Dropdown(options=["uniform", "importance"], value=config.source_mass,
                                      description="source mass", style=style, layout=box)
        self.target_mass = W.Dropdown(options=["uniform", "importance"], value=config.target_mass,
                                      description="target mass", style=style, layout=box)
        self.solver = W.ToggleButtons(options=["emd", "sinkhorn"], value=config.solver,
                                      style=toggles,
                                      tooltips=["exact optimal transport", "entropic (soft) transport, uses reg"])
        self.reg = W.FloatLogSlider(value=config.reg, base=10, min=-3, max=0, step=0.1, description="Sinkhorn reg",
                                    continuous_update=False, readout_format=".3f", style=style, layout=box,
                                    disabled=config.solver != "sinkhorn")
        self.compare = W.Checkbox(value=False, description="side by side", indent=False,
                                  layout=W.Layout(width="auto"))
        self.include_fold = W.Checkbox(value=include_fold, description="include Model Folding", indent=False,
                                       layout=W.Layout(width="auto"),
                                       tooltip="k-means per move: seconds on wide groups; computed after the others")
        self.readout_html = W.HTML()
        self.status = W.HTML()
        self.readout = {}
        self.result = None
        self._generation = 0
        self._busy = False
        self._dirty = False
        self._staged = False  # this change is shown in steps, the kernel free in between (see refresh)
        self._steps = []      # what is left to compute for the settings shown
        self._move = None     # timing of the settings shown
        self._curve = None  # tidy records of the current group's curve, or None
        self._curve_shown = False
        self._map_shown = False
        self._compute()
        self._finish_now()
        self._plan_slot = FigureSlot(self._plan_figure(), self.renderer)
        self._embedding_slot = FigureSlot(self._embedding_figure(), self.renderer)
        self._curve_slot = FigureSlot(self._curve_figure(), self.renderer)
        self._map_slot = FigureSlot(self._group_map_figure(), self.renderer)
        self._render_readout()
        for control in self.controls.values():
            control.observe(self._on_change, names="value")
        self.compare.observe(self._on_change, names="value")
        self.include_fold.observe(self._on_change, names="value")
        self.curve_button = W.Button(description="accuracy curve of this group", icon="line-chart",
                                     layout=W.Layout(width="auto"),
                                     tooltip="prune this group at 0.1 ... 0.9 with every method (cached)")
        self.curve_button.on_click(lambda _: self.compute_curve())
        self.group_map_button = W.Button(description="group map", icon="sitemap", layout=W.Layout(width="auto"),
                                         tooltip="every layer and the coupled groups whose channels it shares")
        self.group_map_button.on_click(lambda _: self.show_group_map())
        self.curve_progress = W.IntProgress(value=0, min=0, max=1, layout=W.Layout(width="160px", visibility="hidden"))
        self.widget = W.VBox([
            W.HBox([W.VBox([self.group, self.sparsity, labelled(W, "plan of", self.method), self.importance,
                            labelled(W, "plans", self.compare), labelled(W, "fold", self.include_fold)]),
                    W.VBox([self.p, self.target, self.source_mass, self.target_mass,
                            labelled(W, "solver", self.solver), self.reg])],
                   layout=W.Layout(flex_flow="row wrap", grid_gap="4px 24px")),
            self.readout_html, self.status,
            figure_row(W, [self._plan_slot.widget, self._embedding_slot.widget]),
            W.HBox([self.curve_button, self.curve_progress], layout=W.Layout(align_items="center")),
            figure_row(W, [self._curve_slot.widget]),
            self.group_map_button, figure_row(W, [self._map_slot.widget]),
            self.export_row(W, export_dir)])

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
    def curve_fig(self):
        return self._curve_slot.figure

    @property
    def figures(self) -> dict:
        """The figures shown, by name (for :meth:`save_figures`)."""
        out = {"plan": self.plan_fig, "embedding": self.embedding_fig}
        if self._curve is not None:
            out["curve"] = self.curve_fig
        if self._map_shown:
            out["group_map"] = self._map_slot.figure
        return out

    @property
    def config(self) -> OTConfig:
        """The OTConfig the controls describe."""
        return dataclasses.replace(self._base_config, p=float(self.p.value), target=self.target.value,
                                   source_mass=self.source_mass.value, target_mass=self.target_mass.value,
                                   solver=self.solver.value, reg=float(self.reg.value))

    def refresh(self) -> None:
        """Recompute for the current control values and redraw (latest values win).

        In steps: (1) prune the group with the methods drawn and update the figures; (2) with
        ``progressive``, the accuracies on the first images of the batch (as many as fit
        ``first_budget_s``), labelled as such; (3) the accuracies on the whole batch; (4) Model Folding
        when it is included but not drawn.  A change made in the browser (or any change with
        ``progressive=True``) runs steps 2-4 from the kernel's event loop, one at a time, so a newer
        slider value preempts them; a change made from code completes them before it returns.
        """
        if self._busy:  # a control changed while we were drawing: run again once we are done
            self._dirty = True
            return
        self._busy = True
        try:
            self._dirty = True
            while self._dirty:
                self._dirty = False
                generation = self._generation
                self._move = dict(start=time.perf_counter(), wall=time.time(), generation=generation)
                self.status.value = "<span style='color:#666'>computing&hellip;</span>"
                ok = self._compute()
                if self._generation != generation:
                    continue  # stale: controls moved on while computing
                if ok:
                    self._redraw()
                self._render_readout()
                self._mark("figures")
                if not ok:
                    self._steps = []
                elif not self._steps:
                    self._mark("all")
                elif self._staged and _running_loop() is not None:
                    self._schedule(generation)
                else:
                    self._finish_now()
        finally:
            self._busy = False

    def settle(self) -> None:
        """Finish every pending step now (accuracies on the whole batch, Model Folding)."""
        self._finish_now()

    @property
    def refining(self) -> bool:
        """Whether steps are pending: the read-out shows accuracies on a subset, or not all methods."""
        return bool(self._steps)

    def compute_curve(self, sparsities=CURVE_SPARSITIES):
        """The current group's accuracy at each sparsity for every method (tidy records), drawn with a
        marker at the slider; results are cached like slider moves."""
        sparsities = [check_sparsity(s, "curve sparsity") for s in sparsities]
        index, importance, config = self.group.value, self.importance.value, self.config
        group = self.groups[index]
        rows = [dict(group=index, group_name=group.name, paper_group=f"G{group.paper_index}", sparsity=0.0,
                     method="original", importance=importance, accuracy=self.original_accuracy,
                     num_classes=self.num_classes, model=self.model_name)]
        jobs = [(s, m) for s in sparsities for m in METHODS]
        self.curve_progress.layout.visibility = "visible"
        self.curve_progress.max, self.curve_progress.value = len(jobs), 0
        self.curve_button.disabled = True
        try:
            for s, m in jobs:
                _, acc, _ = self._prune_one(index, s, m, importance, config)
                rows.append(dict(rows[0], sparsity=s, method=m, accuracy=acc))
                self.curve_progress.value += 1
        finally:
            self.curve_button.disabled = False
            self.curve_progress.layout.visibility = "hidden"
        self._curve = dict(key=(index, importance, config), rows=rows)
        self._curve_slot.update(self._curve_figure())
        self._curve_shown = True
        return rows

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)

    # -- internals -----------------------------------------------------------------------------
    def _on_change(self, change) -> None:
        self.reg.disabled = self.solver.value != "sinkhorn"
        self._generation += 1
        owner = change.get("owner") if isinstance(change, dict) else getattr(change, "owner", None)
        from_browser = bool(getattr(owner, "_property_lock", None))  # ipywidgets' lock while applying a browser update
        self._staged = self.progressive is True or (self.progressive == "auto" and from_browser)
        self.refresh()

    # -- the steps of a change -----------------------------------------------------------------
    def _methods_drawn(self):
        """Methods pruned before the figures are drawn: the one drawn (all of them side by side)."""
        return self._methods_included() if self.compare.value else [self.method.value]

    def _methods_now(self):
        """Methods evaluated together (first images, then the whole batch): all but a Model Folding
        that is not drawn, which comes last."""
        drawn = self._methods_drawn()
        return [m for m in self._methods_included() if m != "fold" or m in drawn]

    def _methods_included(self):
        return [m for m in METHODS if m != "fold" or self.include_fold.value or self.method.value == "fold"]

    def _first_samples(self, index: int, methods) -> int:
        """Images of the quick first evaluation: as many as ``first_budget_s`` allows (a multiple of 32,
        at least 32), or the whole batch when that is at most twice as much."""
        total = self._evaluator.n
        group = self.groups[index]
        self._evaluator.prepare(index, [m.name for m in group.members])
        per_image = self._evaluator.seconds_per_sample.get(index, 0.0) * max(len(methods), 1)
        fit = int(self.first_budget_s / per_image) if per_image > 0 else total
        fit = max(32, fit // 32 * 32)
        return total if fit * 2 >= total else fit

    def _plan_steps(self, index, sparsity, importance, config):
        """The steps after the figures: ("evaluate", methods, samples) and ("prune", methods, None)."""
        now = self._methods_now()
        keys = {m: self._key(index, sparsity, m, importance, config) for m in self._methods_included()}
        self._first = None
        steps = []
        if self._staged and any((keys[m], None) not in self._acc for m in now):
            first = self._first_samples(index, now)
            if first < self._evaluator.n:
                self._first = first
                steps.append(("evaluate", tuple(now), first))
        steps.append(("evaluate", tuple(now), None))
        for m in self._methods_included():
            if m not in now:
                steps += [("prune", (m,), None), ("evaluate", (m,), None)]
        return [step for step in steps if not self._step_done(step, keys)], keys

    def _step_done(self, step, keys) -> bool:
        kind, methods, samples = step
        if kind == "prune":
            return all(keys[m] in self._results for m in methods)
        return all((keys[m], samples) in self._acc for m in methods)

    def _run_step(self) -> None:
        kind, methods, samples = self._steps[0]
        index, sparsity, importance, config = self._settings
        members = [g.name for g in self.groups[index].members]
        for m in methods:
            key = self._keys[m]
            if kind == "prune" or key not in self._results:
                self._result(index, sparsity, m, importance, config)
            if kind == "evaluate" and (key, samples) not in self._acc:
                model = self._models.get(key)
                if model is None:  # a cached record whose model was dropped: prune again to evaluate
                    model = self._models[key] = self._prune(index, sparsity, m, importance, config).model
                self._acc[(key, samples)] = self._evaluator.accuracy(model, index, members, samples)
        self._steps.pop(0)
        self._update_readout()
        if kind == "evaluate":
            self._mark("first" if samples is not None else ("full" if set(methods) >= set(self._methods_now())
                                                            else "fold"))
        if not self._steps:
            self._models = {}
            self._mark("all")

    def _finish_now(self) -> None:
        while self._steps:
            self._run_step()
        self._mark("all")
        self.status.value = ""

    def _schedule(self, generation: int) -> None:
        loop = _running_loop()
        self.status.value = ("<span style='color:#666'>evaluating&hellip; (move on at any time: "
                             "the latest setting wins)</span>")
        loop.call_later(STEP_DELAY_S, self._deferred_step, generation)

    def _deferred_step(self, generation: int) -> None:
        if generation != self._generation or self._busy or not self._steps:
            return  # a newer setting took over (it schedules its own steps)
        try:
            self._run_step()
        except Exception as exc:  # shown, never raised into the event loop
            self._steps = []
            self.error = exc
            self.status.value = f"<span style='color:#b00'>error: {type(exc).__name__}: {exc}</span>"
            return
        if self._steps:
            self._schedule(generation)
        else:
            self.status.value = ""
            if self.compare.value or self.method.value == "fold":
                self._redraw()

    def _mark(self, stage: str) -> None:
        """Seconds since the change at ``stage`` ("figures", "first" (subset), "full", "fold", "all"),
        recorded in the change's dict in ``timings`` (with ``first_samples``)."""
        move = self._move
        if move is None or move["generation"] != self._generation or stage in move:
            return
        move[stage] = time.perf_counter() - move["start"]
        if stage == "figures":
            move["first_samples"] = self._first
            move["eval_total"] = self._evaluator.n
            self.timings.append(move)
        if stage == "all":  # stages that had nothing to do end with the last one
            move.setdefault("full", move["all"])
            move.setdefault("first", move["full"])

    def _redraw(self) -> None:
        self._plan_slot.update(self._plan_figure())
        self._embedding_slot.update(self._embedding_figure())
        showing = self._curve is not None and self._curve["key"] == (self.group.value, self.importance.value,
                                                                      self.config)
        if showing or self._curve_shown:  # the placeholder needs no redraw on every move
            self._curve_slot.update(self._curve_figure())
        self._curve_shown = showing
        if self._map_shown:
            self._map_slot.update(self._group_map_figure())

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

    def _prune(self, index: int, sparsity: float, method: str, importance: str, config: OTConfig):
        """The PruneResult of pruning group ``index`` alone (not cached: it holds a model)."""
        if importance == "taylor":
            imp, batch = "taylor", self.eval_data
        else:
            scores = self._importance_of(index, importance)
            imp, batch = (lambda group: scores), None
        fold = config.fold_batchnorm
        return prune(self.model, self.example_inputs, {index: sparsity}, groups=[index], method=method,
                     importance=imp, config=config, batch=batch, seed=self.seed,
                     features=lambda model, group: self._features_of(group.index, fold))

    @staticmethod
    def _key(index, sparsity, method, importance, config):
        return (index, round(sparsity, 6), method, importance, config if method != "default" else None)

    def _result(self, index: int, sparsity: float, method: str, importance: str, config: OTConfig):
        """(GroupResult, (params, MACs)) of pruning group ``index`` alone; cached, the model kept until
        the settings shown are evaluated."""
        key = self._key(index, sparsity, method, importance, config)
        if key not in self._results:
            res = self._prune(index, sparsity, method, importance, config)
            self._models[key] = res.model
            self._results[key] = (res.groups[0], (res.params_after, conv_linear_macs(res.model, self._positions)))
        return self._results[key]

    def _prune_one(self, index: int, sparsity: float, method: str, importance: str, config: OTConfig):
        """(GroupResult, accuracy on the whole batch, (params, MACs)); cached."""
        key = self._key(index, sparsity, method, importance, config)
        record, params = self._result(index, sparsity, method, importance, config)
        if (key, None) not in self._acc:
            model = self._models.pop(key, None) or self._prune(index, sparsity, method, importance, config).model
            members = [m.name for m in self.groups[index].members]
            self._acc[(key, None)] = self._evaluator.accuracy(model, index, members)
        return record, self._acc[(key, None)], params

    def _compute(self) -> bool:
        """Prune the group with the methods drawn (the figures' step); plan the other steps."""
        index, sparsity = self.group.value, float(self.sparsity.value)
        importance = self.importance.value
        try:
            config = self.config
            for method in self._methods_drawn():
                self._result(index, sparsity, method, importance, config)
            self._steps, self._keys = self._plan_steps(index, sparsity, importance, config)
        except Exception as exc:  # a bad combination (e.g. Sinkhorn not converging) must not kill the UI
            self.error = exc
            self.status.value = (f"<span style='color:#b00'>error: {type(exc).__name__}: {exc} "
                                 f"(figures show the last settings that worked)</span>")
            return False
        current = set(self._keys.values())
        self._models = {k: v for k, v in self._models.items() if k in current}
        self._settings = (index, sparsity, importance, config)
        self._records = {m: self._results[self._keys[m]][0] for m in self._methods_drawn()}
        self.result = self._records[self.method.value]
        self.error = None
        self.status.value = ""
        self._update_readout()
        return True

    def _update_readout(self) -> None:
        """The read-out dict for the settings shown, from what is computed so far: every accuracy on the
        whole batch, or every one on the same first images (``eval_samples``), or ``None`` (pending)."""
        index, sparsity, importance, config = self._settings
        group = self.groups[index]
        total = self._evaluator.n
        now = self._methods_now()
        keys = self._keys
        samples = None
        if not all((keys[m], None) in self._acc for m in now) and self._first is not None \
                and all((keys[m], self._first) in self._acc for m in now):
            samples = self._first
        accs, params = {}, {}
        for m in METHODS:
            key = keys.get(m)
            accs[m] = None if key is None else self._acc.get((key, samples))  # None: off or pending
            params[m] = self._results[key][1] if key is not None and key in self._results else (None, None)
        # the count kept by the prune itself: with a grouped conv or GroupNorm every block keeps the same
        # count (Torch-Pruning's rule), which can differ from num_kept(n, sparsity)
        self.readout = {"group": index, "sparsity": sparsity, "k": self.result.k, "n": group.size,
                        "original": self._evaluator.original_accuracy_on(samples), **accs,
                        "params_before": self.params_before, "macs_before": self.macs_before,
                        **{f"params_{m}": params[m][0] for m in METHODS},
                        **{f"macs_{m}": params[m][1] for m in METHODS},
                        "eval_samples": samples or total, "eval_total": total,
                        "refining": bool(self._steps), "excluded": [m for m in METHODS if m not in keys],
                        "chance": 100.0 / self.num_classes}
        self._render_readout()

    def _current_prune(self):
        return self._prune(self.group.value, float(self.sparsity.value), self.method.value,
                           self.importance.value, self.config)


def _running_loop():
    """The asyncio loop running in this thread (a Jupyter kernel's), or None (plain Python)."""
    import asyncio

    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


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
        ``embedding`` (``"pca"`` | ``"mds"``), ``seed``, ``model_name`` (in figure titles; default the
        model's class name), ``export_dir`` (default folder of the export buttons),
        ``include_fold`` (compute Model Folding too; default: for models up to 2 M parameters; a
        checkbox), ``progressive`` (default ``"auto"``: moves made in the browser come in steps from the
        kernel's event loop, figures first, then accuracies on the first images (within
        ``first_budget_s``, default 0.25 s), then on the whole batch, a newer value preempting them;
        ``True``: every change; ``False``: every step runs before the change returns, figures sent
        first), ``first_budget_s``.

    Raises
    ------
    ValueError
        An unknown method or importance name, a sparsity outside the slider's range [0, 0.95], or
        no groups to explore.
    KeyError, IndexError
        A group key (index, root name or ``"G1"``) that names no group of the model.

    Returns
    -------
    ExploreDashboard
    """
    return ExploreDashboard(model, data, example_inputs, **kwargs)
