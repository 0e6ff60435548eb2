"""The command line's inputs: architectures by name, checkpoints of every kind, data, pruned checkpoints back.

Examples
--------
>>> parse_arch_args(['{"num_classes": 10}', "width=[4, 8]", "name=small"])
{'num_classes': 10, 'width': [4, 8], 'name': 'small'}
>>> type(build_arch("intrafusion_viz.models:SmallCNN", {"width": [4, 8]})).__name__
'SmallCNN'
"""
from __future__ import annotations

import json
from importlib import import_module
from pathlib import Path
from typing import Optional, Sequence, Tuple

import torch
import torch.nn as nn

__all__ = ["UserError", "user_errors", "parse_arch_args", "build_arch", "load_model", "load_pruned",
           "resize_to_state", "open_dataset", "example_input"]


class UserError(ValueError):
    """An input the command line refuses, with what to do instead (printed without a traceback)."""


def user_errors() -> tuple:
    """The exceptions the command line reports as a one-line error (exit status 1)."""
    from ..evaluation._train import CheckpointError
    from ..groups import TracerError, UnsupportedLayerError

    return (UserError, CheckpointError, FileNotFoundError, TracerError, UnsupportedLayerError)


def parse_arch_args(items: Sequence[str]) -> dict:
    """``['{"num_classes": 10}', 'width=32']`` -> ``{"num_classes": 10, "width": 32}`` (values as JSON when they parse)."""
    kwargs = {}
    for item in items:
        item = item.strip()
        if item.startswith("{"):
            try:
                value = json.loads(item)
            except json.JSONDecodeError as err:
                raise UserError(f"--arch-args {item!r} is not valid JSON ({err})") from err
            if not isinstance(value, dict):
                raise UserError(f"--arch-args JSON must be an object such as '{{\"num_classes\": 10}}', got {item!r}")
            kwargs.update(value)
            continue
        if "=" not in item:
            raise UserError(f"--arch-args items are KEY=VALUE or a JSON object, got {item!r}")
        key, text = item.split("=", 1)
        try:
            kwargs[key.strip()] = json.loads(text)
        except json.JSONDecodeError:
            kwargs[key.strip()] = text
    return kwargs


def build_arch(spec: str, kwargs: Optional[dict] = None) -> nn.Module:
    """An untrained model from ``torchvision:NAME``, ``timm:NAME`` or ``package.module:Class``.

    ``kwargs`` go to the constructor (``num_classes=10``); torchvision and timm models are built
    without pretrained weights (the checkpoint brings them).
    """
    kwargs = dict(kwargs or {})
    if not isinstance(spec, str) or ":" not in spec:
        raise UserError(f"--arch must look like torchvision:resnet18, timm:NAME or package.module:Class; got {spec!r}")
    source, name = spec.split(":", 1)
    if source == "torchvision":
        try:
            import torchvision
        except ImportError as err:
            raise UserError("torchvision:... architectures need torchvision: pip install torchvision") from err
        if name not in torchvision.models.list_models():
            raise UserError(f"torchvision has no model {name!r}; see torchvision.models.list_models()")
        return _call(spec, lambda: torchvision.models.get_model(name, weights=None, **kwargs))
    if source == "timm":
        try:
            import timm
        except ImportError as err:
            raise UserError("timm:... architectures need timm: pip install timm") from err
        return _call(spec, lambda: timm.create_model(name, pretrained=False, **kwargs))
    try:
        module = import_module(source)
    except ImportError as err:
        raise UserError(f"cannot import {source!r} for --arch {spec} ({err}); run from the folder that holds it "
                        "or add it to PYTHONPATH") from err
    target = module
    for part in name.split("."):
        if not hasattr(target, part):
            raise UserError(f"{source} has no {name!r} (for --arch {spec})")
        target = getattr(target, part)
    model = _call(spec, lambda: target(**kwargs))
    if not isinstance(model, nn.Module):
        raise UserError(f"--arch {spec} built a {type(model).__name__}, not an nn.Module")
    return model


