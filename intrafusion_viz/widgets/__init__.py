"""Live dashboards (ipywidgets + plotly FigureWidget): explore one group's pruning, sweep all groups."""
from ._explore import ExploreDashboard, explore, fixed_eval_batch
from ._render import pick_renderer
from ._sweep import SweepDashboard, sweep_dashboard

__all__ = ["explore", "ExploreDashboard", "sweep_dashboard", "SweepDashboard", "pick_renderer", "fixed_eval_batch"]
