"""Bad input, one row per class: our exception, a message that says what to do, nothing changed.

Each row is ``(id, make, call, exception type, phrase)``: ``make()`` builds the caller's model (or
``None`` for calls without one), ``call(model)`` makes the bad call.  For every row the test checks
that the message contains the phrase and that the caller's model (state, parameter identity,
requires_grad, ``.grad``, per-module train/eval modes, hooks, layer sizes) and the global state
(torch RNG, default dtype, grad mode) are exactly as before.  Rows named ``inplace-*`` make the
failure happen with ``inplace=True``, some by injecting a failure half-way through the surgery.
"""
import gzip
import itertools
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn

import intrafusion_viz as ifv
from intrafusion_viz.merge import _surgery
from intrafusion_viz.pruning import _steps as _prune

from helpers import conv_bn_net, mlp, randomize_bn

X = torch.randn(4, 1, 8, 8)
Y = torch.randint(0, 4, (4,))
# everything the rows need is made here: a row's call must not draw from the global RNG itself
X3 = torch.randn(4, 3, 8, 8)
V = torch.randn(2, 5)
COST, FEATS = torch.rand(4, 2, dtype=torch.float64), torch.randn(4, 3)
UNIFORM4, UNIFORM2 = torch.full((4,), 0.25, dtype=torch.float64), torch.full((2,), 0.5, dtype=torch.float64)
ZEROS4, ZEROS2 = torch.zeros(4, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
MLP, MLP_STATE, WIDER, CONV6 = mlp(), mlp().state_dict(), conv_bn_net(c=8), conv_bn_net(c=6)


class ReturnsNumber(nn.Module):
    """Runs fine, but returns no tensor: Torch-Pruning's tracer cannot follow it."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(5, 6), nn.Linear(6, 2)

    def forward(self, x):
        return float(self.fc2(self.fc1(x)).sum())


def caller_model():
    """A model as users hold them: train mode with a frozen eval BatchNorm, a frozen layer, grads, a hook."""
    model = randomize_bn(conv_bn_net(c=6), seed=1).train()
    model[4].eval()  # a frozen BatchNorm inside a training model
    model[0].weight.requires_grad_(False)
    model(X).sum().backward()  # .grad on the trainable parameters
    model.calls = []
    model[3].register_forward_hook(lambda m, i, o: model.calls.append(o.shape))
    return model


def observe(model):
    """Everything about the caller's model a library call must leave as it found it."""
    if model is None:
        return None
    return dict(
        state={k: v.detach().clone() for k, v in model.state_dict().items()},
        params=[(n, p, p.requires_grad, p.grad, None if p.grad is None else p.grad.clone())
                for n, p in model.named_parameters()],
        modes=[(n, m.training) for n, m in model.named_modules()],
        hooks=[(n, m._forward_hooks, list(m._forward_hooks.values()), list(m._forward_pre_hooks.values()))
               for n, m in model.named_modules()],
        layers=[(n, repr(m)) for n, m in model.named_modules()],
    )


def assert_unchanged(model, before):
    if model is None:
        return
    now = observe(model)
    assert now["state"].keys() == before["state"].keys()
    for k, v in before["state"].items():
        assert now["state"][k].dtype == v.dtype and torch.equal(now["state"][k], v), k
    for (n, p, rg, grad, value), (n2, p2, rg2, grad2, value2) in zip(before["params"], now["params"]):
        assert n == n2 and p is p2, f"{n} is a new Parameter object"
        assert rg == rg2, f"{n}.requires_grad changed"
        assert grad is grad2, f"{n}.grad was replaced"
        assert (value is None) == (value2 is None) and (value is None or torch.equal(value, value2)), n
    assert len(before["params"]) == len(now["params"])
    assert now["modes"] == before["modes"]
    for (n, d, fwd, pre), (_, d2, fwd2, pre2) in zip(before["hooks"], now["hooks"]):
        assert d is d2 and fwd == fwd2 and pre == pre2, f"hooks of {n!r} changed"
    assert now["layers"] == before["layers"]


def global_state():
    return (torch.get_rng_state(), torch.get_default_dtype(), torch.is_grad_enabled(),
            torch.is_inference_mode_enabled())


def fail_on_call(number, what="injected failure"):
    """A replacement that behaves like ``original`` until its ``number``-th call, which raises."""
    def wrap(original):
        counter = itertools.count(1)

        def replacement(*args, **kwargs):
            if next(counter) == number:
                raise RuntimeError(what)
            return original(*args, **kwargs)
        return replacement
    return wrap


def inference_mode_taylor(model, **kw):
    with torch.inference_mode():
        return ifv.prune(model, X[:1], 0.5, importance="taylor", batch=(X, Y), **kw)


def inference_mode_call(fn, *args):
    with torch.inference_mode():
        return fn(*args)


def _mnist_files(tmp, images, labels, images_bytes=None, labels_bytes=None):
    def idx(array, magic):
        return (magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
                + array.astype(np.uint8).tobytes())
    for name, payload in (("t10k-images-idx3-ubyte.gz", images_bytes or idx(images, 2051)),
                          ("t10k-labels-idx1-ubyte.gz", labels_bytes or idx(labels, 2049))):
        with gzip.open(tmp / name, "wb") as f:
            f.write(payload)
    return tmp


def mnist_truncated(tmp):
    _mnist_files(tmp, np.zeros((10, 28, 28)), np.zeros(10))
    path = tmp / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-40])
    return ifv.data.mnist_test_split(tmp, n_train=5, n_test=5)


