"""gridface: GridBox (DetectNet_v2) face detection with PyTorch Lightning and Hydra."""

import os as _os

from gridface.version import __version__ as __version__

# albumentations checks online for updates on import; this machine (and most clusters) are offline.
_os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def __getattr__(name: str):
    """``from gridface import Detector`` without importing torch for every ``import gridface``."""
    if name == "Detector":
        from gridface.inference.detector import Detector

        return Detector
    raise AttributeError(f"module 'gridface' has no attribute '{name}'")
