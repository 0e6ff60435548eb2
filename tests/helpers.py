"""Small models and tools shared by the engine tests."""
import torch
import torch.nn as nn
import torch.nn.functional as F


class TinyBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class TinyResNet(nn.Module):
    """Two residual streams (widths w and 2w) with a stem, as in CIFAR ResNets."""

    def __init__(self, w=8, num_classes=5):
        super().__init__()
        self.conv1 = nn.Conv2d(3, w, 3, 1, 1)
        self.bn1 = nn.BatchNorm2d(w)
        self.layer1 = nn.Sequential(TinyBlock(w, w, 1), TinyBlock(w, w, 1))
        self.layer2 = nn.Sequential(TinyBlock(w, 2 * w, 2))
        self.linear = nn.Linear(2 * w, num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer2(self.layer1(x))
        return self.linear(F.adaptive_avg_pool2d(x, 1).flatten(1))


def conv_bn_net(c=6, num_classes=4):
    """conv+BN -> conv+BN -> flatten -> linear (a flatten makes several input columns per channel)."""
    return nn.Sequential(
        nn.Conv2d(1, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(),
        nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(c * 4 * 4, num_classes))


def mlp(widths=(6, 8), d_in=5, num_classes=3):
    layers, prev = [], d_in
    for w in widths:
        layers += [nn.Linear(prev, w), nn.ReLU()]
        prev = w
    layers.append(nn.Linear(prev, num_classes))
    return nn.Sequential(*layers)


@torch.no_grad()
def randomize_bn(model, seed=0):
    """Give every BatchNorm non-trivial statistics and affine parameters."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 2 - 1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) * 1.5 + 0.5)
            m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.copy_(torch.rand(m.num_features, generator=g) - 0.5)
    return model


@torch.no_grad()
def duplicate_group(model, group):
    """Make channel i + n/2 of ``group`` an exact copy of channel i, in every member.

    Producers' rows, biases and BatchNorm parameters are copied, and so are consumers' columns, so the
    copies compute the same thing and look the same to the transport cost.  Returns ``model``.
    """
    n = group.size
    half = n // 2
    modules = dict(model.named_modules())
    for m in group.members:
        module = modules[m.name]
        local = torch.as_tensor(m.local_idxs)
        root = torch.as_tensor(m.root_idxs)
        src = local[root < half]
        dst = torch.stack([local[root == r + half] for r in range(half)]).flatten()
        src = torch.stack([local[root == r] for r in range(half)]).flatten()
        names = ["weight", "bias", "running_mean", "running_var"] if m.role == "norm" else (
            ["weight", "bias"] if m.role == "out" else ["weight"])
        for attr in names:
            t = getattr(module, attr, None)
            if t is None:
                continue
            dim = m.dim if attr == "weight" else 0
            moved = t.data.movedim(dim, 0)
            moved[dst] = moved[src]
    return model


def keep_first_half(group):
    """Importance that keeps channels 0..n/2-1 (one copy of each duplicate pair)."""
    n = group.size
    return torch.cat([torch.full((n // 2,), 2.0), torch.ones(n - n // 2)])


def state_copy(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_state_equal(model, state):
    now = model.state_dict()
    assert now.keys() == state.keys()
    for k in state:
        assert now[k].shape == state[k].shape, k
        assert torch.equal(now[k], state[k]), k


def rel_err(a, b):
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))
