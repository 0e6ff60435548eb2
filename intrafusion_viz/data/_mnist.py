"""torchvision's MNIST, relaxed to need only the files of the split it loads.

Kept in its own module because it subclasses a torchvision class: importing
torchvision here (instead of in :mod:`intrafusion_viz.data`) keeps
``import intrafusion_viz.data`` light, while the class still lives at a
module-level name so that datasets pickle into DataLoader worker processes.
"""

from __future__ import annotations

import os

from torchvision.datasets import MNIST

__all__ = ["MNIST_FILES", "SplitMNIST"]

#: Uncompressed file names torchvision reads for each split (``train`` flag -> (images, labels)).
MNIST_FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


class SplitMNIST(MNIST):
    """``torchvision.datasets.MNIST`` that only requires the requested split's files.

    torchvision refuses to load the test split unless the training files are
    present too; this subclass checks just ``MNIST_FILES[train]`` under
    ``<root>/MNIST/raw/`` and otherwise uses torchvision's own reading code.
    """

    @property
    def raw_folder(self) -> str:
        return os.path.join(self.root, "MNIST", "raw")

    @property
    def processed_folder(self) -> str:
        return os.path.join(self.root, "MNIST", "processed")

    def _check_exists(self) -> bool:
        return all(os.path.isfile(os.path.join(self.raw_folder, name)) for name in MNIST_FILES[self.train])
