"""Export from a dashboard: the pruned model (torch.save, ONNX), figures as PNG, tables as CSV."""
from __future__ import annotations

import html
from pathlib import Path


def _missing(package: str, extra: str, what: str) -> ImportError:
    return ImportError(f"{what} needs the optional package {package!r}: pip install 'intrafusion_viz[{extra}]' "
                       f"(or pip install {package})")


def save_pruned_model(model, path) -> Path:
    """``torch.save`` the whole pruned module (its layer shapes differ from the original architecture,
    so a state dict alone would not load into it).  Load with ``torch.load(path, weights_only=False)``."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model, path)
    return path


def export_onnx(model, example_inputs, path) -> Path:
    """Export ``model`` to ONNX with ``torch.onnx.export`` (needs the ``onnx`` package)."""
    import copy

    import torch

    try:
        import onnx  # noqa: F401
    except ImportError:
        raise _missing("onnx", "export", "ONNX export") from None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    work = copy.deepcopy(model).cpu().eval()
    inputs = tuple(t.cpu() for t in (example_inputs if isinstance(example_inputs, (tuple, list))
                                     else (example_inputs,)))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(work, inputs, str(path), dynamo=False, input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    return path


def save_figure_png(fig, path, width: int = 1100, height=None, scale: float = 2.0) -> Path:
    """Write a plotly figure as PNG with kaleido (needs the ``kaleido`` package and a Chrome/Chromium)."""
    import plotly.graph_objects as go

    try:
        import kaleido  # noqa: F401
    except ImportError:
        raise _missing("kaleido", "export", "Saving figures as PNG") from None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure = go.Figure(fig)
    try:
        figure.write_image(str(path), format="png", width=width, height=height or figure.layout.height or 500,
                           scale=scale)
    except Exception as exc:  # kaleido >= 1 drives a Chrome; say what to do when there is none
        raise RuntimeError(f"kaleido could not render the PNG ({type(exc).__name__}: {exc}); kaleido >= 1 needs "
                           "Chrome or Chromium: install one (e.g. apt-get install chromium, or "
                           "`plotly_get_chrome`), or save the HTML with fig.write_html") from exc
    return path


class ExportMixin:
    """Export buttons and methods for a dashboard with ``figures`` (dict), ``_tables()`` and
    ``_current_prune()`` (a PruneResult for the current settings)."""

    def save_model(self, path=None) -> Path:
        """Save the model pruned with the current settings (``torch.save`` of the module)."""
        return save_pruned_model(self._current_prune().model, path or self._default_path("pruned_model.pt"))

    def export_onnx(self, path=None) -> Path:
        """Export the model pruned with the current settings to ONNX."""
        return export_onnx(self._current_prune().model, self.example_inputs,
                           path or self._default_path("pruned_model.onnx"))

    def save_figures(self, folder=None) -> list:
        """Every figure shown, as PNG (kaleido); returns the paths."""
        folder = Path(folder or self._export_dir())
        return [save_figure_png(fig, folder / f"{self._stem()}_{name}.png") for name, fig in self.figures.items()]

    def save_tables(self, folder=None) -> list:
        """The read-out (and curve) tables as CSV; returns the paths."""
        folder = Path(folder or self._export_dir())
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for name, table in self._tables().items():
            path = folder / f"{self._stem()}_{name}.csv"
            table.to_csv(path, index=False)
            paths.append(path)
        return paths

    # -- widgets -------------------------------------------------------------------------------
    def export_row(self, W, export_dir: str):
        self.export_folder = W.Text(value=str(export_dir), description="export to", layout=W.Layout(width="300px"),
                                    style=dict(description_width="70px"))
        actions = [("save model (.pt)", "save", self.save_model), ("ONNX", "cube", self.export_onnx),
                   ("figures (PNG)", "image", self.save_figures), ("tables (CSV)", "table", self.save_tables)]
        buttons = []
        for label, icon, action in actions:
            button = W.Button(description=label, icon=icon, layout=W.Layout(width="auto"))
            button.on_click(lambda _, act=action: self._run_export(act))
            buttons.append(button)
        self.export_status = W.HTML()
        return W.VBox([W.HBox([self.export_folder, *buttons], layout=W.Layout(flex_flow="row wrap")),
                       self.export_status])

    def _run_export(self, action) -> None:
        self.export_status.value = "<span style='color:#666'>exporting&hellip;</span>"
        try:
            out = action()
        except Exception as exc:
            self.export_status.value = f"<span style='color:#b00'>{html.escape(f'{type(exc).__name__}: {exc}')}</span>"
            return
        paths = out if isinstance(out, list) else [out]
        self.export_status.value = "wrote " + ", ".join(f"<code>{html.escape(str(p))}</code>" for p in paths)

    def _export_dir(self) -> str:
        folder = getattr(self, "export_folder", None)
        return folder.value if folder is not None else "exports"

    def _default_path(self, name: str) -> Path:
        return Path(self._export_dir()) / f"{self._stem()}_{name}"

    def _stem(self) -> str:
        r = getattr(self, "readout", {}) or {}
        group = self.groups[r["group"]] if "group" in r and hasattr(self, "groups") else None
        parts = [self.model_name]
        if group is not None:
            parts += [f"G{group.paper_index}", f"s{r['sparsity']:.2f}", self.method.value]
        return "_".join(str(p).replace(" ", "-").replace("/", "-") for p in parts)
