"""Sweeps on executors: a Dask LocalCluster (2 worker processes) and a ProcessPoolExecutor return
exactly the in-process table; a failing cell is reported by name and the other cells still finish."""
import math
import os
import warnings
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest
import torch

import intrafusion_viz as ifv

TESTS = str(Path(__file__).resolve().parent)
SPARSITIES = (0.3, 0.6)


class FailOnSize:
    """Importance that raises for groups of one size (a cell-level failure a worker must report)."""

    __name__ = "fail_on_size"

    def __init__(self, size):
        self.size = size

    def __call__(self, group):
        if group.size == self.size:
            raise ValueError(f"no score for {self.size} channels")
        return torch.arange(group.size, dtype=torch.float64) % 5


@pytest.fixture(scope="module")
def trained():
    """A SmallCNN trained on scikit-learn digits (accuracy well above chance, so pruning moves it)."""
    d = ifv.data.load_digits_tensors(seed=0)
    torch.manual_seed(0)
    model = ifv.models.SmallCNN(width=(12, 24))
    with torch.random.fork_rng():
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        ifv.train(model, (d.x_train, d.y_train), epochs=2, lr=0.1, seed=0, progress=False)
        torch.set_num_threads(threads)
    model.eval()
    return model, (d.x_test, d.y_test), d.x_train[:2], (d.x_train[:128], d.y_train[:128])


def in_process(model, data, example, **kw):
    """The reference: the same sweep here, with one torch thread as in the workers."""
    return ifv.sweeps.layer_sweep(model, data, example, sparsities=SPARSITIES, methods=ifv.sweeps.SWEEP_METHODS,
                                  progress=False, cache=False, **kw)


@pytest.fixture(scope="module")
def reference(trained):
    model, data, example, _ = trained
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return in_process(model, data, example)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def dask_client():
    distributed = pytest.importorskip("distributed", reason="pip install -e '.[distributed]'")
    # Worker processes import this test module by name (for FailOnSize): put tests/ on their path.
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (TESTS, old) if p)
    import dask

    try:
        # fork: the workers start with torch and the package already imported (seconds, not tens of
        # seconds on a busy 2-core machine); users' clusters keep Dask's default (spawn).
        with dask.config.set({"distributed.worker.multiprocessing-method": "fork"}):
            cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                               dashboard_address=None, silence_logs=40)
        client = distributed.Client(cluster)
    finally:
        if old is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = old
    yield client
    client.close()
    cluster.close()


@pytest.fixture(scope="module")
def process_pool():
    with ProcessPoolExecutor(2) as pool:
        yield pool


def test_reference_is_a_real_sweep(trained, reference):
    model, data, example, _ = trained
    ngroups = len(ifv.find_groups(model, example))
    assert len(reference) == 1 + ngroups * len(SPARSITIES) * len(ifv.sweeps.SWEEP_METHODS)
    assert reference.accuracy.iloc[0] > 80  # trained: pruning has something to lose
    assert reference.accuracy.nunique() > 3 and "error" not in reference


def test_dask_cluster_gives_the_in_process_table(trained, reference, dask_client):
    model, data, example, _ = trained
    assert len(dask_client.scheduler_info()["workers"]) == 2
    table = in_process(model, data, example, executor=dask_client)
    pd.testing.assert_frame_equal(table, reference, check_exact=True)
    # client.get_executor() is a concurrent.futures.Executor over the same cluster
    table = in_process(model, data, example, executor=dask_client.get_executor())
    pd.testing.assert_frame_equal(table, reference, check_exact=True)


def test_dask_sparsity_sweep_and_taylor_match(trained, dask_client):
    model, data, example, batch = trained
    kw = dict(sparsities=(0.2, 0.5), importance="taylor", batch=batch, progress=False, cache=False)
    here = ifv.sweeps.sparsity_sweep(model, data, example, **kw)
    there = ifv.sweeps.sparsity_sweep(model, data, example, executor=dask_client, **kw)
    pd.testing.assert_frame_equal(there, here, check_exact=True)
    assert (here.method == "original").sum() == 1 and len(here) == 1 + 2 * 2


def test_process_pool_gives_the_in_process_table(trained, reference, process_pool):
    model, data, example, _ = trained
    table = in_process(model, data, example, executor=process_pool)
    pd.testing.assert_frame_equal(table, reference, check_exact=True)


def test_thread_pool_gives_the_in_process_table(trained, reference):
    model, data, example, _ = trained
    with ThreadPoolExecutor(2) as pool:
        table = in_process(model, data, example, executor=pool)
    pd.testing.assert_frame_equal(table, reference, check_exact=True)


def test_data_from_a_path_is_loaded_on_the_worker(trained, reference, process_pool, tmp_path):
    model, data, example, _ = trained
    path = tmp_path / "test.pt"
    torch.save(data, path)
    table = in_process(model, path, example, executor=process_pool)
    pd.testing.assert_frame_equal(table, reference, check_exact=True)


