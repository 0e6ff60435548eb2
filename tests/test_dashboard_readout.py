"""The explore dashboard's read-out names the channel count the prune really keeps."""
from __future__ import annotations

import re

import pytest
import torch
from torch import nn

import intrafusion_viz as ifv

pytest.importorskip("ipywidgets")
pytest.importorskip("plotly")


class GroupedNet(nn.Module):
    """conv (3 -> 8) -> grouped conv (8 -> 8, groups=4) -> linear: 4 conv groups of 2 channels."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, groups=4)
        self.bn2 = nn.BatchNorm2d(8)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.head(x.mean((2, 3)))


@pytest.mark.parametrize("method", ["intra-fusion", "default"])
def test_readout_counts_the_kept_channels_of_a_grouped_conv(method):
    """At sparsity 0.6 of 8 channels, round(0.4 * 8) = 3 would be kept, but each of the 4 conv groups
    keeps the same count (Torch-Pruning's rule): 4 are kept; read-out, table and titles say 4."""
    torch.manual_seed(0)
    model = GroupedNet().eval()
    x, y = torch.randn(64, 3, 8, 8), torch.randint(0, 4, (64,))
    group = next(g for g in ifv.find_groups(model, x[:2]) if g.name == "conv1")
    assert any(m.role == "grouped" for m in group.members)
    reference = ifv.prune(model, x[:2], {group.index: 0.6}, groups=[group.index], method=method).group(group.index)
    assert ifv.num_kept(8, 0.6) == 3 and reference.k == 4  # the case this test is about
    db = ifv.widgets.explore(model, (x, y), x[:2], groups=[group.index], sparsity=0.6, method=method,
                             renderer="widget", include_fold=False)
    assert db.error is None, db.error
    assert db.readout["k"] == reference.k == db.result.k
    assert re.search(r"keeps 4 of 8 neurons", db.readout_html.value)
    assert set(db.readout_table()["kept"]) == {4}
    assert "keeps 4 of 8" in db.plan_fig.layout.title.text
    db.sparsity.value = 0.3  # removes round(0.3 * 8) = 2 < 4 conv groups: every conv group keeps both channels
    assert db.readout["k"] == db.result.k == 8
