"""benchmarks/reproduce_paper.py in tiny mode on fabricated CIFAR-10 files: runs, reports, resumes."""
import hashlib
import importlib.util
import json
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "reproduce_paper.py"


def _load_script():
    sys.path.insert(0, str(SCRIPT.parent))
    spec = importlib.util.spec_from_file_location("reproduce_paper", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fabricate_cifar10(root: Path, monkeypatch, n_per_file: int = 16):
    """Official-format python pickles with random images; torchvision's md5 table patched to match."""
    import torchvision.datasets as tvd

    cls = tvd.CIFAR10
    folder = root / cls.base_folder
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)

    def write(name, entry):
        path = folder / name
        path.write_bytes(pickle.dumps(entry))
        return hashlib.md5(path.read_bytes()).hexdigest()

    def batches(names):
        return [[name, write(name, {"data": rng.integers(0, 256, (n_per_file, 3072), dtype=np.uint8),
                                    "labels": rng.integers(0, 10, n_per_file).tolist(), "batch_label": name})]
                for name in names]

    monkeypatch.setattr(cls, "train_list", batches([n for n, _ in cls.train_list]))
    monkeypatch.setattr(cls, "test_list", batches([n for n, _ in cls.test_list]))
    meta_md5 = write(cls.meta["filename"], {cls.meta["key"]: [f"class{i}" for i in range(10)]})
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": meta_md5})


@pytest.fixture
def cifar_root(tmp_path, monkeypatch):
    _fabricate_cifar10(tmp_path / "cifar", monkeypatch)
    return tmp_path / "cifar"


def test_tiny_run_reports_paper_cells_and_resumes(cifar_root, tmp_path, capsys):
    script = _load_script()
    out = tmp_path / "out"
    argv = ["--tiny", "--data-root", str(cifar_root), "--out", str(out), "--device", "cpu"]
    text = script.main(argv)
    printed = capsys.readouterr().out
    assert "estimated time" in printed
    lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    # 1 original + (every paper group of the model) x 1 sparsity x 1 importance x 3 methods:
    # VGG11-BN G1-G3 and G7 (failure case), ResNet18 G1-G4 and G7.
    assert len(lines) == (1 + 4 * 3) + (1 + 5 * 3)
    assert all(0.0 <= r["accuracy"] <= 100.0 for r in lines)
    assert {r["group"] for r in lines if r["method"] != "original" and r["model"] == "vgg11_bn"} == {1, 2, 3, 7}
    assert {r["method"] for r in lines} == {"original", "default", "IF (paper)", "IF (default config)"}
    vgg_g1 = [r for r in lines if r["model"] == "vgg11_bn" and r["group"] == 1]
    assert {r["group_name"] for r in vgg_g1} == {"features.22"}  # the paper's G1 of VGG11-BN
    # Every paper cell is printed, ours beside it, with the difference where both exist.
    assert script.PAPER[("vgg11_bn", "l1", 2, 0.7)] == (37.89, 80.11)
    table_rows = [line for line in text.splitlines() if line.startswith("| G")]
    measured = {(r["model"], "l1", r["group"], 0.5) for r in lines if r["method"] != "original"}
    assert len(table_rows) == len(set(script.PAPER) | measured)  # every paper cell, and ours the paper lacks
    ours = {(r["model"], r["group"], r["method"]): r["accuracy"] for r in lines}
    g3 = next(line for line in table_rows if line.startswith("| G3 | 50% | l1 |") and "81.91" in line)
    cells = [c.strip() for c in g3.strip("|").split("|")]
    assert cells[3:5] == ["81.91", "91.25"]
    assert float(cells[5]) == pytest.approx(ours[("resnet18", 3, "default")], abs=0.006)
    assert float(cells[6]) == pytest.approx(ours[("resnet18", 3, "IF (paper)")], abs=0.006)
    assert float(cells[8]) == pytest.approx(ours[("resnet18", 3, "default")] - 81.91, abs=0.011)
    assert float(cells[9]) == pytest.approx(ours[("resnet18", 3, "IF (paper)")] - 91.25, abs=0.011)
    assert "| G2 | 70% | l1 | 37.89 | 80.11 | n/a | n/a | n/a |" in text  # not measured in tiny mode
    assert "| G4 | 50% | taylor | n/a | 10.10 |" in text  # ResNet18's failure case, no default number
    assert "Table 1" in text and "89.56" in text and "1.81x" in text
    assert (out / "vgg11_bn.pt").is_file() and (out / "resnet18.pt").is_file()

    # Rerun: checkpoints are loaded, no cell is measured twice, the report is the same.
    text_again = script.main(argv)
    assert "loaded" in capsys.readouterr().out
    assert len((out / "results.jsonl").read_text().splitlines()) == len(lines)
    assert text_again == text


def test_resume_measures_only_missing_cells(cifar_root, tmp_path):
    script = _load_script()
    out = tmp_path / "out"
    argv = ["--tiny", "--data-root", str(cifar_root), "--out", str(out), "--device", "cpu", "--models", "vgg11_bn"]
    script.main(argv)
    results = out / "results.jsonl"
    kept = results.read_text().splitlines()[:4]
    results.write_text("\n".join(kept) + "\n")  # as if interrupted after 4 cells
    script.main(argv)
    lines = [json.loads(line) for line in results.read_text().splitlines()]
    assert lines[:4] == [json.loads(line) for line in kept]
    keys = [(r["group"], r["method"]) for r in lines]
    assert len(keys) == len(set(keys)) == 1 + 4 * 3


def test_missing_data_says_what_is_needed(tmp_path):
    script = _load_script()
    with pytest.raises(SystemExit, match="needs CIFAR-10"):
        script.main(["--tiny", "--data-root", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")])
