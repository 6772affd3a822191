"""Run a model (any backend) over a dataset split: detections and ground truth in original image coordinates,
for ``gridface.evaluate`` and ``gridface.prune`` alike."""

from __future__ import annotations

import logging

from torch.utils.data import DataLoader
from tqdm import tqdm

from gridface.data.dataset import DetectionDataset, collate
from gridface.evaluation.metrics import image_record
from gridface.inference.backends import ModelBackend
from gridface.postprocess import GridBoxDecoder

log = logging.getLogger(__name__)


def predict_dataset(backend: ModelBackend, samples: list, decoder: GridBoxDecoder, batch_size: int = 8,
                    num_workers: int = 1, skips: dict[str, dict] | None = None) -> tuple[list, list, list[str]]:
    """Run the model over samples; detections and ground truth in original image coordinates. Unusable images
    are skipped (and recorded in ``skips``: path -> kind and where listed)."""
    ds = DetectionDataset(samples, backend.input_hw, None, None, "eval")
    loader = DataLoader(ds, batch_size=batch_size, num_workers=num_workers, collate_fn=collate)
    dets, gts, paths, skipped = [], [], [], 0
    for batch in tqdm(loader, desc=f"evaluating {backend.path.name}", unit="batch"):
        skipped += batch["skipped"]
        if skips is not None:
            skips.update({k["path"]: k for k in batch["skips"]})
        if "image" not in batch:
            continue
        cov, bbox = backend.run(batch["image"].numpy())
        for det, lb, gb, gl, gi, p in zip(decoder(cov, bbox, backend.input_hw), batch["letterbox"], batch["gt_boxes"],
                                          batch["gt_labels"], batch["gt_ignore"], batch["path"], strict=True):
            d, g = image_record(det, lb, gb, gl, gi, decoder.min_height)
            dets.append(d)
            gts.append(g)
            paths.append(p)
    if skipped:
        log.warning("%d unreadable images were skipped (see the warnings above for their paths)", skipped)
    return dets, gts, paths