@pytest.mark.parametrize("where", ["here", "process pool", "dask"])
def test_failing_cell_is_reported_and_the_others_finish(trained, where, request):
    model, data, example, _ = trained
    executor = {"here": None, "process pool": "process_pool", "dask": "dask_client"}[where]
    if executor is not None:
        executor = request.getfixturevalue(executor)
    groups = ifv.find_groups(model, example)
    bad = groups[1]
    importance = FailOnSize(bad.size)
    kw = dict(sparsities=(0.5,), methods=("default", "intra-fusion"), importance=importance, progress=False,
              cache=False, executor=executor)
    with pytest.raises(ifv.sweeps.SweepError) as info:
        ifv.sweeps.layer_sweep(model, data, example, **kw)
    err = info.value
    message = str(err)
    assert f"group {bad.index} ({bad.name}, G{bad.paper_index}), sparsity 0.5, default" in message
    assert f"no score for {bad.size} channels" in message and "2 of 5 cells failed" in message
    assert isinstance(err.__cause__, ValueError)
    table = err.table
    failed = table[table.error.notna()]
    assert list(failed.group) == [bad.index, bad.index]
    assert failed.accuracy.map(math.isnan).all()
    assert failed.error.str.startswith("ValueError: no score").all()
    # the others finished, with the numbers a direct prune gives
    ok = table[table.error.isna() & (table.method != "original")]
    assert len(ok) == 2
    for row in ok.itertuples():
        res = ifv.prune(model, example, {row.group: 0.5}, method=row.method, importance=importance)
        assert row.accuracy == ifv.accuracy(res.model, data)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warned = ifv.sweeps.layer_sweep(model, data, example, errors="warn", **kw)
    assert any("2 of 5 cells failed" in str(w.message) for w in caught)
    pd.testing.assert_frame_equal(warned, table)


def test_progress_bar_counts_cells_finished_out_of_order(trained, dask_client, monkeypatch):
    import tqdm.auto

    updates = []
    real = tqdm.auto.tqdm

    class Recording(real):
        def update(self, n=1):
            updates.append(n)
            return super().update(n)

    monkeypatch.setattr(tqdm.auto, "tqdm", Recording)
    model, data, example, _ = trained
    ifv.sweeps.layer_sweep(model, data, example, groups=[0], sparsities=(0.5,), progress=True, cache=False,
                           executor=dask_client)
    assert sum(updates) == 1 + 2  # the original and two cells


def test_bad_inputs_are_refused_before_any_task(trained, dask_client):
    model, data, example, _ = trained
    with pytest.raises(ValueError, match="method must be one of"):
        ifv.sweeps.layer_sweep(model, data, example, methods=("nope",), executor=dask_client, progress=False)
    with pytest.raises(ValueError, match="unknown importance"):
        ifv.sweeps.layer_sweep(model, data, example, importance="nope", executor=dask_client, progress=False)
    with pytest.raises(IndexError, match="out of range"):
        ifv.sweeps.layer_sweep(model, data, example, groups=[99], executor=dask_client, progress=False)


@pytest.mark.parametrize("where", ["processes", "dask"])
def test_reproduce_paper_on_workers_matches_in_process(where, tmp_path, monkeypatch, request):
    """benchmarks/reproduce_paper.py --workers / --scheduler: the same results.jsonl cells and numbers."""
    import json

    from test_reproduce_paper import _fabricate_cifar10, _load_script

    _fabricate_cifar10(tmp_path / "cifar", monkeypatch)
    script = _load_script()
    base = ["--tiny", "--data-root", str(tmp_path / "cifar"), "--device", "cpu", "--models", "vgg11_bn",
            "--checkpoint-dir", str(tmp_path / "here")]
    script.main(base + ["--out", str(tmp_path / "here")])
    if where == "processes":
        extra = ["--workers", "2", "--scheduler", "processes"]
    else:
        extra = ["--scheduler", request.getfixturevalue("dask_client").scheduler.address]
    script.main(base + ["--out", str(tmp_path / "there")] + extra)

    def cells(folder):
        lines = [json.loads(line) for line in (tmp_path / folder / "results.jsonl").read_text().splitlines()]
        return {(r["group"], r["sparsity"], r["importance"], r["method"]): r["accuracy"] for r in lines}

    here, there = cells("here"), cells("there")
    assert len(here) == 1 + 4 * 3 and there == here  # the original, 4 groups x 3 methods (--tiny)


def test_sweep_dashboard_runs_on_the_cluster(trained, dask_client):
    pytest.importorskip("ipywidgets")
    model, data, example, _ = trained
    dashboard = ifv.widgets.sweep_dashboard(model, data, example, groups=[0, 1], sparsities=(0.5,),
                                            renderer="static", executor=dask_client)
    table = dashboard.run()
    assert dashboard.progress.value == dashboard.progress.max == 2 * 2
    here = ifv.sweeps.layer_sweep(model, dashboard.eval_data, example, groups=[0, 1], sparsities=(0.5,),
                                  progress=False, cache=False)
    pd.testing.assert_frame_equal(table[list(here.columns)], here, check_exact=True)  # + model, num_classes


def test_device_moves_a_copy_on_the_worker(trained, reference, process_pool):
    model, data, example, _ = trained
    before = {k: v.clone() for k, v in model.state_dict().items()}
    table = in_process(model, data, example, executor=process_pool, device="cpu")
    pd.testing.assert_frame_equal(table, reference, check_exact=True)
    table = in_process(model, data, example, device=torch.device("cpu"))  # in process: a copy, not the model
    pd.testing.assert_frame_equal(table, reference, check_exact=True)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
