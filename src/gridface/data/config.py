"""The data a model was trained on travels with it: stored in the checkpoint (``hyper_parameters.data``) and in
the metadata of every export, so prune, export and evaluate work on the same data unless ``dataset=`` says
otherwise.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from gridface.data.images import IMAGE_SUFFIXES
from gridface.data.problems import DataProblems
from gridface.data.sample import Sample

# dataset.decode: where a batch is decoded, letterboxed, augmented and encoded (gridface.data.datamodule)
DECODE_CHOICES = ("cpu", "gpu", "hybrid")
# dataset.prefetch: where a device path builds batches on a CUDA device (gridface.data.prefetch)
PREFETCH_CHOICES = ("stream", "thread")

# keys of a source config that name files or folders (synthetic data is generated, so its root may be new)
PATH_KEYS = ("root", "image_dir", "label_dir", "annotation_file", "image_root", "gt_file")


def as_plain(node: Any) -> dict[str, Any]:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)


def training_data_config(dataset: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    """The dataset config as stored in a checkpoint: resolved, relative paths made absolute."""
    data = as_plain(dataset)
    for split in ("train", "val"):
        src = data.get(split)
        if isinstance(src, dict):
            for key in PATH_KEYS:
                if isinstance(src.get(key), str):
                    src[key] = str(Path(src[key]).expanduser().absolute())
    if isinstance(data.get("root"), str):
        data["root"] = str(Path(data["root"]).expanduser().absolute())
    return data


def stage_data_config(dataset: DictConfig | Mapping[str, Any] | None, model_data: Mapping[str, Any] | None,
                      model_path: str | Path, splits: Sequence[str] = ("val",)) -> tuple[dict[str, Any], str]:
    """The data a stage works on and where it came from: ``dataset=`` when given, else the model's own.

    A path of the needed ``splits`` that does not exist on this machine is an error naming the key and path.
    """
    if dataset is not None:
        data, origin = as_plain(dataset), "dataset="
    elif model_data:
        data, origin = dict(model_data), f"the data {model_path} was trained on"
    else:
        raise ValueError(f"{model_path} does not say which data it was trained on (made before gridface stored "
                         "it); give dataset=<synthetic | widerface | kitti | coco> and its keys, e.g. "
                         "dataset=widerface dataset.root=/data/widerface")
    for split in splits:
        src = data.get(split)
        if not isinstance(src, dict) or "_target_" not in src:
            raise ValueError(f"dataset.{split} (from {origin}) is not a data source config")
        if "synthetic" in str(src["_target_"]):
            continue
        for key in PATH_KEYS:
            value = src.get(key)
            if isinstance(value, str) and not Path(value).expanduser().exists():
                raise FileNotFoundError(
                    f"dataset.{split}.{key} = '{value}' (from {origin}) does not exist on this machine; give "
                    f"dataset={data.get('name', '<name>')} dataset.root=<where that data is here>")
    return data, origin


def split_samples(data: Mapping[str, Any], split: str, problems: DataProblems | None = None) -> list[Sample]:
    """The samples of one split; label problems are reported into ``problems`` (a fresh, logging one if None)."""
    if split not in data:
        raise ValueError(f"dataset has no split '{split}' (it has {[k for k in ('train', 'val') if k in data]})")
    if problems is None:
        problems = DataProblems(strict=bool(data.get("strict", False)))
    return instantiate(data[split])(problems=problems)


def calibration_images(data: Mapping[str, Any] | None, count: int, seed: int = 0, folder: str | None = None
                       ) -> tuple[list[Path], dict[str, Any]]:
    """INT8 calibration images: ``count`` drawn at random (seeded) across the training split, so every event or
    scene of a sorted dataset is represented, or from ``folder`` (recursively). Also a record for the metadata."""
    if folder:
        root = Path(folder).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"export.calibration.folder = '{folder}' is not a folder")
        pool = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        source = f"folder {root}"
    else:
        if data is None:
            raise ValueError("INT8 calibration needs the training data or export.calibration.folder=<images>")
        pool = [s.image for s in split_samples(data, "train")]
        source = f"train split of {data.get('name', 'the dataset')}"
    if not pool:
        raise ValueError(f"INT8 calibration: no images in the {source}")
    chosen = sorted(random.Random(seed).sample(range(len(pool)), min(count, len(pool))))
    images = [Path(pool[i]) for i in chosen]
    return images, {"source": source, "seed": seed, "drawn": len(images), "from": len(pool)}