def mnist_not_gzip(tmp):
    _mnist_files(tmp, np.zeros((10, 28, 28)), np.zeros(10))
    (tmp / "t10k-labels-idx1-ubyte.gz").write_bytes(b"<html>404 not found</html>")
    return ifv.data.mnist_test_split(tmp, n_train=5, n_test=5)


def mnist_mismatched(tmp):
    _mnist_files(tmp, np.zeros((10, 28, 28)), np.zeros(7))
    return ifv.data.mnist_test_split(tmp, n_train=5, n_test=2)


def checkpoint(tmp, payload, model=None):
    path = tmp / "foreign.pt"
    torch.save(payload, path)
    return ifv.load_checkpoint(path, model)


def torchscript_checkpoint(tmp):
    path = tmp / "scripted.pt"
    with warnings.catch_warnings():  # torch.jit.* are deprecated in recent torch; the files still exist
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(MLP), str(path))
    return ifv.load_checkpoint(path)


def wider_checkpoint(tmp, model):
    path = ifv.save_checkpoint(WIDER, tmp / "wider.pt")
    return ifv.load_checkpoint(path, model)


def prune_f64(model):
    return ifv.prune(model.double(), X[:1], 0.5)


def _inplace(flag):  # only pass inplace when a row asks for it (the inplace test sets it otherwise)
    return {"inplace": True} if flag else {}


def _taylor(batch, loss_fn=None, inplace=False):
    return lambda m: ifv.prune(m, X[:1], 0.5, importance="taylor", batch=batch, loss_fn=loss_fn, **_inplace(inplace))


def _imp(fn, inplace=False):
    return lambda m: ifv.prune(m, X[:1], 0.5, importance=fn, **_inplace(inplace))


def _feat(fn, inplace=False):
    return lambda m: ifv.prune(m, X[:1], 0.5, features=fn, **_inplace(inplace))


def _injected(attribute, number, owner=_prune, config=None):
    def call(m, monkeypatch):
        monkeypatch.setattr(owner, attribute, fail_on_call(number)(getattr(owner, attribute)))
        # Intra-Fusion's surgery (OTConfig() unless given): the default call folds instead (docs/defaults.md)
        return ifv.prune(m, X[:1], 0.5, inplace=True, config=config if config is not None else ifv.OTConfig())
    return call


