"""Evaluate a model pruned in one group without recomputing what comes before the group.

Pruning one group changes only the group's layers; every module that finishes before the group's
first layer starts computes exactly what it computed in the original model.  :class:`PrefixEvaluator`
records, once per (model, evaluation batch, group), the outputs of those modules that are still
needed when the group's first layer runs (found by weak references: a tensor nobody holds any more
cannot be used later) and the input of that first layer; evaluating a pruned model then replaces
those modules' ``forward`` by the recorded outputs (dead ones by a shared placeholder) for the time of
one forward pass, so only the rest of the network runs.

The shortcut is checked once per group on the original model (its logits must equal a full forward
pass); where it does not hold (a module called twice, a non-tensor output, state kept outside modules)
the evaluator falls back to the full forward pass, so results are always those of ``ifv.accuracy``.
"""
from __future__ import annotations

import time
import weakref
from typing import Dict, Optional

import torch
from torch import nn

__all__ = ["PrefixEvaluator"]


class _Plan:
    """What one group's shortcut needs: module names to stub and, per chunk, their outputs."""

    def __init__(self, first: str, stubs: Dict[str, object], first_args: list, outputs: list):
        self.first = first          # name of the group's first module in call order
        self.stubs = stubs          # name -> ("alive", idx) or ("dead", (shape, dtype, device))
        self.first_args = first_args  # per chunk: the args of the first module
        self.outputs = outputs      # per chunk: {name: tensor} of alive stubbed modules
        self.sliceable = False      # a subset of the batch may be replayed (every tensor has the batch first)
        self.expand = True          # dead outputs as one expanded zero (no memory); False: real zero tensors


