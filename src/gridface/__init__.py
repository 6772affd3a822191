"""gridface: GridBox (DetectNet_v2) face detection with PyTorch Lightning and Hydra."""

import os as _os

# albumentations checks online for updates on import; this machine (and most clusters) are offline.
_os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"