f64 = lambda: caller_model().double()  # noqa: E731
ROWS = [
    # dtype: the message names the dtypes, not the shape
    ("dtype-float64-model-float32-inputs", f64, lambda m: ifv.prune(m, X[:1], 0.5), TypeError, "convert the inputs"),
    ("dtype-float64-find-groups", f64, lambda m: ifv.find_groups(m, X[:1]), TypeError, "torch.float64"),
    ("dtype-half-inputs", caller_model, lambda m: ifv.prune(m, X[:1].half(), 0.5), TypeError, "torch.float16"),
    ("dtype-int-inputs", caller_model, lambda m: ifv.prune(m, X[:1].long(), 0.5), TypeError, "not floating point"),
    ("inplace-dtype", f64, lambda m: ifv.prune(m, X[:1], 0.5, inplace=True), TypeError, "x.to(torch.float64)"),
    ("dtype-taylor-batch", caller_model, _taylor((X.double(), Y)), TypeError, "Taylor batch"),
    # shapes are still blamed on shapes
    ("shape-example-inputs", caller_model, lambda m: ifv.prune(m, X3[:1], 0.5), ValueError,
     "shaped like the model's real inputs"),
    # a failure of Torch-Pruning's tracer is reported as one, not blamed on the inputs
    ("tracer-failure", lambda: ReturnsNumber(), lambda m: ifv.find_groups(m, V), RuntimeError,
     "Torch-Pruning's dependency tracer failed"),
    # Taylor batches
    ("taylor-no-batch", caller_model, _taylor(None), ValueError, "batch=(inputs, targets)"),
    ("taylor-not-a-pair", caller_model, _taylor([X, Y, Y]), ValueError, "pair (inputs, targets)"),
    ("taylor-wrong-shape", caller_model, _taylor((X3, Y)), ValueError,
     "shaped and typed like example_inputs"),
    ("inplace-taylor-wrong-shape", caller_model, _taylor((X3, Y), inplace=True), ValueError,
     "shaped and typed like example_inputs"),
    ("taylor-float-targets", caller_model, _taylor((X, Y.float())), TypeError, "targets.long()"),
    ("inplace-taylor-float-targets", caller_model, _taylor((X, Y.float()), inplace=True), TypeError, "targets.long()"),
    ("taylor-targets-length", caller_model, _taylor((X, Y[:3])), ValueError, "one target per input"),
    ("taylor-loss-not-scalar", caller_model, _taylor((X, Y), loss_fn=lambda o, t: o), ValueError, "scalar"),
    ("inplace-taylor-loss-not-scalar", caller_model, _taylor((X, Y), lambda o, t: o, inplace=True), ValueError,
     "scalar"),
    ("taylor-loss-fails", caller_model, _taylor((X, Y), loss_fn=lambda o, t: o[len(t) + 5].sum()),
     ValueError, "loss_fn"),
    ("taylor-inference-mode", caller_model, inference_mode_taylor, RuntimeError, "outside the inference_mode"),
    ("inference-mode-find-groups", caller_model, lambda m: inference_mode_call(ifv.find_groups, m, X[:1]),
     RuntimeError, "torch.no_grad() is fine"),
    ("inplace-taylor-inference-mode", caller_model, lambda m: inference_mode_taylor(m, inplace=True), RuntimeError,
     "outside the inference_mode"),
    # features= callables
    ("features-not-float", caller_model, _feat(lambda m, g: torch.ones(g.size, 3, dtype=torch.long)), TypeError,
     ".float()"),
    ("features-wrong-shape", caller_model, _feat(lambda m, g: torch.ones(g.size + 1, 3)), ValueError,
     "one row per channel"),
    ("features-1d", caller_model, _feat(lambda m, g: torch.ones(g.size)), ValueError, "one row per channel"),
    ("features-not-tensor", caller_model, _feat(lambda m, g: [[1.0]] * g.size), TypeError, "must return a tensor"),
    ("features-nan", caller_model, _feat(lambda m, g: torch.full((g.size, 2), float("nan"))), ValueError, "NaN"),
    ("inplace-features-wrong-shape", caller_model, _feat(lambda m, g: torch.ones(2, 3), inplace=True), ValueError,
     "one row per channel"),
    # group keys
    ("groups-unknown-name", caller_model, lambda m: ifv.prune(m, X[:1], 0.5, groups="conv9"), KeyError,
     "paper label"),
    ("groups-out-of-range", caller_model, lambda m: ifv.prune(m, X[:1], 0.5, groups=[5]), IndexError, "out of range"),
    ("groups-float-key", caller_model, lambda m: ifv.prune(m, X[:1], 0.5, groups=[0.5]), TypeError,
     "int index or a str name"),
    ("inplace-groups-unknown-name", caller_model, lambda m: ifv.prune(m, X[:1], 0.5, groups="x", inplace=True),
     KeyError, "no group named"),
    # OTConfig: booleans and strings where numbers are meant, and the reverse
    ("config-p-bool", None, lambda m: ifv.OTConfig(p=True), TypeError, "OTConfig.p must be a number"),
    ("config-max-iter-bool", None, lambda m: ifv.OTConfig(max_iter=True), TypeError, "None or an int"),
    ("config-max-iter-float", None, lambda m: ifv.OTConfig(max_iter=100.0), TypeError, "None or an int"),
    ("config-reg-bool", None, lambda m: ifv.OTConfig(reg=True), TypeError, "OTConfig.reg must be a number"),
    ("config-fold-str", None, lambda m: ifv.OTConfig(fold_batchnorm="no"), TypeError, "True or False"),
    ("config-fold-int", None, lambda m: ifv.OTConfig(fold_batchnorm=0), TypeError, "True or False"),
    ("config-solver-none", None, lambda m: ifv.OTConfig(solver=None), TypeError, "OTConfig.solver must be a string"),
    ("config-p-str", None, lambda m: ifv.OTConfig(p="2"), TypeError, "OTConfig.p must be a number"),
    ("config-not-otconfig", caller_model, lambda m: ifv.prune(m, X[:1], 0.5, config={"p": 1}), TypeError, "OTConfig"),
    # importance callables
    ("importance-complex", caller_model, _imp(lambda g: torch.ones(g.size, dtype=torch.complex64)), TypeError,
     "real floating-point"),
    ("importance-integer", caller_model, _imp(lambda g: torch.arange(g.size)), TypeError, "not a ranking"),
    ("importance-bool", caller_model, _imp(lambda g: torch.ones(g.size, dtype=torch.bool)), TypeError,
     "real floating-point"),
    ("importance-nan", caller_model, _imp(lambda g: torch.full((g.size,), float("nan"))), ValueError,
     "return finite scores"),
    ("importance-wrong-length", caller_model, _imp(lambda g: torch.ones(g.size + 1)), ValueError,
     "one score per channel"),
    ("importance-none", caller_model, _imp(lambda g: None), ValueError, "returned None"),
    ("importance-unknown-name", caller_model, _imp("l7"), ValueError, "unknown importance"),
    ("inplace-importance-nan", caller_model, _imp(lambda g: torch.full((g.size,), float("nan")), inplace=True),
     ValueError, "return finite scores"),
    # TorchScript models
    ("torchscript-scripted", lambda: torch.jit.script(mlp()), lambda m: ifv.prune(m, V, 0.5),
     TypeError, "prune the original nn.Module"),
    ("torchscript-traced", lambda: torch.jit.trace(mlp(), V),
     lambda m: ifv.find_groups(m, V), TypeError, "TorchScript"),
    ("not-a-module", None, lambda m: ifv.find_groups(lambda x: x, X), TypeError, "torch.nn.Module"),
    # sparsity and method (already ours; kept so the table covers them)
    ("sparsity-string", caller_model, lambda m: ifv.prune(m, X[:1], "0.5"), TypeError, "sparsity"),
    ("inplace-not-bool", caller_model, lambda m: ifv.prune(m, X[:1], 0.5, inplace="yes"), TypeError,
     "inplace must be True or False"),
    ("seed-not-int", caller_model, lambda m: ifv.prune(m, X[:1], 0.5, importance="random", seed=0.5), TypeError,
     "seed must be an int"),
    ("method-unknown", caller_model, lambda m: ifv.prune(m, X[:1], 0.5, method="fusion"), ValueError, "method"),
    # inplace=True, failures injected half-way: the caller's model is put back exactly
    ("inplace-solver-fails-on-second-group", caller_model, _injected("transport_plan", 2), RuntimeError, "injected"),
    ("inplace-merge-fails-on-second-group", caller_model, _injected("apply_merge", 2), RuntimeError, "injected"),
    ("inplace-batchnorm-restore-fails", caller_model, _injected("restore_folded_batchnorms", 1), RuntimeError,
     "injected"),
    ("inplace-cut-fails", caller_model, _injected("_merged_cut", 4, owner=_surgery), RuntimeError, "injected"),
    ("inplace-default-method-cut-fails", caller_model,
     lambda m, mp: (mp.setattr(_surgery, "_merged_cut", fail_on_call(4)(_surgery._merged_cut)),
                    ifv.prune(m, X[:1], 0.5, method="default", inplace=True)), RuntimeError, "injected"),
    # data files
    ("mnist-truncated-gzip", None, "mnist_truncated", RuntimeError, "corrupted or partly downloaded"),
    ("mnist-not-gzip", None, "mnist_not_gzip", RuntimeError, "copy or download them again"),
    ("mnist-images-labels-mismatch", None, "mnist_mismatched", RuntimeError, "7 labels"),
    # checkpoints in a foreign format
    ("checkpoint-foreign-dict", None, lambda tmp: checkpoint(tmp, {"weights": 1}), ifv.CheckpointError,
     "save_checkpoint"),
    ("checkpoint-bare-state-dict-other-model", None, lambda tmp: checkpoint(tmp, MLP_STATE, CONV6),
     ifv.CheckpointError, "does not fit"),
    ("checkpoint-other-tool-other-model", None,
     lambda tmp: checkpoint(tmp, {"state_dict": MLP_STATE, "epoch": 3}, CONV6),
     ifv.CheckpointError, "does not fit"),
    ("checkpoint-pickled-module", None, lambda tmp: checkpoint(tmp, MLP), ifv.CheckpointError, "weights_only=False"),
    ("checkpoint-torchscript", None, lambda tmp: torchscript_checkpoint(tmp), ifv.CheckpointError, "TorchScript"),
    ("checkpoint-other-width", caller_model, "wider_checkpoint", ifv.CheckpointError, "left unchanged"),
    ("checkpoint-into-non-module", None, lambda tmp: ifv.load_checkpoint(ifv.save_checkpoint(MLP, tmp / "m.pt"),
                                                                          MLP_STATE), TypeError, "nn.Module"),
    # off the main path: repair and activation features given a batch the model cannot run
    ("repair-wrong-shape-batch", caller_model, lambda m: ifv.repair(ifv.prune(m, X[:1], 0.5), m, X3), ValueError,
     "cannot run the batch of shape (4, 3, 8, 8)"),
    ("repair-single-sample", caller_model, lambda m: ifv.repair(ifv.prune(m, X[:1], 0.5), m, X[0]), ValueError,
     "add the batch dimension"),
    ("repair-repair-mode-wrong-shape", caller_model,
     lambda m: ifv.repair(ifv.prune(m, X[:1], 0.5), m, X3, mode="repair"), ValueError, "could not run the model"),
    ("repair-not-a-result", caller_model, lambda m: ifv.repair("res", m, X), TypeError, "PruneResult"),
    ("features-activation-wrong-shape", caller_model,
     lambda m: ifv.prune(m, X[:1], 0.5, features=ifv.activation_features(X3)), ValueError, "cannot run the batch"),
    ("features-activation-single-sample", caller_model,
     lambda m: ifv.prune(m, X[:1], 0.5, features=ifv.activation_features(X[0])), ValueError,
     "add the batch dimension"),
    # figure helpers given the wrong object
    ("figure-plan-heatmap-given-result", caller_model, lambda m: ifv.figures.plan_heatmap(ifv.prune(m, X[:1], 0.5)),
     TypeError, "plan_heatmap(res, group=KEY)"),
    ("figure-plan-heatmap-given-model", caller_model, lambda m: ifv.figures.plan_heatmap(m), TypeError,
     "res.groups[i]"),
    ("figure-similarity-given-model", caller_model, lambda m: ifv.figures.similarity_matrix(m), TypeError,
     "res.groups[i]"),
    ("figure-embedding-given-model", caller_model, lambda m: ifv.figures.neuron_embedding(m), TypeError,
     "res.groups[i]"),
    ("figure-merge-gallery-given-pruned-model", caller_model,
     lambda m: (lambda r: ifv.figures.merge_gallery(r.groups[0], r.model))(ifv.prune(m, X[:1], 0.5)), ValueError,
     "pass the original model"),
    ("figure-plan-comparison-given-result", caller_model,
     lambda m: ifv.figures.plan_comparison(ifv.prune(m, X[:1], 0.5)), TypeError, "list of group records"),
    ("figure-group-map-given-result", caller_model, lambda m: ifv.figures.group_map(ifv.prune(m, X[:1], 0.5)),
     TypeError, "result="),
    # transport helpers: zero masses, indices out of range
    ("transport-zero-source-mass", None, lambda m: ifv.transport_plan(COST, ZEROS4, UNIFORM2), ValueError,
     "source masses are all zero"),
    ("transport-zero-target-mass", None, lambda m: ifv.transport_plan(COST, UNIFORM4, ZEROS2), ValueError,
     "target masses are all zero"),
    ("transport-kept-out-of-range", None, lambda m: ifv.transport_plan(COST, UNIFORM4, UNIFORM2,
                                                                        kept=torch.tensor([0, 9])),
     ValueError, "in [0, 4)"),
    ("transport-selection-out-of-range", None, lambda m: ifv.selection_plan(4, torch.tensor([0, 7])), ValueError,
     "in [0, 4)"),
    ("transport-selection-negative", None, lambda m: ifv.selection_plan(4, torch.tensor([-1, 2])), ValueError,
     "in [0, 4)"),
    ("transport-cost-kept-repeated", None, lambda m: ifv.cost_matrix(FEATS, torch.tensor([1, 1])), ValueError,
     "repeated"),
    ("transport-cost-features-none", None, lambda m: ifv.cost_matrix(None, torch.tensor([0])), TypeError,
     "channel_features"),
    ("transport-masses-wrong-length", None, lambda m: ifv.masses("importance", UNIFORM2, 4), ValueError,
     "4 finite scores"),
    ("transport-merge-all-zero-plan", None, lambda m: ifv.merge_matrices(torch.zeros(4, 2)), ValueError, "all zeros"),
    # data loaders given None
    ("data-make-loader-none", None, lambda m: ifv.data.make_loader(None, 4), TypeError, "got None"),
    ("data-mnist-root-none", None, lambda m: ifv.data.mnist_test_split(None), TypeError, "needs a folder"),
    ("data-cifar-root-none", None, lambda m: ifv.data.cifar_datasets(None), TypeError, "needs a folder"),
    ("data-image-folder-none", None, lambda m: ifv.data.image_folder(None), TypeError, "needs a folder"),
    ("data-torchvision-dataset-none", None, lambda m: ifv.data.torchvision_dataset("cifar10", None), TypeError,
     "needs a folder"),
    ("data-example-batch-none", None, lambda m: ifv.data.example_batch(None), TypeError, "got None"),
    ("data-loader-for-none", None, lambda m: ifv.data.loader_for(None), TypeError, "got None"),
]