class PrefixEvaluator:
    """Accuracy of one-group prunes of ``model`` on a fixed batch, reusing the unchanged prefix.

    Parameters
    ----------
    model : nn.Module
        The original model (read only; evaluated in eval mode, modes restored).
    x, y : Tensor
        The evaluation batch, shapes ``(B, ...)`` and ``(B,)``.
    chunk : int
        Samples per forward pass (memory bound).

    Attributes
    ----------
    original_accuracy : float
        Accuracy (%) of ``model`` on the batch.
    shortcut : dict
        Per group key, whether the shortcut is used (``False``: full forward passes).
    seconds_per_sample : dict
        Per group key, the measured time of evaluating one sample of the original model from the
        group on (the whole network where the shortcut is off); dashboards size a quick first
        evaluation on a subset of the batch with it.
    """

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk: int = 1024):
        self.model = model
        self.chunk = int(chunk)
        device = _device_of(model)
        self.chunks = [(x[i:i + self.chunk].to(device), y[i:i + self.chunk].to(device))
                       for i in range(0, len(y), self.chunk)]
        self.n = len(y)
        self._plans: Dict[object, Optional[_Plan]] = {}
        self.shortcut: Dict[object, bool] = {}
        self.seconds_per_sample: Dict[object, float] = {}
        self._verified = set()
        start = time.perf_counter()
        with _eval_mode(model), torch.no_grad():
            self._logits = [model(xb) for xb, _ in self.chunks]
        self._full_seconds_per_sample = (time.perf_counter() - start) / max(self.n, 1)
        self.original_accuracy = self._score(self._logits)

    # -- public --------------------------------------------------------------------------------
    def accuracy(self, pruned: nn.Module, key, member_names, samples: Optional[int] = None) -> float:
        """Accuracy (%) of ``pruned`` (``model`` with only ``member_names`` changed) on the batch.

        Parameters
        ----------
        pruned : nn.Module
            The pruned model; its module names must be those of the original.
        key : hashable
            Identifies the group (e.g. its index); the prefix is recorded once per key.
        member_names : iterable of str
            Module names of the group's layers (``Group.members[i].name``).
        samples : int, optional
            Evaluate only the first ``samples`` samples of the batch (default: all of them).
        """
        self.prepare(key, member_names)
        plan = self._plans[key]
        samples = self._samples(samples)
        if plan is not None and key not in self._verified:  # once per group: prune changes only its members
            if not _prefix_unchanged(self.model, pruned, plan):
                plan = self._plans[key] = None
                self.shortcut[key] = False
            self._verified.add(key)
        if plan is None or (samples < self.n and not plan.sliceable):
            with _eval_mode(pruned), torch.no_grad():
                return self._score([pruned(xb[:m]) for (xb, _), m in zip(self.chunks, self._counts(samples))
                                    if m], samples)
        return self._score(self._replay(pruned, plan, samples), samples)

    def original_accuracy_on(self, samples: Optional[int] = None) -> float:
        """Accuracy (%) of the original model on the first ``samples`` samples of the batch."""
        samples = self._samples(samples)
        return self._score([logits[:m] for logits, m in zip(self._logits, self._counts(samples)) if m], samples)

    def prepare(self, key, member_names) -> None:
        """Record the prefix of group ``key`` (done by the first :meth:`accuracy` call otherwise)."""
        if key not in self._plans:
            self._plans[key] = self._record(list(member_names), key)
            self.shortcut[key] = self._plans[key] is not None
            self.seconds_per_sample.setdefault(key, self._full_seconds_per_sample)

    # -- internals -----------------------------------------------------------------------------
    def _samples(self, samples: Optional[int]) -> int:
        if samples is None:
            return self.n
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
            raise ValueError(f"samples must be a positive int or None, got {samples!r}")
        return min(samples, self.n)

    def _counts(self, samples: int):
        """Samples used from each chunk when only the first ``samples`` count."""
        return [max(0, min(len(yb), samples - i * self.chunk)) for i, (_, yb) in enumerate(self.chunks)]

    def _score(self, logits, samples: Optional[int] = None) -> float:
        samples = self.n if samples is None else samples
        correct = sum(int((out.argmax(1) == yb[:len(out)]).sum()) for out, (_, yb) in zip(logits, self.chunks))
        return 100.0 * correct / max(samples, 1)

    def _record(self, member_names, key=None) -> Optional[_Plan]:
        modules = dict(self.model.named_modules())
        if any(name not in modules for name in member_names):
            return None  # e.g. a bare nn.Parameter in the group: no module to cut at
        members = set(member_names)
        plan = None
        for xb, _ in self.chunks:
            recorded = _record_chunk(self.model, xb, members)
            if recorded is None:
                return None
            first, stubs, args, outputs = recorded
            if plan is None:
                plan = _Plan(first, stubs, [], [])
            elif first != plan.first or set(stubs) != set(plan.stubs):
                return None
            plan.first_args.append(args)
            plan.outputs.append(outputs)
            plan.stubs.update({k: v for k, v in stubs.items() if v[0] == "dead" and k not in plan.stubs})
        if plan is None or not plan.stubs:
            return None  # nothing before the group: the shortcut saves nothing
        # Dead outputs are placeholders nobody reads: an expanded zero costs no memory (a real one of the
        # first layers' output size costs more than the rest of the network); a forward that reshapes
        # them in place (e.g. ``.view``) gets real zeros.
        for plan.expand in (True, False):
            try:
                start = time.perf_counter()
                replayed = self._replay(self.model, plan)
                self.seconds_per_sample[key] = (time.perf_counter() - start) / max(self.n, 1)
            except Exception:
                continue
            if all(torch.equal(a, b) for a, b in zip(replayed, self._logits)):
                break
        else:
            return None
        # A subset replays the first samples of every recorded tensor: right only if each one has the
        # batch first.  Checked on the original (a few samples; kernels may round differently by batch size).
        few = min(self.n, 5)
        plan.sliceable = True
        try:
            head = self._replay(self.model, plan, few)
            plan.sliceable = bool(head) and torch.allclose(head[0], self._logits[0][:few], rtol=1e-4, atol=1e-5)
        except Exception:
            plan.sliceable = False
        return plan

    def _replay(self, model: nn.Module, plan: _Plan, samples: Optional[int] = None):
        modules = dict(model.named_modules())
        placeholders = {}
        logits = []
        counts = self._counts(self.n if samples is None else samples)
        with _eval_mode(model), torch.no_grad():
            for index, (xb, _) in enumerate(self.chunks):
                m = counts[index]
                if not m:
                    break
                whole = m == len(xb)
                outputs, args = plan.outputs[index], plan.first_args[index]
                if not whole:
                    xb = xb[:m]
                    outputs = {name: t[:m] for name, t in outputs.items()}
                    args = [a[:m] if torch.is_tensor(a) and a.dim() else a for a in args]
                patched = []
                try:
                    for name, (kind, info) in plan.stubs.items():
                        if name in outputs:  # needed later: a fresh copy (the rest may work in place)
                            modules[name].forward = _constant(outputs[name], copy=True)
                        else:  # nobody reads it: one shared placeholder of the right shape
                            shape, dtype, device = info
                            if not whole and shape:
                                shape = (m,) + tuple(shape[1:])
                            if (shape, dtype, device) not in placeholders:
                                placeholders[(shape, dtype, device)] = (
                                    torch.zeros((), dtype=dtype, device=device).expand(shape) if plan.expand
                                    else torch.zeros(shape, dtype=dtype, device=device))
                            modules[name].forward = _constant(placeholders[(shape, dtype, device)], copy=False)
                        patched.append(modules[name])
                    hook = modules[plan.first].register_forward_pre_hook(
                        lambda module, inputs, saved=args: tuple(a.clone() if torch.is_tensor(a) else a
                                                                 for a in saved))
                    try:
                        logits.append(model(xb))
                    finally:
                        hook.remove()
                finally:
                    for module in patched:
                        del module.forward
        return logits


