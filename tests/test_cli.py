"""The main job: ``intrafusion-viz demo`` runs offline and writes a report."""
import re

import pytest
import torch

import intrafusion_viz as ifv
from intrafusion_viz import cli


def test_demo_writes_report(tmp_path, capsys):
    out = tmp_path / "report.html"
    assert cli.main(["demo", "--sparsities", "0.3", "0.6", "--epochs", "4", "--quiet", "--out", str(out),
                     "--importance", "l2", "--seed", "3"]) == 0
    page = out.read_text()
    assert "plotly" in page and "intra-fusion" in page
    assert "<pre>" not in page and "|---" not in page  # an HTML table, not raw markdown
    table = re.search(r"<table class='results'>.*?</table>", page, re.S).group(0)
    assert table.count("<tr>") == 1 + 1 + 2 and "<th>intra-fusion (paper)</th>" in table
    for setting in ("importance</th><td>l2", "seed</th><td>3", "sparsities</th><td>0.30, 0.60",
                    "epochs</th><td>4", "version: torch</th>", "version: POT</th>", "SmallCNN"):
        assert setting in page, setting
    printed = capsys.readouterr().out
    assert "| 30% |" in printed and "| 60% |" in printed and "original accuracy" in printed


def test_demo_records_match_sparsity_sweep_and_leave_global_rng_alone():
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    records = cli.run_demo((0.5,), epochs=4, progress=False)
    assert torch.equal(torch.random.get_rng_state(), state)  # a library call changes no global state
    methods = [r["method"] for r in records]
    # the demo also shows the default call prune(model, x, s) (docs/defaults.md)
    assert methods == ["original", "default", "intra-fusion", "intra-fusion (paper)", cli.DEFAULT_CALL]
    assert all(0 <= r["accuracy"] <= 100 for r in records)
    pruned = [r for r in records if r["method"] != "original"]
    assert all(r["params"] < records[0]["params"] for r in pruned)
    assert records == cli.run_demo((0.5,), epochs=4, progress=False)  # seeded: the same run twice


def test_demo_rejects_bad_input(capsys):
    with pytest.raises(SystemExit):
        cli.main(["demo", "--sparsities", "1.2"])
    assert "sparsity must be in [0, 1)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["demo", "--importance", "l7"])
    assert "invalid choice" in capsys.readouterr().err
    with pytest.raises(ValueError, match="importance must be one of"):
        cli.run_demo((0.5,), epochs=1, importance="l7", progress=False)
    assert tuple(cli.IMPORTANCES) == tuple(ifv.IMPORTANCES)  # the CLI lists them without importing torch


# ---------------------------------------------------------------- prune / groups / report on your own checkpoint

class TinyNet(torch.nn.Module):
    """A torchvision-free model for `package.module:Class` (this test module is importable as test_cli)."""

    def __init__(self, num_classes=3, width=8):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, width, 3, padding=1)
        self.bn1 = torch.nn.BatchNorm2d(width)
        self.conv2 = torch.nn.Conv2d(width, 2 * width, 3, padding=1)
        self.bn2 = torch.nn.BatchNorm2d(2 * width)
        self.fc = torch.nn.Linear(2 * width, num_classes)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


def _image_folder(root, classes=("cat", "dog", "fox"), per_class=4, size=20):
    from PIL import Image
    import numpy as np

    rng = np.random.default_rng(0)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 80, (size, size, 3)) + (60 * c) % 176  # classes differ in brightness
            Image.fromarray(pixels.astype(np.uint8)).save(root / name / f"{i}.png")
    return root


@pytest.fixture
def tiny_checkpoint(tmp_path):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = TinyNet()
    path = tmp_path / "tiny.pt"
    torch.save(model.state_dict(), path)  # what everyone has: a plain state dict
    return model, path


def test_help_imports_no_torch():
    """`--help` answers without importing torch (a fresh interpreter; the property, not a time)."""
    import subprocess
    import sys

    code = ("import sys; from intrafusion_viz.cli import main\n"
            "try:\n    main(['prune', '--help'])\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, 'torch was imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "--sparsity" in done.stdout and "--arch" in done.stdout


def test_every_option_has_help():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, p in sub.choices.items():
        for action in p._actions:
            assert action.help, f"{name} {action.option_strings or action.dest} has no help text"


def test_choices_match_the_library():
    assert tuple(cli.METHODS) == tuple(ifv.METHODS)
    assert set(cli.REPAIRS) >= set(ifv.REPAIR_MODES) - {"none"}


def test_prune_state_dict_with_package_class(tiny_checkpoint, tmp_path, capsys):
    model, path = tiny_checkpoint
    folder = _image_folder(tmp_path / "images")
    out = tmp_path / "pruned.pt"
    code = cli.main(["prune", str(path), "--arch", "test_cli:TinyNet", "--arch-args", "num_classes=3",
                     "--sparsity", "0.5", "--data", str(folder), "--input-size", "16", "--repair", "bn",
                     "--out", str(out), "--quiet"])
    assert code == 0, capsys.readouterr().err
    page = out.with_suffix(".html").read_text()
    for phrase in ("Group map", "TinyNet", "Transport plan", "accuracy (%, 12 samples)", "MACs", "plotly"):
        assert phrase in page, phrase
    pruned = cli.load_pruned(out)
    assert pruned.conv1.out_channels == 4 and pruned.conv2.out_channels == 8 and pruned.fc.in_features == 8
    x = torch.randn(2, 3, 16, 16)
    assert pruned(x).shape == (2, 3)
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())
    # the stored record: accuracy before equals the original model's accuracy on the same images
    record = cli._report.read_record(out)
    data = ifv.data.image_folder(folder, input_size=16)
    assert abs(record["accuracy_before"] - ifv.accuracy(model, ifv.data.loader_for(data))) < 1e-9
    assert record["params_after"] == sum(p.numel() for p in pruned.parameters())
    assert [g["k"] for g in record["pruned"]] == [4, 8]
    # `report` writes the same page again from the checkpoint alone
    again = tmp_path / "again.html"
    assert cli.main(["report", str(out), "--report", str(again)]) == 0
    assert "Group map" in again.read_text()


