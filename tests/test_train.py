"""Training, accuracy and checkpoints."""

import copy

import pytest
import torch
import torch.nn as nn

from intrafusion_viz.evaluation._train import (
    CheckpointError,
    TrainHistory,
    accuracy,
    load_checkpoint,
    save_checkpoint,
    train,
)
from intrafusion_viz.data import digits_loaders, load_digits_tensors
from intrafusion_viz.models import MLP, SmallCNN, resnet18



@pytest.fixture(scope="module")
def digits():
    return load_digits_tensors(seed=0)


def _params_equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_small_cnn_learns_digits():
    torch.manual_seed(0)
    model = SmallCNN()
    train_loader, test_loader = digits_loaders(batch_size=64, seed=0)
    history = train(model, train_loader, epochs=3, seed=0, eval_data=test_loader, progress=False)
    assert isinstance(history, TrainHistory) and history.epochs == 3
    assert len(history.train_accuracy) == len(history.eval_accuracy) == len(history.lr) == 3
    assert history.eval_accuracy[-1] > 80.0
    assert accuracy(model, test_loader) == pytest.approx(history.eval_accuracy[-1])
    assert history.loss[-1] < history.loss[0]
    assert history.lr[0] > history.lr[-1] > 0  # cosine schedule decays
    assert not model.training


def test_train_on_tensor_pair_is_seeded(digits):
    runs = []
    for _ in range(2):
        torch.manual_seed(1)
        model = MLP(64, (32,), 10)
        data = (digits.x_train.flatten(1), digits.y_train)
        train(model, data, epochs=1, seed=7, progress=False, optimizer="adam", scheduler=None, batch_size=128)
        runs.append(model)
    assert _params_equal(*runs)


def test_train_seed_restores_global_rng(digits):
    model = MLP(64, (8,), 10)
    state = torch.random.get_rng_state()
    train(model, (digits.x_train[:64].flatten(1), digits.y_train[:64]), epochs=1, seed=3, progress=False)
    assert torch.equal(torch.random.get_rng_state(), state)


def test_train_progress_false_is_silent(digits, capsys):
    model = MLP(64, (8,), 10)
    train(model, (digits.x_train[:64].flatten(1), digits.y_train[:64]), epochs=1, progress=False)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_train_rejects_unknown_options(digits):
    data = (digits.x_train[:8].flatten(1), digits.y_train[:8])
    with pytest.raises(ValueError, match="optimizer"):
        train(MLP(), data, epochs=1, optimizer="rmsprop", progress=False)
    with pytest.raises(ValueError, match="scheduler"):
        train(MLP(), data, epochs=1, scheduler="step", progress=False)


def test_train_reports_diverging_loss(digits):
    data = (digits.x_train[:64].flatten(1) * float("nan"), digits.y_train[:64])
    with pytest.raises(FloatingPointError, match="lower lr"):
        train(MLP(), data, epochs=1, progress=False)


def test_accuracy_matches_manual_count_and_restores_modes():
    torch.manual_seed(0)
    model = MLP(5, (4,), 3, batch_norm=True)
    model.train()
    model.features[1].eval()  # a frozen BatchNorm: mixed modes must come back exactly
    modes = [m.training for m in model.modules()]
    x, y = torch.randn(2500, 5), torch.randint(0, 3, (2500,))
    result = accuracy(model, (x, y))
    assert [m.training for m in model.modules()] == modes
    model.eval()
    with torch.no_grad():
        expected = 100.0 * (model(x).argmax(1) == y).double().mean().item()
    assert result == pytest.approx(expected, abs=1e-9)
    assert 0.0 <= result <= 100.0


def test_accuracy_on_batches_and_max_batches():
    model = nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.copy_(torch.eye(2))
        model.bias.zero_()
    right = (torch.tensor([[1.0, 0.0]]), torch.tensor([0]))
    wrong = (torch.tensor([[1.0, 0.0]]), torch.tensor([1]))
    assert accuracy(model, [right, right, wrong, wrong]) == 50.0
    assert accuracy(model, [right, wrong, wrong, wrong], max_batches=1) == 100.0
    with pytest.raises(ValueError, match="no samples"):
        accuracy(model, [])


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    model = SmallCNN()
    model(torch.randn(4, 1, 8, 8))  # move BatchNorm running stats away from their defaults
    path = save_checkpoint(model, tmp_path / "sub" / "model.pt", arch="small_cnn", epoch=3, acc=91.5)
    state, meta = load_checkpoint(path)
    assert meta == {"arch": "small_cnn", "epoch": 3, "acc": 91.5}
    assert state.keys() == model.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    torch.manual_seed(1)
    other = SmallCNN()
    assert not _params_equal(model, other)
    loaded, meta = load_checkpoint(str(path), model=other)
    assert loaded is other and _params_equal(model, other)
    assert not (tmp_path / "sub" / "model.pt.partial").exists()


def test_corrupt_checkpoint_raises_clear_error(tmp_path):
    path = tmp_path / "bad.pt"
    path.write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0),
                                   dtype=torch.uint8).numpy().tobytes())
    with pytest.raises(CheckpointError, match="not a valid intrafusion_viz checkpoint") as info:
        load_checkpoint(path)
    assert isinstance(info.value, ValueError)
    assert "Re-save" in str(info.value)


@pytest.mark.parametrize("payload", [[1, 2, 3], {"weights": {}}, {"state_dict": {"a": 1}}, {"state_dict": {}, "meta": 3}])
def test_wrong_structure_raises_clear_error(tmp_path, payload):
    path = tmp_path / "wrong.pt"
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="not a valid intrafusion_viz checkpoint"):
        load_checkpoint(path)


def test_missing_checkpoint_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "absent.pt")


def test_other_architecture_raises_and_leaves_model_unchanged(tmp_path):
    path = save_checkpoint(resnet18(width=2), tmp_path / "resnet.pt")
    model = SmallCNN()
    before = copy.deepcopy(model)
    with pytest.raises(CheckpointError, match="does not fit SmallCNN") as info:
        load_checkpoint(path, model=model)
    assert "missing keys" in str(info.value) and "left unchanged" in str(info.value)
    assert _params_equal(model, before)


def test_shape_mismatch_raises_and_leaves_model_unchanged(tmp_path):
    # Same keys, different widths: the first keys would load before a naive strict load failed.
    path = save_checkpoint(SmallCNN(width=(8, 32)), tmp_path / "narrow.pt")
    model = SmallCNN(width=(16, 32))
    before = copy.deepcopy(model)
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_checkpoint(path, model=model)
    assert _params_equal(model, before)


def test_meta_must_be_safely_loadable(tmp_path):
    with pytest.raises(TypeError, match="plain Python values"):
        save_checkpoint(MLP(), tmp_path / "m.pt", config=object())
    assert not (tmp_path / "m.pt").exists()
