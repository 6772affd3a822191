"""The network: a ResNet18 backbone at output stride 16 and the GridBox head."""

from gridface.model.backbone import ResNet18Stride16
from gridface.model.detector import GridBoxNet
from gridface.model.head import GridBoxHead

__all__ = ["GridBoxHead", "GridBoxNet", "ResNet18Stride16"]