_FILE_ROWS = {"mnist_truncated": mnist_truncated, "mnist_not_gzip": mnist_not_gzip,
              "mnist_mismatched": mnist_mismatched}


@pytest.mark.parametrize("row", ROWS, ids=[r[0] for r in ROWS])
def test_bad_input_is_refused_and_changes_nothing(row, tmp_path, monkeypatch):
    _check_row(row, tmp_path, monkeypatch)


PRUNE_ROWS = [r for r in ROWS if r[1] is not None and not isinstance(r[2], str)
              and not r[0].startswith(("inplace-", "checkpoint-", "repair-", "figure-"))]  # those prune successfully


@pytest.mark.parametrize("row", PRUNE_ROWS, ids=[r[0] for r in PRUNE_ROWS])
def test_bad_input_with_inplace_true_changes_nothing(row, tmp_path, monkeypatch):
    """Every row that calls prune, again with inplace=True: the caller's model is still untouched."""
    original, used = ifv.prune, []

    def prune_inplace(*args, **kwargs):
        kwargs.setdefault("inplace", True)
        used.append(kwargs["inplace"])
        return original(*args, **kwargs)
    monkeypatch.setattr(ifv, "prune", prune_inplace)
    _check_row(row, tmp_path, monkeypatch)
    if not used:
        pytest.skip("this row does not call prune")
    assert used == [True]


