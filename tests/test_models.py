"""Reference models: shapes, module names, parameter counts, registry."""

import operator

import pytest
import torch
import torch.fx
import torch.nn as nn

from intrafusion_viz.models import (
    MLP,
    MODEL_NAMES,
    VGG,
    BasicBlock,
    SmallCNN,
    build_model,
    resnet18,
    vgg11_bn,
)



# (registry name, small constructor kwargs, input shape) for every registered model.
CASES = [
    ("mlp", {}, (3, 64)),
    ("mlp", {"batch_norm": True}, (3, 1, 8, 8)),
    ("small_cnn", {}, (3, 1, 8, 8)),
    ("small_cnn", {"input_size": 28}, (3, 1, 28, 28)),
    ("vgg11_bn", {"width_mult": 1 / 16}, (2, 3, 32, 32)),
    ("vgg13_bn", {"width_mult": 1 / 16}, (2, 3, 32, 32)),
    ("vgg16_bn", {"width_mult": 1 / 16}, (2, 3, 32, 32)),
    ("vgg19_bn", {"width_mult": 1 / 16}, (2, 3, 32, 32)),
    ("resnet18", {"width": 4}, (2, 3, 32, 32)),
    ("resnet34", {"width": 4}, (2, 3, 32, 32)),
]


def test_cases_cover_registry():
    assert {name for name, _, _ in CASES} == set(MODEL_NAMES)


@pytest.mark.parametrize("num_classes", [10, 7])
@pytest.mark.parametrize("name,kwargs,shape", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_forward_backward(name, kwargs, shape, num_classes):
    torch.manual_seed(0)
    model = build_model(name, num_classes=num_classes, **kwargs)
    out = model(torch.randn(*shape))
    assert out.shape == (shape[0], num_classes)
    out.square().mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_vgg11_bn_conv_names_match_reference():
    convs = [name for name, m in vgg11_bn().named_modules() if isinstance(m, nn.Conv2d)]
    assert convs == [f"features.{i}" for i in (0, 4, 8, 11, 15, 18, 22, 25)]
    model = vgg11_bn()
    assert isinstance(model.features[-1], nn.AvgPool2d)
    assert isinstance(model.features[2], nn.ReLU) and model.features[2].inplace
    assert model.classifier.in_features == 512


@pytest.mark.parametrize(
    "build,expected",
    [
        # Parameter counts of kuangliu/pytorch-cifar's VGG (conv bias + BN) and ResNet18 (no conv bias).
        (lambda: vgg11_bn(), 9_231_114),
        (lambda: VGG("VGG16"), 14_728_266),
        (lambda: resnet18(bias=False), 11_173_962),
    ],
    ids=["vgg11_bn", "vgg16_bn", "resnet18-nobias"],
)
def test_parameter_counts_match_reference(build, expected):
    assert sum(p.numel() for p in build().parameters()) == expected


def test_vgg_without_batch_norm_and_width_mult():
    model = VGG("VGG11", batch_norm=False, bias=False, width_mult=0.01)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [1, 1, 3, 3, 5, 5, 5, 5]
    assert all(c.bias is None for c in convs)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_resnet_names_and_shortcuts():
    model = resnet18(width=4)
    names = dict(model.named_modules())
    for key in ("conv1", "bn1", "layer1.0.conv1", "layer1.0.bn2", "layer4.1.conv2", "linear"):
        assert key in names
    assert len(model.layer1[0].shortcut) == 0  # identity
    projection = model.layer2[0].shortcut
    assert isinstance(projection[0], nn.Conv2d) and projection[0].kernel_size == (1, 1)
    assert projection[0].stride == (2, 2) and isinstance(projection[1], nn.BatchNorm2d)
    assert model.conv1.stride == (1, 1) and model.conv1.bias is not None
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())


def test_resnet_has_no_inplace_ops():
    # An in-place residual add (out += shortcut) bumps the version counter of bn2's output,
    # which breaks autograd-based dependency tracing; every module output must stay untouched.
    model = resnet18(width=2)
    outputs = []
    handles = [m.register_forward_hook(lambda _m, _i, out: outputs.append(out)) for m in model.modules()]
    try:
        model(torch.randn(2, 3, 16, 16))
    finally:
        for handle in handles:
            handle.remove()
    assert len(outputs) > 50
    assert all(out._version == 0 for out in outputs)
    graph = torch.fx.symbolic_trace(model).graph
    assert operator.add in {node.target for node in graph.nodes if node.op == "call_function"}


def test_resnet_accepts_other_input_sizes():
    model = resnet18(width=2, in_channels=1, num_classes=3)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 3)


def test_basic_block_identity_keeps_shape():
    block = BasicBlock(6, 6)
    assert block(torch.randn(2, 6, 5, 5)).shape == (2, 6, 5, 5)
    assert BasicBlock(6, 8, stride=2)(torch.randn(2, 6, 6, 6)).shape == (2, 8, 3, 3)


def test_mlp_layout():
    model = MLP(in_features=10, hidden=(6, 5), num_classes=3, batch_norm=True)
    kinds = [type(m) for m in model.features]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU] * 2
    assert model.classifier.in_features == 5 and model.classifier.out_features == 3


def test_small_cnn_rejects_too_many_pools():
    with pytest.raises(ValueError, match="below 1 pixel"):
        SmallCNN(width=(4, 4, 4, 4), input_size=8)
    SmallCNN(width=(4, 4, 4), input_size=8)(torch.randn(2, 1, 8, 8))


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as info:
        build_model("vgg11")
    for name in MODEL_NAMES:
        assert name in str(info.value)


def test_registry_is_case_insensitive():
    assert isinstance(build_model("VGG11_BN", width_mult=0.05), VGG)
