"""Command line: prune your own checkpoint, list its groups, write and re-write reports, run the demo.

``intrafusion-viz prune model.pt --arch torchvision:resnet18 --arch-args num_classes=10 --sparsity 0.5
--data my_images/ --input-size 224`` writes a pruned checkpoint and an HTML report.

This module imports nothing heavy (no torch): ``--help`` answers at once; every subcommand imports
what it needs when it runs (``_demo.py``, ``_model.py`` (architectures, checkpoints, data),
``_prune.py`` (the pipeline), ``_report.py`` (the HTML page)).
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

__all__ = ["main", "build_parser", "run_demo", "format_table", "format_html_table", "write_report",
           "load_pruned"]

# Kept in step with intrafusion_viz.IMPORTANCES / METHODS / REPAIR_MODES (tests/test_cli.py checks it):
# importing them here would import torch and make --help slow.
IMPORTANCES = ("l1", "l2", "taylor", "lamp", "random")
METHODS = ("intra-fusion", "default", "fold")
CONFIGS = ("default", "paper", "data-free", "capped")
REPAIRS = ("auto", "none", "data-free", "synthetic", "bn", "repair")

_LAZY = {"run_demo": "_demo", "format_table": "_demo", "format_html_table": "_demo", "write_report": "_demo",
         "load_pruned": "_model", "DEFAULT_CALL": "_demo"}


def __getattr__(name):
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _sparsity(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"sparsity must be a number in [0, 1), got {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"sparsity must be in [0, 1), got {text}")
    return value


def _sparsity_item(text: str):
    """``0.5`` (every group) or ``GROUP=0.5`` (a group by index, name or paper label ``G3``)."""
    if "=" not in text:
        return (None, _sparsity(text))
    key, value = text.rsplit("=", 1)
    if not key:
        raise argparse.ArgumentTypeError(f"expected GROUP=SPARSITY, got {text!r}")
    return (int(key) if key.lstrip("-").isdigit() else key, _sparsity(value))


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text}")
    return value


def _floats(text: str):
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers such as 0.485,0.456,0.406, "
                                         f"got {text!r}") from None


def _add_model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("checkpoint", help="the model file: a state dict saved with torch.save(model.state_dict()), "
                                      "a whole model saved with torch.save(model) (needs --trust-pickle), or a "
                                      "file written by intrafusion_viz.save_checkpoint or by this command")
    g.add_argument("--arch", metavar="SPEC",
                   help="the architecture the state dict belongs to: torchvision:NAME (e.g. torchvision:resnet18), "
                        "timm:NAME (when timm is installed) or package.module:Class (your own, importable from "
                        "the current folder); not needed for a whole model or a checkpoint written by prune")
    g.add_argument("--arch-args", nargs="+", default=[], metavar="ARG",
                   help="arguments for the architecture: a JSON object ('{\"num_classes\": 10}') and/or "
                        "KEY=VALUE items (num_classes=10 width=32); values are read as JSON when they parse")
    g.add_argument("--trust-pickle", action="store_true",
                   help="allow a whole pickled model (torch.load(weights_only=False)): loading it runs code "
                        "from the file, so only for files you trust")
    g.add_argument("--input-size", type=_positive_int, default=None, metavar="PX",
                   help="side of the square input the model expects (default 224, or the dataset's own size "
                        "for a torchvision dataset)")
    g.add_argument("--channels", type=int, choices=(1, 3), default=None,
                   help="input channels: 1 (grayscale) or 3 (RGB); default 3, or the dataset's own")
    g.add_argument("--device", default="cpu", help="where to run: cpu, cuda, cuda:1, mps (default cpu)")
    g.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_data_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data (optional: for accuracy before/after, repair and Taylor importance)")
    g.add_argument("--data", metavar="SOURCE",
                   help="an image folder (one sub-folder per class) or torchvision:NAME (cifar10, cifar100, "
                        "mnist, fashion-mnist, svhn, ...); default: no data (no accuracy, data-free steps only)")
    g.add_argument("--data-root", default="data", metavar="DIR",
                   help="where a torchvision dataset's files are (default ./data)")
    g.add_argument("--download", action="store_true",
                   help="download the torchvision dataset into --data-root when it is missing (needs internet)")
    g.add_argument("--train-split", action="store_true",
                   help="use the torchvision dataset's training split (default: its test split)")
    g.add_argument("--mean", type=_floats, default=None, metavar="M[,M,M]",
                   help="per-channel input mean the model was trained with (default ImageNet's, or the "
                        "dataset's own)")
    g.add_argument("--std", type=_floats, default=None, metavar="S[,S,S]",
                   help="per-channel input std the model was trained with (default ImageNet's, or the "
                        "dataset's own)")
    g.add_argument("--eval-samples", type=_positive_int, default=2000, metavar="N",
                   help="evaluate accuracy on the first N samples (default 2000)")
    g.add_argument("--batch-size", type=_positive_int, default=64, metavar="N",
                   help="evaluation batch size (default 64)")
    g.add_argument("--repair-samples", type=_positive_int, default=256, metavar="N",
                   help="random samples for repair and Taylor importance (default 256)")
    g.add_argument("--seed", type=int, default=0, help="seed for the example input, samples and random choices")


def _add_prune_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("pruning")
    g.add_argument("--sparsity", type=_sparsity_item, nargs="+", default=[(None, 0.5)], metavar="S|GROUP=S",
                   help="fraction of channels to remove: one value for every group (0.5), and/or per group "
                        "GROUP=S with GROUP an index, a layer name or a paper label (layer1.0.conv1=0.3 G1=0.7); "
                        "with only per-group values, only those groups are pruned (default 0.5)")
    g.add_argument("--method", choices=METHODS, default=None,
                   help="intra-fusion: merge every channel into the kept ones along a transport plan; "
                        "default: drop the least important channels; fold: Model Folding's k-means clusters "
                        "(default: with neither --method nor --config, the library's default call "
                        "ifv.prune(model, x, s), the best measured without data: see docs/defaults.md)")
    g.add_argument("--importance", choices=IMPORTANCES, default="l1",
                   help="how channels are scored (taylor needs --data) (default l1)")
    g.add_argument("--config", choices=CONFIGS, default=None,
                   help="transport settings: default (OTConfig()), paper (the authors' code: OTConfig.paper()), "
                        "data-free (OTConfig.data_free()), capped (Intra-Fusion with capacities: "
                        "OTConfig.capped()) (default: the method's own)")
    g.add_argument("--repair", choices=REPAIRS, default="auto",
                   help="statistics repair after merging: bn (re-estimate BatchNorm statistics) and repair "
                        "(REPAIR) need --data; data-free and synthetic (BatchNorm statistics re-estimated on "
                        "inputs synthesised from the model's own BatchNorm statistics) need none; auto: what "
                        "the method and config call for (default auto)")
    g.add_argument("--on-unmergeable", choices=("skip", "raise", "default"), default="skip",
                   help="a group whose channels cannot be merged: skip it (listed in the report), raise, or "
                        "prune it by dropping channels (default skip)")


def _add_output_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("output")
    g.add_argument("--out", default="pruned.pt", metavar="FILE",
                   help="the pruned checkpoint (default pruned.pt); reload it with "
                        "intrafusion_viz.cli.load_pruned(FILE) or `intrafusion-viz prune FILE ...`")
    g.add_argument("--report", default=None, metavar="FILE",
                   help="the HTML report (default: the checkpoint's name with .html)")
    g.add_argument("--max-plans", type=int, default=4, metavar="N",
                   help="transport plans drawn in the report, the largest groups first (default 4; 0: none)")


def build_parser() -> argparse.ArgumentParser:
    """The ``intrafusion-viz`` argument parser (every option with its help)."""
    parser = argparse.ArgumentParser(prog="intrafusion-viz", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    prune = sub.add_parser("prune", help="prune a checkpoint: writes a pruned checkpoint and an HTML report",
                           description="Prune a checkpoint: writes a pruned checkpoint and an HTML report "
                                       "(groups, kept channels and plans, accuracy before/after with --data, "
                                       "parameters and MACs, the figures).")
    _add_model_options(prune)
    _add_prune_options(prune)
    _add_data_options(prune)
    _add_output_options(prune)

    groups = sub.add_parser("groups", help="list a model's coupled channel groups",
                            description="List a model's coupled channel groups (what prune would prune).")
    _add_model_options(groups)
    groups.add_argument("--members", action="store_true", help="also list every layer of each group")

    report = sub.add_parser("report", help="write the HTML report of an existing prune result again",
                            description="Write the HTML report of a checkpoint written by `intrafusion-viz prune` "
                                        "(the result is stored in it).")
    report.add_argument("result", help="a checkpoint written by `intrafusion-viz prune`")
    report.add_argument("--report", default=None, metavar="FILE",
                        help="the HTML file (default: the checkpoint's name with .html)")
    report.add_argument("--max-plans", type=int, default=4, metavar="N",
                        help="transport plans drawn, the largest groups first (default 4; 0: none)")

    demo = sub.add_parser("demo", help="train on digits, prune at several sparsities, write an HTML report",
                          description="Train a small CNN on scikit-learn's digits (offline), prune it at several "
                                      "sparsities with every method and write an HTML report.")
    demo.add_argument("--sparsities", type=_sparsity, nargs="+", default=[0.3, 0.4, 0.5, 0.6, 0.7],
                      help="sparsities to prune at, each in [0, 1)")
    demo.add_argument("--epochs", type=int, default=15, help="training epochs")
    demo.add_argument("--seed", type=int, default=0, help="seed of the data split, initialisation and training")
    demo.add_argument("--importance", default="l1", choices=IMPORTANCES, help="channel importance")
    demo.add_argument("--out", default="reports/demo.html", help="the HTML report")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; returns the exit status (0 on success, 1 on a refused input)."""
    args = build_parser().parse_args(argv)
    from importlib import import_module

    module = {"demo": "_demo", "prune": "_prune", "groups": "_prune", "report": "_report"}[args.command]
    runner = import_module(f".{module}", __name__)
    from ._model import user_errors

    try:
        return getattr(runner, "run" if args.command != "groups" else "run_groups")(args)
    except user_errors() as err:
        print(f"intrafusion-viz {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