def _check_row(row, tmp_path, monkeypatch):
    name, make, call, error, phrase = row
    model = make() if make is not None else None
    before, state = observe(model), global_state()
    with pytest.raises(error) as info:
        if isinstance(call, str):  # rows that need a folder
            _FILE_ROWS[call](tmp_path) if call in _FILE_ROWS else wider_checkpoint(tmp_path, model)
        elif name.startswith("checkpoint"):
            call(tmp_path)
        elif call.__code__.co_argcount == 2:  # injected failures
            call(model, monkeypatch)
        else:
            call(model)
    assert phrase in str(info.value), f"message lacks {phrase!r}: {info.value}"
    monkeypatch.undo()
    assert_unchanged(model, before)
    now = global_state()
    assert torch.equal(now[0], state[0]) and now[1:] == state[1:], "global torch state changed"
    if model is not None and hasattr(model, "calls"):  # the caller's hook still fires
        n = len(model.calls)
        with torch.no_grad():
            model(X.to(next(model.parameters()).dtype))
        assert len(model.calls) == n + 1


def test_table_covers_every_class():
    """The issue's classes of bad input, each with at least one row (and inplace rows for each failure path)."""
    names = [r[0] for r in ROWS]
    for prefix in ["dtype-", "shape-", "tracer-", "taylor-", "features-", "groups-", "config-", "importance-",
                   "torchscript-", "mnist-", "checkpoint-", "repair-", "figure-", "transport-", "data-",
                   "inplace-solver", "inplace-merge", "inplace-taylor", "inplace-cut"]:
        assert any(n.startswith(prefix) for n in names), prefix


def test_injected_failures_really_happen_after_changes_started(monkeypatch):
    """The injected merge failure does fire after the first group was merged (so the restore is exercised)."""
    model = caller_model()
    seen = []
    original = _prune.apply_merge

    def spy(work, group, *args, **kwargs):
        seen.append((work is model, group.index, work[0].out_channels))
        return original(work, group, *args, **kwargs)
    monkeypatch.setattr(_prune, "apply_merge", fail_on_call(2)(spy))
    with pytest.raises(RuntimeError, match="injected"):
        ifv.prune(model, X[:1], 0.5, inplace=True, config=ifv.OTConfig())  # Intra-Fusion's surgery
    assert seen == [(True, 0, 6)]  # the first group of the caller's model was merged, then it failed
    assert model[0].out_channels == 6 and model[0].weight.shape[0] == 6
