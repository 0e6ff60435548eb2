"""Fusion in the training loop: the pipelines' stages, their bookkeeping and the timeline figure."""
import pytest
import torch

import intrafusion_viz as ifv
from intrafusion_viz import pipelines as pl

STAGES = {
    "baseline": ["train", "prune", "fine-tune"],
    "paf": ["train halves", "prune each", "fine-tune each", "fuse", "fine-tune"],
    "fap": ["train halves", "fuse", "fine-tune fused", "prune", "fine-tune"],
    "fap-vanilla": ["train halves", "fuse", "fine-tune fused", "prune", "fine-tune"],
}


@pytest.fixture(scope="module")
def digits():
    d = ifv.data.load_digits_tensors(seed=0, flatten=True)
    return (d.x_train, d.y_train), (d.x_test, d.y_test)


@pytest.fixture(scope="module")
def compared(digits):
    train, test = digits
    torch.set_num_threads(1)
    build = lambda: ifv.models.MLP(hidden=(32, 16), batch_norm=True)  # noqa: E731
    return pl.compare_pipelines(build, train, test, sparsity=0.5, epochs=2, finetune_epochs=2, model_name="MLP-BN",
                                progress=False, fuse_samples=64)


def test_split_data_is_a_disjoint_cover():
    x, y = torch.arange(11).float().unsqueeze(1), torch.arange(11)
    parts = pl.split_data((x, y), 2, seed=1)
    got = torch.cat([p[1] for p in parts]).sort().values
    assert torch.equal(got, y) and [len(p[1]) for p in parts] == [6, 5]
    assert all(torch.equal(p[0].squeeze(1).long(), p[1]) for p in parts)  # x and y stay paired
    with pytest.raises(ValueError, match="parts"):
        pl.split_data((x, y), 0)
    with pytest.raises(ValueError, match="pair"):
        pl.split_data((x, y[:3]))


def test_every_pipeline_records_its_stages_in_order(compared):
    records, runs = compared
    assert set(runs) == set(STAGES)
    for name, stages in STAGES.items():
        part = records[records.pipeline == name].sort_values("step")
        assert list(part.stage) == stages
        assert part.train_time_s.is_monotonic_increasing and part.epochs.is_monotonic_increasing
        assert (part.train_time_s <= part.train_time_sum_s + 1e-9).all()
        assert (part.train_cpu_s <= part.train_cpu_sum_s + 1e-9).all() and part.train_cpu_s.iloc[-1] > 0
        assert part.accuracy.between(0, 100).all()
        assert (part.sparsity == 0.5).all() and (part.model == "MLP-BN").all()
    need = {"pipeline", "stage", "step", "stage_epochs", "epochs", "samples_seen", "train_time_s",
            "train_time_sum_s", "train_cpu_s", "train_cpu_sum_s", "wall_time_s", "accuracy", "params", "sparsity", "seed"}
    assert need <= set(records.columns)


def test_budgets_params_and_halves(compared):
    records, runs = compared
    full = records[(records.pipeline == "baseline") & (records.stage == "train")].iloc[0]
    halves = records[(records.pipeline == "fap") & (records.stage == "train halves")].iloc[0]
    assert full.epochs == halves.epochs == 2
    assert halves.samples_seen * 2 in (full.samples_seen, full.samples_seen + 2)  # each half sees half the data
    # the halves are trained once and shared: same numbers in every fusing pipeline
    first = records[records.stage == "train halves"]
    assert first.train_time_s.nunique() == 1 and first.accuracy.nunique() == 1
    for name, run in runs.items():
        final = records[records.pipeline == name].sort_values("step").iloc[-1]
        assert final.params == sum(p.numel() for p in run.model.parameters())
        assert final.params < full.params
    assert records[records.pipeline == "baseline"].params.iloc[-1] == records[records.pipeline == "paf"].params.iloc[-1]
    assert runs["fap"].fusion.method == "ot" and runs["fap-vanilla"].fusion.method == "vanilla"
    assert runs["fap"].fusion.cost == "activation" and len(runs["fap"].halves) == 2


