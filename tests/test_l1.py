"""The p = 1 cost kernel returns exactly what torch.cdist(p=1) computes (the paper's code uses it)."""
import pytest
import torch

from intrafusion_viz.plan._l1 import l1_backend, l1_distances


@pytest.mark.parametrize("n, k, d", [(64, 48, 576), (37, 5, 985), (7, 3, 5), (130, 77, 461), (1, 1, 1)])
def test_l1_distances_equal_torch_cdist_bit_for_bit(n, k, d):
    g = torch.Generator().manual_seed(n * 1000 + d)
    a = torch.randn(n, d, generator=g)
    b = torch.randn(k, d, generator=g)
    a, b = a / a.norm(dim=1, keepdim=True), b / b.norm(dim=1, keepdim=True)
    assert torch.equal(l1_distances(a, b), torch.cdist(a, b, p=1).double())
    assert torch.equal(l1_distances(a), torch.cdist(a, a, p=1).double())  # symmetric half, mirrored


def test_l1_distances_float64_and_bad_shapes():
    a = torch.randn(6, 9, dtype=torch.float64)
    assert torch.equal(l1_distances(a, a[:2]), torch.cdist(a, a[:2], p=1))
    assert l1_distances(a[:0], a).shape == (0, 6)
    with pytest.raises(ValueError, match="expected"):
        l1_distances(torch.randn(3, 4), torch.randn(3, 5))


def test_l1_backend_falls_back_to_torch(monkeypatch):
    import intrafusion_viz.plan._l1 as l1

    monkeypatch.setattr(l1, "_kernel", False)
    assert l1_backend() == "torch"
    a = torch.randn(5, 7)
    assert torch.equal(l1_distances(a, a[:3]), torch.cdist(a, a[:3], p=1).double())
