"""ifv.finetune: accuracy recovers after pruning, the inputs stay untouched, a resumed run equals an uninterrupted one."""
import pandas as pd
import pytest
import torch

import intrafusion_viz as ifv
from intrafusion_viz.data import load_digits_tensors
from intrafusion_viz.models import SmallCNN
from helpers import assert_state_equal, state_copy


@pytest.fixture(scope="module")
def digits_pruned():
    """A SmallCNN trained on digits (about 95 %), then cut to 60 % sparsity with default pruning."""
    data = load_digits_tensors(seed=0)
    torch.manual_seed(0)
    model = SmallCNN()
    ifv.train(model, (data.x_train, data.y_train), epochs=8, seed=0, progress=False)
    res = ifv.prune(model, data.x_train[:1], sparsity=0.6, method="default")
    return data, model, res


def test_accuracy_recovers_on_digits(digits_pruned):
    data, model, res = digits_pruned
    original = ifv.accuracy(model, (data.x_test, data.y_test))
    tuned = ifv.finetune(res, (data.x_train, data.y_train), epochs=4, eval_data=(data.x_test, data.y_test),
                         lr=0.05, progress=False, label="default")
    rec = tuned.records
    assert list(rec.epoch) == [0, 1, 2, 3, 4]
    assert rec.accuracy.iloc[0] == pytest.approx(ifv.accuracy(res.model, (data.x_test, data.y_test)))
    assert original > 85.0
    assert rec.accuracy.iloc[0] < original - 10.0, "60 % default pruning should hurt (else nothing to recover)"
    # Fine-tuning recovers most of the loss: within 8 points of the unpruned model (about 98 %)
    # and 30 above epoch 0 (about 15 %: default pruning without repair of the BatchNorm statistics).
    assert rec.accuracy.iloc[-1] > original - 8.0
    assert rec.accuracy.iloc[-1] > rec.accuracy.iloc[0] + 30.0
    assert tuned.accuracy == list(rec.accuracy)
    assert set(rec.method) == {"default"} and set(rec.label) == {"default"}
    assert rec.sparsity.iloc[0] == pytest.approx(0.6) and (rec.group == -1).all()
    assert rec.params.iloc[0] == res.params_after
    assert rec.train_loss.iloc[1:].notna().all() and pd.isna(rec.train_loss.iloc[0])
    assert rec.lr.iloc[1] == pytest.approx(0.05) and rec.lr.iloc[-1] < 0.05  # cosine schedule
    assert not tuned.model.training


def test_inputs_untouched(digits_pruned):
    data, model, res = digits_pruned
    before_pruned, before_model = state_copy(res.model), state_copy(model)
    ifv.finetune(res, (data.x_train, data.y_train), epochs=1, progress=False)
    ifv.finetune(model, (data.x_train, data.y_train), epochs=1, progress=False)
    assert_state_equal(res.model, before_pruned)
    assert_state_equal(model, before_model)


def test_resume_gives_the_same_record(digits_pruned, tmp_path):
    data, _, res = digits_pruned
    kwargs = dict(epochs=3, eval_data=(data.x_test, data.y_test), lr=0.05, epoch_size=600, seed=3, progress=False)
    whole = ifv.finetune(res, (data.x_train, data.y_train), **kwargs)
    first = ifv.finetune(res, (data.x_train, data.y_train), checkpoint_dir=tmp_path, stop_after=1, **kwargs)
    assert not first.complete and list(first.records.epoch) == [0, 1]
    second = ifv.finetune(res, (data.x_train, data.y_train), checkpoint_dir=tmp_path, stop_after=1, **kwargs)
    assert list(second.records.epoch) == [0, 1, 2]
    resumed = ifv.finetune(res, (data.x_train, data.y_train), checkpoint_dir=tmp_path, **kwargs)
    assert resumed.complete
    pd.testing.assert_frame_equal(resumed.records, whole.records, rtol=1e-6)
    for a, b in zip(resumed.model.state_dict().values(), whole.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # A finished folder answers again without training; other settings are refused.
    again = ifv.finetune(res, (data.x_train, data.y_train), checkpoint_dir=tmp_path, **kwargs)
    pd.testing.assert_frame_equal(again.records, whole.records, rtol=1e-6)
    with pytest.raises(ValueError, match="other settings.*lr"):
        ifv.finetune(res, (data.x_train, data.y_train), checkpoint_dir=tmp_path, **dict(kwargs, lr=0.01))


def test_bad_inputs_say_what_to_do(digits_pruned):
    data, _, res = digits_pruned
    with pytest.raises(TypeError, match="takes an ifv.prune"):
        ifv.finetune("model", (data.x_train, data.y_train), epochs=1)
    with pytest.raises(ValueError, match="epochs must be"):
        ifv.finetune(res, (data.x_train, data.y_train), epochs=-1)
    with pytest.raises(ValueError, match="lr must be"):
        ifv.finetune(res, (data.x_train, data.y_train), epochs=1, lr=0)
    zero = ifv.finetune(res.model, (data.x_train, data.y_train), epochs=0, progress=False)
    assert list(zero.records.epoch) == [0] and zero.records.method.iloc[0] == ""


def test_finetune_figure_one_line_per_method_and_sparsity():
    rows = [dict(epoch=e, accuracy=50 + 10 * e + (5 if label == "IF (paper)" else 0) + seed, label=label,
                 sparsity=s, seed=seed, unpruned=90.0)
            for e in range(3) for label in ("default", "IF (paper)") for s in (0.5, 0.7) for seed in (0, 1)]
    fig = ifv.figures.finetune_figure(rows, model_name="vgg11_bn", importance="l1")
    assert len(fig.data) == 4 and {t.name for t in fig.data} == {"default", "IF (paper)"}
    first = fig.data[0]
    assert list(first.x) == [0, 1, 2] and list(first.y) == [50.5, 60.5, 70.5]  # mean of the two seeds
    assert list(first.error_y.array) == [0.5, 0.5, 0.5]
    title = fig.layout.title.text
    assert "vgg11_bn" in title and "l1" in title and "50% / 70%" in title and "2 seeds" in title
    assert len(ifv.figures.finetune_figure(rows, max_epoch=1).data[0].x) == 2
    with pytest.raises(ValueError, match="'epoch' column"):
        ifv.figures.finetune_figure([dict(accuracy=1.0, sparsity=0.5, label="x")])


def test_recovery_benchmark_tiny_runs_and_resumes(tmp_path):
    """benchmarks/finetune_recovery.py --tiny: every method's curve, the summary table, a rerun measures nothing."""
    import importlib.util
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "finetune_recovery.py"
    sys.path.insert(0, str(script.parent))
    spec = importlib.util.spec_from_file_location("finetune_recovery", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    argv = ["--tiny", "--quiet", "--out", str(tmp_path)]
    text = module.main(argv)
    records = pd.read_csv(tmp_path / "records.csv")
    assert set(records.label) == set(module.METHODS) and sorted(records.epoch.unique()) == [0, 1, 2]
    assert "| 50% | default |" in text and "epochs saved" in text
    assert (tmp_path / "finetune_recovery.html").is_file()
    assert module.main(argv) == text  # resumed from records.csv: nothing measured twice
    assert len(pd.read_csv(tmp_path / "records.csv")) == len(records)