def _call(spec, build):
    try:
        return build()
    except TypeError as err:
        raise UserError(f"--arch {spec} did not accept its arguments ({err}); check --arch-args") from err


def resize_to_state(model: nn.Module, state: dict) -> nn.Module:
    """Give ``model``'s layers the shapes of ``state`` (a pruned model's weights), in place.

    Every parameter or buffer whose shape differs is replaced by an empty one of the stored shape and
    the layer's size attributes (``out_channels``, ``in_features``, ``num_features``, ...) follow, so
    ``load_state_dict(state)`` then fits.  Layers of other types keep their attributes as they are.
    """
    modules = dict(model.named_modules())
    for key, value in state.items():
        owner, _, leaf = key.rpartition(".")
        module = modules.get(owner)
        if module is None:
            continue
        current = module._parameters.get(leaf) if leaf in module._parameters else module._buffers.get(leaf)
        if current is None and leaf in module._parameters:  # e.g. a conv bias that merging added
            module._parameters[leaf] = nn.Parameter(torch.empty(value.shape, dtype=value.dtype))
            continue
        if current is None or current.shape == value.shape:
            continue
        fresh = torch.empty(value.shape, dtype=current.dtype, device=current.device)
        if leaf in module._parameters:
            module._parameters[leaf] = nn.Parameter(fresh, requires_grad=current.requires_grad)
        else:
            module._buffers[leaf] = fresh
        _update_sizes(module)
    return model


def _update_sizes(module: nn.Module) -> None:
    if isinstance(module, nn.modules.conv._ConvNd):
        out_c, in_per_group = module.weight.shape[:2]
        if module.transposed:
            out_c, in_per_group = module.weight.shape[1] * module.groups, module.weight.shape[0]
        if module.groups > 1 and module.groups == module.in_channels == module.out_channels:
            module.groups = out_c  # depthwise stays depthwise
        module.out_channels = out_c
        module.in_channels = in_per_group * (module.groups if not module.transposed else 1)
    elif isinstance(module, nn.Linear):
        module.out_features, module.in_features = module.weight.shape
    elif isinstance(module, nn.modules.batchnorm._NormBase):
        module.num_features = (module.weight if module.weight is not None else module.running_mean).shape[0]
    elif isinstance(module, nn.LayerNorm) and module.weight is not None:
        module.normalized_shape = tuple(module.weight.shape)
    elif isinstance(module, nn.GroupNorm) and module.weight is not None:
        module.num_channels = module.weight.shape[0]


def _fits(state: dict, model: nn.Module, spec: str, args: dict, path: Path) -> nn.Module:
    from ..evaluation._train import _mismatches

    problems = _mismatches(state, model)
    if problems:
        hint = ""
        last = [k for k in state if k.endswith("weight")]
        if last and last[-1] in model.state_dict() and state[last[-1]].shape[0] != model.state_dict()[last[-1]].shape[0]:
            hint = f" The last layer has {state[last[-1]].shape[0]} outputs: try --arch-args num_classes={state[last[-1]].shape[0]}."
        raise UserError(f"'{path}' does not fit --arch {spec} {args or ''}: {'; '.join(problems)}.{hint}")
    model.load_state_dict(state, strict=True)
    return model


