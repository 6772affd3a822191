"""Data: label parsers (WIDER FACE, KITTI, COCO), synthetic faces, letterbox + augmentation, datamodule."""