def _constant(value, copy: bool):
    def forward(*args, **kwargs):
        return value.clone() if copy else value
    return forward


def _record_chunk(model: nn.Module, xb: torch.Tensor, members: set):
    """One full forward pass with hooks: the stubs, the first member's args and the alive outputs."""
    names = {module: name for name, module in model.named_modules()}
    calls: Dict[str, int] = {}
    ended: list = []           # names in the order their call finished
    refs: Dict[str, tuple] = {}  # name -> (weakref of output, shape, dtype, device)
    state = {"cut": None}
    handles = []

    def pre(module, inputs):
        name = names[module]
        calls[name] = calls.get(name, 0) + 1
        if state["cut"] is None and name in members:
            alive = {}
            for done in ended:
                ref = refs.get(done)
                tensor = ref[0]() if ref is not None else None
                if tensor is not None:
                    alive[done] = tensor.detach().clone()
            state["cut"] = (name, list(ended), alive,
                            [a.detach().clone() if torch.is_tensor(a) else a for a in inputs])

    def post(module, inputs, output):
        name = names[module]
        if state["cut"] is None:
            ended.append(name)
            refs[name] = ((weakref.ref(output), tuple(output.shape), output.dtype, output.device)
                          if torch.is_tensor(output) else None)

    for module in names:
        handles.append(module.register_forward_pre_hook(pre))
        handles.append(module.register_forward_hook(post))
    try:
        with _eval_mode(model), torch.no_grad():
            model(xb)
    finally:
        for handle in handles:
            handle.remove()
    if state["cut"] is None:
        return None
    first, done, alive, args = state["cut"]
    done_set = set(done)
    # Stub only the outermost finished modules: a finished container's children never run.
    stubs = {}
    for name in done:
        if name == "" or any(p in done_set for p in _ancestors(name)):
            continue
        if calls.get(name, 0) != 1 or refs.get(name) is None:
            return None  # called again later, or a non-tensor output: cannot be replaced by one tensor
        _, shape, dtype, device = refs[name]
        stubs[name] = ("alive", None) if name in alive else ("dead", (shape, dtype, device))
    outputs = {name: alive[name] for name in stubs if name in alive}
    return first, stubs, args, outputs


def _ancestors(name: str):
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _prefix_unchanged(original: nn.Module, pruned: nn.Module, plan: _Plan) -> bool:
    """The stubbed modules of ``pruned`` hold the same parameters and buffers as the original's."""
    before, after = dict(original.named_modules()), dict(pruned.named_modules())
    for name in plan.stubs:
        if name not in after:
            return False
        a, b = before[name].state_dict(), after[name].state_dict()
        if a.keys() != b.keys() or any(a[k].shape != b[k].shape or not torch.equal(a[k], b[k]) for k in a):
            return False
    return True


def _device_of(model: nn.Module):
    for tensor in list(model.parameters()) + list(model.buffers()):
        return tensor.device
    return torch.device("cpu")


class _eval_mode:
    """Every module in eval mode inside the block; each module's own mode restored after."""

    def __init__(self, model: nn.Module):
        self.model = model

    def __enter__(self):
        self.modes = [(m, m.training) for m in self.model.modules()]
        self.model.eval()

    def __exit__(self, *exc):
        for module, mode in self.modes:
            module.training = mode
        return False