def load_model(path, arch: Optional[str] = None, arch_args: Optional[dict] = None,
               trust_pickle: bool = False) -> Tuple[nn.Module, dict]:
    """A model from a checkpoint file, and what is known about it.

    Returns
    -------
    model : nn.Module
        In eval mode, on CPU.
    info : dict
        ``arch`` (spec or None), ``arch_args``, ``format`` (``"state dict"``, ``"whole model"``,
        ``"pruned by intrafusion-viz"``, ``"intrafusion_viz checkpoint"``), ``meta``.
    """
    from ..evaluation._train import load_checkpoint

    path = Path(path)
    state, meta = load_checkpoint(path, weights_only=not trust_pickle)
    arch_args = dict(arch_args or {})
    if isinstance(state, nn.Module):
        return state.cpu().eval(), dict(arch=arch, arch_args=arch_args, format="whole model", meta={})
    stored = meta.get("cli") if isinstance(meta, dict) else None
    if stored and arch is None:  # written by `intrafusion-viz prune`: rebuild, then take the pruned shapes
        model = build_arch(stored["arch"], stored.get("arch_args", {}))
        resize_to_state(model, state)
        model = _fits(state, model, stored["arch"], stored.get("arch_args", {}), path)
        return model.eval(), dict(arch=stored["arch"], arch_args=stored.get("arch_args", {}),
                                  format="pruned by intrafusion-viz", meta=meta)
    if arch is None:
        arch = meta.get("arch") if isinstance(meta, dict) and ":" in str(meta.get("arch", "")) else None
    if arch is None:
        raise UserError(f"'{path}' holds a state dict (weights only): name its architecture with --arch, e.g. "
                        "--arch torchvision:resnet18 --arch-args num_classes=10, or --arch mypackage.models:MyNet")
    model = build_arch(arch, arch_args)
    model = _fits(state, model, arch, arch_args, path)
    kind = "intrafusion_viz checkpoint" if meta else "state dict"
    return model.eval(), dict(arch=arch, arch_args=arch_args, format=kind, meta=meta)


def load_pruned(path, device: str = "cpu") -> nn.Module:
    """The pruned model a ``intrafusion-viz prune`` checkpoint holds (rebuilt from its architecture and shapes).

    Safe to load: only weights and plain values are read (``weights_only=True``).
    """
    model, info = load_model(path)
    if info["format"] != "pruned by intrafusion-viz":
        raise UserError(f"'{path}' was not written by `intrafusion-viz prune`")
    return model.to(device)


def _stats(values, default):
    return tuple(values) if values is not None else default


def open_dataset(source: Optional[str], root: str = "data", download: bool = False, train: bool = False,
                 input_size: Optional[int] = None, channels: Optional[int] = None, mean=None, std=None):
    """``(dataset, description, input_size, channels)`` for ``--data`` (``None``: no data)."""
    from ..data import _folders

    if source is None:
        return None, "none", input_size or 224, channels or 3
    if source.startswith("torchvision:"):
        name = source.split(":", 1)[1]
        key = name.lower().replace("-", "").replace("_", "")
        if key not in _folders.TORCHVISION_DATASETS:
            raise UserError(f"unknown torchvision dataset {name!r}; choose one of "
                            f"{', '.join(_folders.TORCHVISION_DATASETS)}, or give an image folder")
        _, native_channels, native_size, _, _ = _folders.TORCHVISION_DATASETS[key]
        dataset = _folders.torchvision_dataset(name, root, train=train, download=download, input_size=input_size,
                                               mean=mean, std=std, channels=channels)
        split = "train" if train else "test"
        return dataset, f"{name} ({split} split, {len(dataset)} images)", input_size or native_size, \
            channels or native_channels
    if source.count(":") == 1 and not Path(source).exists() and len(source.split(":")[0]) > 1:
        raise UserError(f"--data {source!r}: no such folder; for a torchvision dataset write torchvision:NAME")
    size, ch = input_size or 224, channels or 3
    dataset = _folders.image_folder(source, input_size=size, channels=ch,
                                    mean=_stats(mean, _folders.IMAGENET_MEAN[:ch] if ch == 3 else (0.5,)),
                                    std=_stats(std, _folders.IMAGENET_STD[:ch] if ch == 3 else (0.5,)))
    return dataset, f"image folder {source} ({len(dataset)} images, {len(dataset.classes)} classes)", size, ch


def example_input(channels: int, size: int, seed: int = 0, device="cpu") -> torch.Tensor:
    """A seeded random input of shape ``(1, channels, size, size)`` (the global RNG untouched)."""
    generator = torch.Generator().manual_seed(int(seed))
    return torch.randn(1, channels, size, size, generator=generator).to(device)