def test_prune_without_data_and_per_group_sparsity(tiny_checkpoint, tmp_path, capsys):
    _, path = tiny_checkpoint
    out = tmp_path / "p.pt"
    assert cli.main(["prune", str(path), "--arch", "test_cli:TinyNet", "--sparsity", "conv2=0.75",
                     "--input-size", "12", "--method", "default", "--out", str(out), "--quiet"]) == 0
    pruned = cli.load_pruned(out)
    assert pruned.conv1.out_channels == 8 and pruned.conv2.out_channels == 4  # only the named group
    page = out.with_suffix(".html").read_text()
    assert "accuracy (%" not in page and "Selection plan" in page


def test_groups_lists_the_groups(tiny_checkpoint, capsys):
    _, path = tiny_checkpoint
    assert cli.main(["groups", str(path), "--arch", "test_cli:TinyNet", "--input-size", "8", "--members"]) == 0
    printed = capsys.readouterr().out
    assert "2 groups" in printed and "conv1" in printed and "bn2" in printed


@pytest.mark.parametrize("argv, phrase", [
    (["--arch", "test_cli:NoSuchNet"], "has no 'NoSuchNet'"),
    ([], "name its architecture with --arch"),
    (["--arch", "test_cli:TinyNet", "--arch-args", "num_classes=5"], "num_classes=3"),
    (["--arch", "test_cli:TinyNet", "--importance", "taylor"], "needs data"),
    (["--arch", "test_cli:TinyNet", "--sparsity", "layer9=0.5"], "no such group"),
    (["--arch", "test_cli:TinyNet", "--data", str("no/such/folder")], "No image folder"),
])
def test_prune_refuses_bad_input_with_one_line(tiny_checkpoint, tmp_path, capsys, argv, phrase):
    _, path = tiny_checkpoint
    assert cli.main(["prune", str(path), "--input-size", "8", "--out", str(tmp_path / "x.pt"), "--quiet", *argv]) == 1
    err = capsys.readouterr().err
    assert phrase in err and "Traceback" not in err
    assert not (tmp_path / "x.pt").exists()


def test_pickled_model_needs_trust_and_torchscript_is_refused(tmp_path, capsys):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = TinyNet()
    torch.save(model, tmp_path / "whole.pt")
    assert cli.main(["groups", str(tmp_path / "whole.pt"), "--input-size", "8"]) == 1
    assert "--trust-pickle" in capsys.readouterr().err
    out = tmp_path / "w.pt"
    assert cli.main(["prune", str(tmp_path / "whole.pt"), "--trust-pickle", "--input-size", "8",
                     "--out", str(out), "--quiet"]) == 0
    whole = torch.load(tmp_path / "w.model.pt", weights_only=False)
    assert whole.conv1.out_channels == 4
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(model), str(tmp_path / "scripted.pt"))
    assert cli.main(["groups", str(tmp_path / "scripted.pt"), "--input-size", "8"]) == 1
    assert "TorchScript" in capsys.readouterr().err


@pytest.mark.slow
def test_prune_torchvision_resnet18_on_an_image_folder(tmp_path, capsys):
    """The issue's newcomer: a ResNet18 state dict, an image folder, the report."""
    torchvision = pytest.importorskip("torchvision")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = torchvision.models.resnet18(num_classes=10)
    torch.save(model.state_dict(), tmp_path / "r18.pt")
    folder = _image_folder(tmp_path / "images", classes=tuple(f"c{i}" for i in range(10)), per_class=1, size=36)
    out = tmp_path / "r18_pruned.pt"
    assert cli.main(["prune", str(tmp_path / "r18.pt"), "--arch", "torchvision:resnet18", "--arch-args",
                     '{"num_classes": 10}', "--data", str(folder), "--input-size", "32", "--sparsity", "0.5",
                     "--out", str(out), "--max-plans", "1", "--quiet"]) == 0
    pruned = cli.load_pruned(out)
    assert pruned.layer4[1].conv1.out_channels == 256 and pruned.fc.in_features == 256
    assert pruned(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    record = cli._report.read_record(out)
    assert record["params_after"] < 0.3 * record["params_before"]  # half the channels: about a quarter of the weights
    assert record["macs_after"] < 0.3 * record["macs_before"]
    assert "ResNet" in out.with_suffix(".html").read_text()
