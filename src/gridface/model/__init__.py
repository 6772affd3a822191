"""The network: a backbone at output stride 16 (a ``network=`` choice) and the GridBox head."""

from gridface.model.backbone import BACKBONES, Backbone
from gridface.model.detector import GridBoxNet
from gridface.model.head import GridBoxHead

__all__ = ["BACKBONES", "Backbone", "GridBoxHead", "GridBoxNet"]
