"""A literal, loop-by-loop implementation of the official WIDER FACE evaluation, kept only to test the
vectorised evaluator against and to time it side by side (scripts/bench_widerface.py)."""

from __future__ import annotations

import numpy as np


def _overlaps(pred, gt):
    """The official tool computes this part in Cython; numpy broadcasting stands in for it here."""
    iw = np.minimum(pred[:, None, 2], gt[None, :, 2]) - np.maximum(pred[:, None, 0], gt[None, :, 0]) + 1
    ih = np.minimum(pred[:, None, 3], gt[None, :, 3]) - np.maximum(pred[:, None, 1], gt[None, :, 1]) + 1
    ua = ((pred[:, 2] - pred[:, 0] + 1) * (pred[:, 3] - pred[:, 1] + 1))[:, None] + \
        ((gt[:, 2] - gt[:, 0] + 1) * (gt[:, 3] - gt[:, 1] + 1))[None, :] - iw * ih
    ok = (iw > 0) & (ih > 0)
    return np.divide(iw * ih, ua, out=np.zeros(iw.shape), where=ok)


def _image_eval(pred, gt, keep, iou_thresh):
    pred = pred.copy()
    gt = gt.copy()
    pred[:, 2:4] += pred[:, 0:2]
    gt[:, 2:4] += gt[:, 0:2]
    ov = _overlaps(pred[:, :4], gt)
    recall_list = np.zeros(len(gt))
    proposal_list = np.ones(len(pred))
    pred_recall = np.zeros(len(pred))
    for h in range(len(pred)):
        m = ov[h].argmax()
        if ov[h, m] >= iou_thresh:
            if keep[m] == 0:
                recall_list[m] = -1
                proposal_list[h] = -1
            elif recall_list[m] == 0:
                recall_list[m] = 1
        pred_recall[h] = (recall_list == 1).sum()
    return pred_recall, proposal_list


def evaluate_reference(preds, gt, iou_thresh=0.5, thresh_num=1000):
    """``preds``: {(event, name): [k, 5]} raw scores; ``gt``: WiderGroundTruth. Returns {setting: ap}."""
    lo, hi = 1.0, 0.0
    for d in preds.values():
        if len(d):
            lo, hi = min(lo, d[:, 4].min()), max(hi, d[:, 4].max())
    norm = {}
    for k, d in preds.items():
        d = d.copy()
        if len(d):
            d[:, 4] = (d[:, 4] - lo) / (hi - lo) if hi > lo else 1.0
        norm[k] = d[np.argsort(-d[:, 4], kind="stable")]
    aps = {}
    for setting, lists in gt.settings.items():
        pr = np.zeros((thresh_num, 2))
        count = 0
        for i in range(len(gt)):
            keep_idx = lists[i]
            count += len(keep_idx)
            d = norm.get((gt.events[i], gt.names[i]), np.zeros((0, 5)))
            g = gt.boxes[i]
            if len(g) == 0 or len(d) == 0:
                continue
            keep = np.zeros(len(g))
            keep[keep_idx] = 1
            pred_recall, proposal_list = _image_eval(d, g, keep, iou_thresh)
            for t in range(thresh_num):
                thresh = 1 - (t + 1) / thresh_num
                idx = np.where(d[:, 4] >= thresh)[0]
                if len(idx):
                    r = idx[-1]
                    pr[t, 0] += (proposal_list[: r + 1] == 1).sum()
                    pr[t, 1] += pred_recall[r]
        with np.errstate(invalid="ignore", divide="ignore"):
            precision = pr[:, 1] / pr[:, 0]
        recall = pr[:, 1] / count
        mrec = np.concatenate(([0.0], recall, [1.0]))
        mpre = np.concatenate(([0.0], precision, [0.0]))
        for j in range(mpre.size - 1, 0, -1):
            mpre[j - 1] = np.maximum(mpre[j - 1], mpre[j])
        idx = np.where(mrec[1:] != mrec[:-1])[0]
        aps[setting] = float(np.sum((mrec[idx + 1] - mrec[idx]) * mpre[idx + 1]))
    return aps
