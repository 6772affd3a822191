"""Dataset sources named in config (``_target_``): each returns ``list[Sample]`` for one split."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from gridface.data.parsers import read_coco, read_kitti, read_widerface_txt
from gridface.data.problems import DataProblems
from gridface.data.sample import Sample
from gridface.data.synthetic import SyntheticSpec, generate

WIDER_HINT = (
    "Get WIDER FACE from its official site (http://shuoyang1213.me/WIDERFACE/): WIDER_train.zip, "
    "WIDER_val.zip and wider_face_split.zip, and unzip all three into one folder so that it holds "
    "WIDER_train/images/<event>/*.jpg, WIDER_val/images/<event>/*.jpg and "
    "wider_face_split/wider_face_{train,val}_bbx_gt.txt. Then pass dataset.root=<that folder>."
)


def synthetic(root: str, num_images: int, seed: int, width: int, height: int, problems: DataProblems | None = None,
              **spec) -> list[Sample]:
    """Generate (once, cached under ``root``) and read a synthetic split."""
    folder = generate(root, SyntheticSpec(num_images=num_images, seed=seed, width=width, height=height, **spec))
    return read_kitti(folder / "images", folder / "labels", class_names=("face",), problems=problems)


def widerface(root: str | None, split: str = "train", min_size: float = 0.0, keep_invalid: bool = False,
              gt_file: str | None = None, image_dir: str | None = None, problems: DataProblems | None = None
              ) -> list[Sample]:
    """WIDER FACE in its official layout under ``root``; ``gt_file``/``image_dir`` point elsewhere
    (a subset in the same text layout)."""
    if split not in ("train", "val"):
        raise ValueError(f"dataset split must be 'train' or 'val', got '{split}'")
    if not root and not (gt_file and image_dir):
        raise FileNotFoundError(f"dataset.root is not set. {WIDER_HINT}")
    base = Path(root or ".").expanduser()
    gt = Path(gt_file) if gt_file else base / "wider_face_split" / f"wider_face_{split}_bbx_gt.txt"
    images = Path(image_dir) if image_dir else base / f"WIDER_{split}" / "images"
    for p in (gt, images):
        if not p.exists():
            raise FileNotFoundError(f"WIDER FACE: '{p}' not found. {WIDER_HINT}")
    return read_widerface_txt(gt, images, min_size=min_size, keep_invalid=keep_invalid, problems=problems)


def kitti(image_dir: str, label_dir: str, class_names: list[str] | tuple[str, ...] = ("face",),
          class_map: Mapping[str, str] | None = None, problems: DataProblems | None = None) -> list[Sample]:
    return read_kitti(image_dir, label_dir, class_map=dict(class_map) if class_map else None,
                      class_names=tuple(class_names), problems=problems)


def coco(annotation_file: str, image_root: str, class_names: list[str] | tuple[str, ...] = ("face",),
         problems: DataProblems | None = None) -> list[Sample]:
    return read_coco(annotation_file, image_root, class_names=tuple(class_names), problems=problems)