def test_pipeline_timeline_figure(compared):
    records, _ = compared
    fig = ifv.figures.pipeline_timeline(records)
    assert len(fig.data) == 4
    assert "MLP-BN" in fig.layout.title.text and "50%" in fig.layout.title.text
    assert list(fig.data[0].text) == STAGES["baseline"]
    by_epochs = ifv.figures.pipeline_timeline(records, x="epochs")
    assert list(by_epochs.data[0].x) == [2, 2, 4]
    with pytest.raises(ValueError, match="x must be"):
        ifv.figures.pipeline_timeline(records, x="accuracy")


def test_single_pipeline_functions(digits):
    train, test = digits
    build = lambda: ifv.models.MLP(hidden=(32, 16))  # noqa: E731
    run = pl.fuse_then_prune(build, train, test, sparsity=0.25, epochs=1, progress=False, fuse_method="vanilla",
                             fuse_samples=32)
    assert [r["stage"] for r in run.records] == STAGES["fap"] and run.records[0]["pipeline"] == "fap-vanilla"
    run = pl.prune_then_fuse(build, train, test, sparsity=0.25, epochs=1, progress=False, fuse_samples=32)
    assert run.fusion.groups[0].n == run.fusion.groups[0].k == 24
    with pytest.raises(ValueError, match="unknown pipelines"):
        pl.compare_pipelines(build, train, test, sparsity=0.5, pipelines=["pfa"])
    with pytest.raises(ValueError, match="parallel"):
        pl.train_models([build()], [train], 1, seeds=[0], parallel="threads")


@pytest.mark.slow
def test_halves_trained_in_two_processes(digits):
    train, _ = digits
    models = [ifv.models.MLP(hidden=(16,)) for _ in range(2)]
    before = [m.classifier.weight.detach().clone() for m in models]
    t = pl.train_models(models, pl.split_data(train), 1, seeds=[0, 1], parallel="processes")
    assert len(t.times_s) == 2 and t.sum_s == pytest.approx(sum(t.times_s)) and t.parallel_s > 0
    assert 0 < t.cpu_parallel_s <= t.cpu_sum_s
    assert all(not torch.equal(b, m.classifier.weight) for b, m in zip(before, models))


def test_stages_lie_end_to_end_on_one_time_axis(compared):
    records, _ = compared
    for name, part in records.groupby("pipeline"):
        part = part.sort_values("step")
        starts, times = part.stage_start_s.to_numpy(), part.stage_time_s.to_numpy()
        assert starts[0] == 0 and (times >= 0).all()
        assert starts[1:] == pytest.approx(starts[:-1] + times[:-1], abs=1e-9)
        assert part.wall_time_s.iloc[-1] == pytest.approx(starts[-1] + times[-1], abs=1e-9)
        for _, r in part.iterrows():  # the parallel stage lasts as long as its slowest model
            each = [float(t) for t in str(r.stage_model_times_s).split(" / ")]
            assert max(each) == pytest.approx(r.stage_time_s, abs=2e-3)
    halves = records[records.stage == "train halves"].stage_model_times_s
    assert halves.str.count("/").eq(1).all()


def test_gantt_puts_the_halves_side_by_side(compared):
    records, _ = compared
    fig = ifv.figures.pipeline_gantt(records)
    train = next(t for t in fig.data if t.name == "train halves")
    assert {"PaF · model A", "PaF · model B", "FaP · model A", "FaP · model B"} <= set(train.y)
    assert all(b == 0 for b in train.base)  # both halves start at 0: parallel
    notes = " ".join(a.text for a in fig.layout.annotations)
    assert "faster" in notes or "slower" in notes
    assert "MLP-BN" in fig.layout.title.text
    with pytest.raises(ValueError, match="stage_start_s"):
        ifv.figures.pipeline_gantt(records.drop(columns="stage_start_s"))


def test_fusion_plan_axes_say_whose_neurons(compared):
    _, runs = compared
    record = runs["fap"].fusion.groups[0]
    fig = ifv.figures.fusion_plan(record)
    assert fig.layout.xaxis.title.text.startswith("model A's neurons")
    assert fig.layout.yaxis.title.text.startswith("model B's neurons")
    assert f"model B's {record.n} neurons" in fig.layout.title.text
