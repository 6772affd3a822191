"""The GPU data path (dataset.decode=gpu), on CPU tensors: the same pixels and targets as the CPU path, the same
handling of bad files, augmentation within its configured ranges, and a training run through the real config. The
``gpu``-marked test runs the equality check with nvJPEG on CUDA."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from gridface.data import device_decode
from gridface.data.datamodule import GridBoxDataModule
from gridface.data.dataset import DetectionDataset, collate
from gridface.data.device_augment import DeviceAugment, letterbox_batch
from gridface.data.device_batch import DeviceBatchBuilder, boxes_of
from gridface.data.device_decode import EncodedDataset, collate_encoded, decode_images, read_encoded
from gridface.data.images import read_image_rgb
from gridface.data.parsers import read_kitti
from gridface.data.sample import Sample
from gridface.data.sources import widerface
from gridface.data.synthetic import SyntheticSpec, generate
from gridface.loss import GridBoxLoss
from gridface.model import GridBoxNet
from gridface.targets import GridBoxTargetEncoder
from gridface.targets_torch import encode_batch
from gridface.train import run
from gridface.utils.hydra import config_dir

from .helpers import TINY, compose_train

HW = (160, 256)
TARGETS = ("cov", "cov_norm", "bbox", "ignore")


def cpu_and_device(samples: list[Sample], input_hw, device="cpu", min_box_size=2.0, encoder=None, decode="gpu"):
    """The CPU path's batch and the device path's batch (``decode`` gpu or hybrid) of the same samples (no
    augmentation)."""
    encoder = encoder or GridBoxTargetEncoder()
    cpu = DetectionDataset(samples, input_hw, encoder, None, "test", min_box_size=min_box_size)
    ref = collate([cpu[i] for i in range(len(samples))])
    ds = EncodedDataset(samples, "test", letterbox_hw=input_hw if decode == "hybrid" else None)
    raw = collate_encoded([ds[i] for i in range(len(samples))], encoder.num_classes)
    raw = {k: v.to(device) if torch.is_tensor(v) else v for k, v in raw.items()}  # what Lightning's transfer does
    out = DeviceBatchBuilder(input_hw, encoder, None, min_box_size)(raw)
    return ref, out


def assert_same_as_cpu_path(ref, out, pixel_max: float | None, per_image_mean: float | None = 1 / 255):
    assert out["path"] == ref["path"]
    diff = (out["image"].cpu() - ref["image"]).abs()
    per_image = diff.mean(dim=(1, 2, 3))
    if per_image_mean is not None:
        assert per_image.max() < per_image_mean, per_image * 255
    if pixel_max is not None:
        assert diff.max() <= pixel_max + 1e-5, diff.max() * 255
    for key in TARGETS:
        assert torch.equal(out[key].cpu(), ref[key]), key
    assert int(out["clipped"]) == ref["clipped"]
    assert out["skipped"] == ref["skipped"]
    for a, b in zip(out["letterbox"], ref["letterbox"], strict=True):
        assert a == b
    for key in ("gt_boxes", "gt_labels", "gt_ignore"):
        for a, b in zip(out[key], ref[key], strict=True):
            np.testing.assert_array_equal(a, b)
    return per_image


def mini_val_samples(shared_data: Path) -> list[Sample]:
    m = shared_data / "widerface" / "mini_val"
    return widerface(None, "val", min_size=4.0, gt_file=str(m / "wider_face_val_bbx_gt.txt"),
                     image_dir=str(m / "images"))


def pick_real(samples: list[Sample], n: int) -> list[Sample]:
    """A few real images, including the one large enough to be area-averaged (scale < 0.5 into 736x416)."""
    def scale(s: Sample) -> float:
        h, w = read_image_rgb(s.image).shape[:2]
        return min(736 / w, 416 / h)

    smallest = min(samples, key=scale)
    return [smallest, *[s for s in samples if s is not smallest][: n - 1]]


def synthetic_samples(tmp_path: Path) -> list[Sample]:
    """Synthetic JPEGs of another size than the input (letterbox up), a PNG, a grayscale JPEG, a tiny image
    (area-averaged down), and boxes outside the image (clipped and counted)."""
    root = generate(tmp_path / "syn", SyntheticSpec(num_images=4, seed=3, width=300, height=150))
    samples = read_kitti(root / "images", root / "labels", class_names=("face",))
    png = tmp_path / "a.png"
    cv2.imwrite(str(png), cv2.imread(str(samples[0].image)))
    gray = tmp_path / "g.jpg"
    cv2.imwrite(str(gray), cv2.cvtColor(cv2.imread(str(samples[1].image)), cv2.COLOR_BGR2GRAY))
    big = tmp_path / "big.jpg"
    cv2.imwrite(str(big), cv2.resize(cv2.imread(str(samples[2].image)), (1111, 700)))
    return [*samples,
            Sample(png, samples[0].boxes, samples[0].labels),
            Sample(gray, [[-10, 20, 50, 130], [200, 200, 300, 300], [5, 5, 40, 45]], [0, 0, 0], [False, False, True]),
            Sample(big, samples[2].boxes * np.float32(1111 / 300), samples[2].labels)]


# ------------------------------------------------------------------------------------------------ (a) equality
# hybrid: the workers decode and letterbox with the CPU path's own code, so its pixels are the CPU path's exactly
PIXEL_MAX = {"gpu": 1 / 255, "hybrid": 0.0}


@pytest.mark.parametrize(("decode", "where"), [("cpu", "builds every batch in the loader workers"),
                                               ("gpu", "without a CUDA device")])
def test_prefetch_thread_where_it_has_no_effect_is_said_once(caplog, decode, where):
    """dataset.prefetch=thread only changes the device paths on a CUDA device; elsewhere the loader is returned as
    it is, and the user is told so, once (the train and val loaders both pass through), not left to guess."""
    dm = GridBoxDataModule(lambda **_: [], lambda **_: [], GridBoxTargetEncoder(), HW, decode=decode,
                           prefetch="thread")
    loader = [1, 2]
    with caplog.at_level(logging.INFO):
        assert dm.prefetched(loader) is loader and dm.prefetched(loader) is loader
    said = [r.getMessage() for r in caplog.records if "dataset.prefetch=thread has no effect" in r.getMessage()]
    assert len(said) == 1 and where in said[0]
    caplog.clear()
    stream = GridBoxDataModule(lambda **_: [], lambda **_: [], GridBoxTargetEncoder(), HW, decode=decode)
    with caplog.at_level(logging.INFO):
        stream.prefetched(loader)
    assert "dataset.prefetch" not in caplog.text


@pytest.mark.parametrize("decode", ["gpu", "hybrid"])
def test_device_path_equals_cpu_path_on_synthetic_images(tmp_path, decode):
    ref, out = cpu_and_device(synthetic_samples(tmp_path), HW, decode=decode)
    assert out["image"].shape == ref["image"].shape == (7, 3, *HW)
    assert ref["clipped"] == 2 and ref["cov"].sum() > 0 and ref["ignore"].sum() > 0
    assert_same_as_cpu_path(ref, out, pixel_max=PIXEL_MAX[decode])


@pytest.mark.parametrize("decode", ["gpu", "hybrid"])
def test_device_path_equals_cpu_path_on_real_widerface_images(shared_data, decode):
    samples = pick_real(mini_val_samples(shared_data), 4)
    ref, out = cpu_and_device(samples, (416, 736), decode=decode)
    assert out["letterbox"][0].scale < 0.5  # the area-averaged one
    assert sum(len(b) for b in ref["gt_boxes"]) > 50 and ref["ignore"].sum() > 0
    assert_same_as_cpu_path(ref, out, pixel_max=PIXEL_MAX[decode])


def test_exif_orientation_is_applied_as_the_cpu_reader_does(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    base = Image.fromarray(rng.integers(0, 255, (24, 40, 3), np.uint8))
    images, expected = [], []
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        buf = io.BytesIO()
        base.save(buf, "JPEG", exif=exif.tobytes(), quality=95)
        path = tmp_path / f"o{orientation}.jpg"
        path.write_bytes(buf.getvalue())
        images.append(read_encoded(path))
        expected.append(read_image_rgb(path))
    for got, want in zip(decode_images(images, "cpu"), expected, strict=True):
        np.testing.assert_array_equal(got.permute(1, 2, 0).numpy(), want)


# ---------------------------------------------------------------------------------------------- (b) the encoder
def random_boxes(rng, n, hw):
    h, w = hw
    xy = rng.uniform(-0.1, 1.0, (n, 2)) * [w, h]
    size = rng.uniform(0, 1, (n, 2)) ** 3 * [w / 2, h / 2]  # many tiny, some large
    boxes = np.concatenate([xy, xy + size], 1).astype(np.float32)
    if n >= 4:
        boxes[1] = boxes[0]  # identical boxes
        boxes[3, 3] = boxes[2, 3]  # a tie in the drawing order
        boxes[3, 2] = boxes[3, 0] + 0.3  # thinner than a pixel
    return boxes


@pytest.mark.parametrize("encoder", [
    GridBoxTargetEncoder(),
    GridBoxTargetEncoder(num_classes=3, bbox_min_radius=2.0, cov_radius_x=0.8, cov_center_y=0.4, deadzone_radius=0.5),
], ids=["tao", "three_classes"])
def test_torch_encoder_equals_numpy_encoder(encoder):
    rng = np.random.default_rng(7)
    hw = (256, 416)
    counts = [0, 1, 3, 12, 60, 250, 5]
    per = []
    for i, n in enumerate(counts):
        boxes = random_boxes(rng, n, hw)
        labels = rng.integers(0, encoder.num_classes, n)
        ignore = np.ones(n, bool) if i == 6 else rng.random(n) < 0.25  # one image with only ignored boxes
        per.append((boxes, labels, ignore))
    want = [encoder(b, lab, hw, ignore=g) for b, lab, g in per]
    got = encode_batch(encoder, torch.from_numpy(np.concatenate([p[0] for p in per])),
                       torch.from_numpy(np.concatenate([p[1] for p in per])),
                       torch.from_numpy(np.concatenate([p[2] for p in per])),
                       torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts)), len(counts), hw)
    for key in TARGETS:
        ref = np.stack([w[key] for w in want])
        assert got[key].dtype == torch.float32 and got[key].shape == ref.shape
        np.testing.assert_array_equal(got[key].numpy(), ref, err_msg=key)
    assert (np.stack([w["cov"] for w in want]) > 0).sum() > 500 and np.stack([w["ignore"] for w in want]).sum() > 20


def test_torch_encoder_masks_and_empty_batches():
    enc = GridBoxTargetEncoder()
    hw = (160, 256)
    boxes = torch.tensor([[10.0, 10, 60, 70], [100, 20, 180, 90], [0, 0, 0, 50]])
    labels, ignore = torch.zeros(3, dtype=torch.long), torch.zeros(3, dtype=torch.bool)
    image = torch.tensor([0, 1, 1])
    valid = torch.tensor([True, False, True])
    got = encode_batch(enc, boxes, labels, ignore, image, 2, hw, valid=valid)
    want = [enc(boxes[:1].numpy(), [0], hw), enc(np.zeros((0, 4)), [], hw)]
    for key in TARGETS:
        np.testing.assert_array_equal(got[key].numpy(), np.stack([w[key] for w in want]))
    empty = encode_batch(enc, torch.zeros((0, 4)), torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.bool),
                         torch.zeros(0, dtype=torch.long), 3, hw)
    assert empty["bbox"].shape == (3, 4, 10, 16) and all(float(v.abs().sum()) == 0 for v in empty.values())


# ----------------------------------------------------------------------------------------------- (c) bad files
@pytest.mark.parametrize("decode", ["gpu", "hybrid"])
def test_truncated_and_corrupt_jpegs_are_reported_and_skipped_and_the_rest_trains(tmp_path, caplog, decode):
    samples = synthetic_samples(tmp_path)[:3]
    data = samples[0].image.read_bytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[: len(data) // 2])  # no end-of-image marker: caught in the worker
    corrupt = tmp_path / "corrupt.jpg"
    bad = bytearray(data)
    sof = bad.find(b"\xff\xc0")
    bad[sof + 4] = 3  # a whole structure, but a sample precision no decoder accepts: fails the batched decode
    corrupt.write_bytes(bytes(bad))
    batch_samples = [samples[0], Sample(cut, [[1, 1, 30, 30]], [0], origin="labels.txt:4"), samples[1],
                     Sample(corrupt, [[1, 1, 30, 30]], [0], origin="labels.txt:9"), samples[2]]
    ds = EncodedDataset(batch_samples, "train", train=True, letterbox_hw=HW if decode == "hybrid" else None)
    builder = DeviceBatchBuilder(HW, GridBoxTargetEncoder(), None, 2.0)
    with caplog.at_level(logging.WARNING):
        batch = builder(collate_encoded([ds[i] for i in range(len(ds))], 1, train=True))
    assert "cut.jpg: truncated" in caplog.text and "listed at labels.txt:4" in caplog.text
    assert "corrupt.jpg: undecodable" in caplog.text and "listed at labels.txt:9" in caplog.text
    assert batch["skipped"] == 2 and [s["kind"] for s in batch["skips"]] == ["truncated", "undecodable"]
    assert [s["origin"] for s in batch["skips"]] == ["labels.txt:4", "labels.txt:9"]
    assert batch["path"] == [str(s.image) for s in samples[:3]] and batch["image"].shape == (3, 3, *HW)
    # the three good images are the CPU path's, box for box
    ref = collate([DetectionDataset(samples[:3], HW, GridBoxTargetEncoder(), None, "t", 2.0)[i] for i in range(3)])
    for key in TARGETS:
        assert torch.equal(batch[key], ref[key]), key
    # and they train: finite loss, gradients
    net = GridBoxNet(num_classes=1)
    losses = GridBoxLoss()(net(batch["image"]), batch)
    losses["loss"].backward()
    assert torch.isfinite(losses["loss"]) and net.head.cov.weight.grad.abs().sum() > 0


def test_an_image_the_device_decoder_refuses_is_decoded_by_the_cpu_reader(tmp_path, monkeypatch, caplog):
    samples = synthetic_samples(tmp_path)[:3]
    refused = samples[1].image.read_bytes()
    real = device_decode._decode_jpeg

    def picky(data, device):  # as nvJPEG refuses some valid files (e.g. CMYK)
        if any(d.numel() == len(refused) and bytes(d.numpy()) == refused for d in data):
            raise RuntimeError("nvjpeg: unsupported")
        return real(data, device)

    monkeypatch.setattr(device_decode, "_decode_jpeg", picky)
    with caplog.at_level(logging.WARNING):
        ref, out = cpu_and_device(samples, HW)
    assert "decoded on the CPU instead" in caplog.text and out["skipped"] == 0
    assert_same_as_cpu_path(ref, out, pixel_max=1 / 255)


def test_an_all_bad_batch_has_no_image_and_only_skips(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff" + b"\x00" * 10)
    gone = tmp_path / "gone.png"
    ds = EncodedDataset([Sample(bad, [], []), Sample(gone, [], [])], "val")
    batch = DeviceBatchBuilder(HW, GridBoxTargetEncoder())(collate_encoded([ds[0], ds[1]], 1))
    assert "image" not in batch and batch["skipped"] == 2
    assert [s["kind"] for s in batch["skips"]] == ["truncated", "missing"]


def test_a_worker_checks_each_jpegs_data_once_and_refuses_a_damaged_one_every_time(tmp_path, monkeypatch):
    """The compressed-data check costs about half a decode: once per file's bytes and worker; a file that failed it
    is never cached as checked, and a file replaced during the run by a damaged copy is checked again and refused
    (it was decoded with grey for its missing part)."""
    good, bad = tmp_path / "good.jpg", tmp_path / "bad.jpg"
    data = cv2.imencode(".jpg", cv2.GaussianBlur(np.random.default_rng(0).integers(0, 255, (120, 160, 3), np.uint8),
                                                 (9, 9), 3))[1].tobytes()
    good.write_bytes(data)
    bad.write_bytes(data[: len(data) // 2] + b"\xff\xd9")
    calls = []
    real = device_decode.check_jpeg_data
    monkeypatch.setattr(device_decode, "check_jpeg_data", lambda d, p: calls.append(p) or real(d, p))
    ds = EncodedDataset([Sample(good, [], []), Sample(bad, [], [])], "train")
    for _ in range(3):
        assert "encoded" in ds[0] and ds[1]["skip"]["kind"] == "corrupt"
    assert calls == [good, bad, bad, bad]
    good.write_bytes(bad.read_bytes())
    assert ds[0]["skip"]["kind"] == "corrupt" and calls[-1] == good



def _few_open_files(_: int) -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_NOFILE, (128, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))


def test_a_worker_ships_a_batch_of_many_images_within_a_small_open_file_limit(tmp_path):
    """A loader worker shares each tensor of a batch through a shared-memory file of its own: a batch of images as
    one tensor each ran a worker out of file descriptors at batch 512 under the common ``ulimit -n`` of 1024, and
    torch's loader then waited forever. The batch's images travel as one buffer: 300 images under a limit of 128
    (``timeout``: the old way fails here instead of hanging)."""
    from torch.utils.data import DataLoader

    data = cv2.imencode(".jpg", np.full((16, 24, 3), 90, np.uint8))[1].tobytes()
    samples = []
    for i in range(300):
        (tmp_path / f"{i}.jpg").write_bytes(data)
        samples.append(Sample(tmp_path / f"{i}.jpg", [[2.0, 2.0, 12.0, 12.0]], [0]))
    samples.append(Sample(tmp_path / "gone.jpg", [], []))
    loader = DataLoader(EncodedDataset(samples, "train"), batch_size=len(samples), num_workers=1, timeout=60,
                        collate_fn=collate_encoded, worker_init_fn=_few_open_files)
    batch = next(iter(loader))
    assert len(batch["host"]) == 300 and batch["skipped"] == 1
    images = batch["host"].images
    assert all(im.kind == device_decode.JPEG and bytes(im.data.numpy()) == data for im in images)
    built = DeviceBatchBuilder((16, 32), GridBoxTargetEncoder())(batch)
    assert built["image"].shape == (300, 3, 16, 32)


# ----------------------------------------------------------------------------------------------- (d) augmenting
def tao_augment() -> dict:
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=["augment=tao"])
    return instantiate(cfg.augment, _convert_="all")


def test_augment_config_maps_to_the_device_path_and_refuses_what_it_cannot_do():
    spec = DeviceAugment.from_transforms(tao_augment())
    assert spec == DeviceAugment(flip_p=0.5, affine_p=1.0, scale=(0.7, 1.8), translate_x=(-12, 12),
                                 translate_y=(-12, 12), color_p=1.0, brightness=(1.0, 1.0), contrast=(0.9, 1.1),
                                 saturation=(0.8, 1.2), hue=(-0.0694, 0.0694))
    assert spec.color_ops == ("contrast", "saturation", "hue")
    assert DeviceAugment.from_transforms({"flip": None}) is None and DeviceAugment.from_transforms(None) is None
    with pytest.raises(ValueError, match=r"augment\.blur \(Blur\)"):
        DeviceAugment.from_transforms({"flip": A.HorizontalFlip(), "blur": A.Blur()})
    with pytest.raises(ValueError, match=r"augment\.zoom \(Affine\): rotate"):
        DeviceAugment.from_transforms({"zoom": A.Affine(scale=(0.9, 1.1), rotate=(-5, 5), keep_ratio=True)})
    with pytest.raises(ValueError, match=r"augment\.zoom \(Affine\).*keep_ratio"):
        DeviceAugment.from_transforms({"zoom": A.Affine(scale=(0.9, 1.1))})
    with pytest.raises(ValueError, match=r"augment\.blur"):  # at datamodule construction, before any data
        GridBoxDataModule(lambda **_: [], lambda **_: [], GridBoxTargetEncoder(), HW, augment={"blur": A.Blur()},
                          decode="gpu")
    with pytest.raises(ValueError, match="dataset.decode = 'nvjpeg'"):
        GridBoxDataModule(lambda **_: [], lambda **_: [], GridBoxTargetEncoder(), HW, decode="nvjpeg")


def test_sampled_augmentation_parameters_lie_in_their_configured_ranges():
    spec = DeviceAugment.from_transforms(tao_augment())
    p = spec.sample(4000, torch.Generator().manual_seed(0))
    assert 0.46 < p.flip.float().mean() < 0.54
    assert p.scale.min() >= 0.7 and p.scale.max() <= 1.8 and p.scale.max() - p.scale.min() > 1.0
    for t in (p.tx, p.ty):
        assert t.min() == -12 and t.max() == 12 and torch.equal(t, t.round())
    assert (p.brightness == 1).all()
    for name, (lo, hi) in (("contrast", (0.9, 1.1)), ("saturation", (0.8, 1.2)), ("hue", (-0.0694, 0.0694))):
        v = getattr(p, name)
        assert v.min() >= lo - 1e-6 and v.max() <= hi + 1e-6 and v.max() - v.min() > 0.9 * (hi - lo), name
    assert sorted(p.color_order) == ["contrast", "hue", "saturation"]
    off = DeviceAugment(flip_p=0.5, affine_p=0.0, scale=(0.7, 1.8), translate_x=(-12, 12)).sample(50)
    assert (off.scale == 1).all() and (off.tx == 0).all()


def white_boxes_image(path: Path, boxes, size=(160, 256)):
    img = np.zeros((*size, 3), np.uint8)
    for x1, y1, x2, y2 in boxes:
        img[y1:y2, x1:x2] = 255
    cv2.imwrite(str(path), img)  # PNG: exact pixels, so the box edges are sharp
    return Sample(path, boxes, [0] * len(boxes))


def test_augmented_boxes_follow_the_pixels(tmp_path):
    sample = white_boxes_image(tmp_path / "w.png", [[20, 30, 80, 90], [150, 60, 230, 140], [120, 10, 122, 12]])
    flip_only = DeviceBatchBuilder(HW, GridBoxTargetEncoder(), DeviceAugment(flip_p=1.0), 4.0)
    ds = EncodedDataset([sample], "train", train=True)
    batch = flip_only(collate_encoded([ds[0]], 1, train=True))
    boxes, _, ignore = boxes_of(batch, 0)
    np.testing.assert_allclose(boxes, [[176, 30, 236, 90], [26, 60, 106, 140], [134, 10, 136, 12]])  # 256 - x
    assert ignore.tolist() == [False, False, True]  # the 2-px box is under min_box_size: ignored, not dropped
    assert batch["augment"].flip.all() and "gt_boxes" not in batch  # training batches: boxes as trained on

    geo = DeviceAugment(flip_p=0.5, affine_p=1.0, scale=(0.7, 1.8), translate_x=(-12, 12), translate_y=(-12, 12))
    builder = DeviceBatchBuilder(HW, GridBoxTargetEncoder(), geo, 2.0)
    torch.manual_seed(0)
    batch = builder(collate_encoded([ds[0]] * 12, 1, train=True))
    p = batch["augment"]
    assert p.flip.any() and not p.flip.all() and p.scale.min() < 0.9 and p.scale.max() > 1.4
    dropped = 0
    for i in range(12):
        img = batch["image"][i].mean(0)
        boxes, _, ignore = boxes_of(batch, i)
        dropped += 3 - len(boxes)
        covered = torch.zeros_like(img, dtype=torch.bool)
        for (x1, y1, x2, y2), ign in zip(boxes, ignore, strict=True):
            xs, ys = slice(int(np.ceil(x1)) + 1, int(x2) - 1), slice(int(np.ceil(y1)) + 1, int(y2) - 1)
            if not ign and xs.stop > xs.start and ys.stop > ys.start:
                assert img[ys, xs].min() > 0.99, (i, boxes)  # inside every box: white
            covered[max(0, int(y1) - 1): int(np.ceil(y2)) + 1, max(0, int(x1) - 1): int(np.ceil(x2)) + 1] = True
        assert img[~covered].max() < 0.01, i  # outside all boxes: black (no white left without its box)
        # targets follow the same boxes
        cov = batch["cov"][i, 0]
        assert (cov > 0).any() == bool((~ignore).any())
    assert dropped < 12  # the tiny box is dropped only when zoom and translate push it out


def test_colour_jitter_changes_colours_not_geometry(tmp_path):
    root = generate(tmp_path / "syn", SyntheticSpec(num_images=2, seed=1))
    samples = read_kitti(root / "images", root / "labels", class_names=("face",))
    colour = DeviceAugment(color_p=1.0, contrast=(0.5, 0.5), saturation=(0.0, 0.0), hue=(0.25, 0.25))
    ref, _ = cpu_and_device(samples, HW)
    ds = EncodedDataset(samples, "train", train=True)
    batch = DeviceBatchBuilder(HW, GridBoxTargetEncoder(), colour, 2.0)(collate_encoded([ds[0], ds[1]], 1, True))
    img = batch["image"]
    spread = img.std(1)  # saturation 0: grey everywhere, whatever the order
    assert spread.max() < 1e-5 and img.min() >= 0 and img.max() <= 1
    for key in TARGETS:  # no geometric augmentation: the targets of the unaugmented batch
        assert torch.equal(batch[key], ref[key])


# --------------------------------------------------------------------------------------------- (e) a real run
@pytest.mark.parametrize("decode", ["gpu", "hybrid"])
def test_fast_dev_run_with_the_gpu_data_path_on_the_cpu(tmp_path, decode):
    seen: dict[str, dict] = {}

    class Seen(pl.Callback):  # the batches the steps get, after the datamodule's device hook
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            seen["train"] = batch

        def on_validation_batch_start(self, trainer, module, batch, batch_idx, dataloader_idx=0):
            seen["val"] = batch

    cfg = compose_train(tmp_path, [*TINY, "trainer.fast_dev_run=true", f"dataset.decode={decode}"])
    assert cfg.datamodule.decode == decode and cfg.augment.flip is not None  # the built-in run's augmentation
    result = run(cfg, callbacks=[Seen()])
    assert "val/AP50" in result["metrics"] and np.isfinite(result["metrics"]["val/loss"])
    assert result["global_step"] == 1
    assert "augment" in seen["train"] and "augment" not in seen["val"]  # augmented in training only
    assert seen["train"]["image"].shape == (4, 3, 128, 192) and seen["train"]["cov"].shape == (4, 1, 8, 12)
    assert {"letterbox", "gt_boxes", "gt_labels", "gt_ignore", "path", "skips"} <= set(seen["val"])


def test_letterbox_batch_pads_like_the_cpu_path():
    img = torch.full((3, 900, 300), 200, dtype=torch.uint8)
    out, (lb,) = letterbox_batch([img], HW)
    assert out.shape == (1, 3, *HW) and lb.pad_x > 0 and lb.pad_y == 0
    px = int(lb.pad_x)
    assert (out[0, :, :, :px] == 0).all() and torch.allclose(out[0, :, :, px + 2: -px - 2], torch.tensor(200 / 255))


def test_letterbox_batch_groups_sizes_and_keeps_each_image_in_its_place():
    """Images of one size are resized together: interleaved sizes (bilinear and area-averaged ones) land where
    they were, with the pixels and letterbox of the CPU path's per-image letterbox."""
    from gridface.data.transforms import letterbox

    rng = np.random.default_rng(0)
    sizes = [(120, 200), (250, 300), (120, 200), (700, 1024), (120, 200), (250, 300), (700, 1024)]
    images = [torch.from_numpy(rng.integers(0, 256, (3, h, w), dtype=np.uint8)) for h, w in sizes]
    out, boxes = letterbox_batch(images, HW)
    assert out.shape == (len(images), 3, *HW)
    for i, img in enumerate(images):
        one, (lb,) = letterbox_batch([img], HW)
        assert boxes[i] == lb and torch.equal(out[i], one[0]), i
        ref, ref_lb = letterbox(np.ascontiguousarray(img.permute(1, 2, 0).numpy()), HW)
        assert ref_lb == lb
        diff = (out[i] * 255 - torch.from_numpy(ref).permute(2, 0, 1).float()).abs()
        assert diff.max() <= 1 + 1e-3 and diff.mean() < 0.5, (i, diff.max(), diff.mean())
    assert boxes[3].scale < 0.5 < boxes[1].scale  # both resize modes are in the batch


# ------------------------------------------------------------------------------------------------------- CUDA
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (nvJPEG)")
def test_nvjpeg_device_path_equals_cpu_path_on_cuda(tmp_path, shared_data, caplog):
    """nvJPEG is not libjpeg: its pixels differ by a level here and there (more at saturated colour edges, which
    the synthetic faces are full of), so pixels are compared per image on real photos and on average over the
    synthetic ones; the targets are equal exactly."""
    synthetic = synthetic_samples(tmp_path)
    real = mini_val_samples(shared_data)
    ref, out = cpu_and_device([*synthetic, *real], (416, 736), device="cuda")
    assert out["image"].device.type == "cuda" and out["cov"].device.type == "cuda"
    assert_same_as_cpu_path(ref, out, pixel_max=None, per_image_mean=None)
    diff = (out["image"].cpu() - ref["image"]).abs() * 255
    per_image = diff.mean(dim=(1, 2, 3))
    n = len(synthetic)
    print(f"\ncuda vs cpu path, {len(real)} WIDER images: max {diff[n:].max():.0f} levels, mean "
          f"{diff[n:].mean():.4f} levels, worst image mean {per_image[n:].max():.4f} levels; {n} synthetic images: "
          f"mean {diff[:n].mean():.4f}, worst image mean {per_image[:n].max():.4f} levels; targets equal")
    assert per_image[n:].max() < 1 and diff[:n].mean() < 1 and per_image[:n].max() < 3
    # where the difference comes from: the decoders (luma vs chroma of the decoded images, no letterbox)
    images = [read_encoded(s.image) for s in [*synthetic[:4], *real[:6]]]
    for name, sl in (("synthetic", slice(0, 4)), ("WIDER", slice(4, 10))):
        ycc = []
        for gpu, cpu in zip(decode_images(images[sl], "cuda"), decode_images(images[sl], "cpu"), strict=True):
            m = torch.tensor([[0.299, 0.587, 0.114], [-0.1687, -0.3313, 0.5], [0.5, -0.4187, -0.0813]])
            d = torch.einsum("ij,jhw->ihw", m, gpu.cpu().float() - cpu.float()).abs().mean(dim=(1, 2))
            ycc.append(d)
        y, cb, cr = torch.stack(ycc).mean(0).tolist()
        print(f"decode only, nvJPEG vs libjpeg, {name}: mean |dY| {y:.3f}, |dCb| {cb:.3f}, |dCr| {cr:.3f} levels")
    # a bad file in a CUDA batch: found, reported, skipped
    data = synthetic[0].image.read_bytes()  # OpenCV's baseline JPEG: its SOF0 marker is there
    bad = bytearray(data)
    bad[bad.find(b"\xff\xc0") + 4] = 3
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(bytes(bad))
    with caplog.at_level(logging.WARNING):
        _, out = cpu_and_device([real[0], Sample(corrupt, [], [], origin="x.txt:2"), real[1]], (416, 736),
                                device="cuda")
    assert out["skipped"] == 1 and out["image"].shape[0] == 2 and "corrupt.jpg: undecodable" in caplog.text


# ----------------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize("augment", ["tao", "tao_no_zoom", "none"])
def test_every_augment_option_builds_on_the_gpu_path(tmp_path, augment):
    cfg = compose_train(tmp_path, [f"augment={augment}", "dataset.decode=gpu"])
    dm = instantiate(cfg.datamodule, _convert_="all")
    assert dm.decode == "gpu" and dm.augment is None  # no albumentations pipeline on this path
    assert (dm.device_batches.augment is None) == (augment == "none")


def test_bad_decode_value_is_named(tmp_path):
    from gridface.stages.checks import check_stage_config
    from gridface.utils.validate import ConfigError

    with pytest.raises(ConfigError, match="dataset.decode = 'nvjpeg'"):
        check_stage_config(compose_train(tmp_path, ["dataset.decode=nvjpeg"]))


def test_bad_prefetch_value_is_named(tmp_path):
    from gridface.stages.checks import check_stage_config
    from gridface.utils.validate import ConfigError

    with pytest.raises(ConfigError, match="dataset.prefetch = 'threads'"):
        check_stage_config(compose_train(tmp_path, ["dataset.decode=gpu", "dataset.prefetch=threads"]))
    with pytest.raises(ValueError, match="dataset.prefetch = 'threads'"):
        GridBoxDataModule(lambda **_: [], lambda **_: [], GridBoxTargetEncoder(), HW, decode="gpu", prefetch="threads")


@pytest.mark.parametrize("decode", ["gpu", "hybrid"])
def test_the_build_thread_builds_each_batch_off_the_loop_in_fetch_order(tmp_path, decode):
    """dataset.prefetch=thread: fetching gives a PendingBatch at once (its build runs in the build thread, not the
    loop's), and joined, each batch is the one built in place, in the loader's order."""
    import threading

    from gridface.data.prefetch import DevicePrefetchLoader, PendingBatch, join_training_stream

    cfg = compose_train(tmp_path, [*TINY, f"dataset.decode={decode}", "dataset.num_workers=0"])
    dm = instantiate(cfg.datamodule, _convert_="all")
    dm.prepare_data()
    dm.setup("fit")
    loader = dm.train_dataloader()  # no trainer: the plain loader, its epoch fixed
    in_place = [dm.device_batches(b) for b in loader]
    built_in: list[str] = []

    def build(batch):
        built_in.append(threading.current_thread().name)
        return dm.device_batches(batch)

    fetched = list(DevicePrefetchLoader(loader, torch.device("cpu"), build, threaded=True))
    assert all(isinstance(b, PendingBatch) for b in fetched)
    joined = [join_training_stream(b) for b in fetched]
    assert len(joined) == len(in_place) >= 2
    assert all(name.startswith("gridface-batch-build") for name in built_in) and len(built_in) == len(joined)
    for a, b in zip(in_place, joined, strict=True):
        assert a["path"] == b["path"] and "augment" in b
        for key in ("image", *TARGETS):
            assert torch.equal(a[key], b[key]), key


def _builds_in_a_forked_child() -> int:
    from gridface.data import prefetch

    return prefetch.build_thread().submit(lambda: 7).result(timeout=10)


def test_a_forked_child_starts_its_own_build_thread():
    """A loader worker forked after the build thread started has the executor but not its thread: it must not
    wait on it forever."""
    import multiprocessing

    from gridface.data.prefetch import build_thread

    assert build_thread().submit(lambda: 1).result() == 1
    with multiprocessing.get_context("fork").Pool(1) as pool:
        assert pool.apply(_builds_in_a_forked_child) == 7


def test_a_failed_build_raises_in_the_loop_at_its_batch():
    from gridface.data.prefetch import DevicePrefetchLoader, join_training_stream

    def build(batch):
        if batch["n"] == 1:
            raise ValueError("boxes of batch 1 are broken")
        return batch

    fetched = iter(DevicePrefetchLoader([{"n": 0}, {"n": 1}, {"n": 2}], torch.device("cpu"), build, threaded=True))
    assert join_training_stream(next(fetched)) == {"n": 0}
    second, third = next(fetched), next(fetched)
    with pytest.raises(ValueError, match="boxes of batch 1 are broken"):
        join_training_stream(second)
    assert join_training_stream(third) == {"n": 2}  # the build thread goes on


@pytest.mark.parametrize("threaded", [False, True], ids=["stream", "thread"])
def test_a_prefetched_batch_gets_lightnings_input_conversion_after_its_build(threaded):
    """Lightning converts a batch's floats for true-half precisions before its transfer, on the training stream: a
    prefetched batch passes that unchanged (its build may not have ended, on the device or in the build thread),
    and the datamodule converts it when it joins (bf16-true here, on the CPU)."""
    from types import SimpleNamespace

    from pytorch_lightning.plugins.precision import HalfPrecision

    from gridface.data.prefetch import DevicePrefetchLoader

    dm = GridBoxDataModule(lambda **_: [], lambda **_: [], GridBoxTargetEncoder(), HW, decode="gpu", prefetch="thread")
    dm.trainer = SimpleNamespace(precision_plugin=HalfPrecision("bf16-true"))
    pending = next(iter(DevicePrefetchLoader([{"image": torch.rand(2, 3, 4, 4)}], torch.device("cpu"), lambda b: b,
                                             threaded=threaded)))
    assert dm.trainer.precision_plugin.convert_input(pending) is pending  # what Lightning does before the transfer
    assert dm.on_after_batch_transfer(pending, 0)["image"].dtype == torch.bfloat16



@pytest.mark.parametrize("decode", ["gpu", "hybrid"])
@pytest.mark.parametrize("precision", ["bf16-true", "64-true"])
def test_a_batch_built_in_place_gets_lightnings_input_conversion_and_its_boxes_are_not_rounded(tmp_path, decode,
                                                                                               precision):
    """Without a CUDA device a device path's batch is built in on_after_batch_transfer, after Lightning converted
    the raw batch for a true precision: the built image was left float32 (the bf16 / float64 model refused it) and
    the boxes were rounded to bf16 before the targets (0.4 px). Now the targets are the CPU path's, and the image is
    in the precision's dtype."""
    from types import SimpleNamespace

    from pytorch_lightning.plugins.precision import DoublePrecision, HalfPrecision

    image = tmp_path / "a.jpg"
    cv2.imwrite(str(image), np.random.default_rng(0).integers(0, 255, (200, 256, 3), np.uint8))
    samples = [Sample(image, [[101.3, 57.7, 180.9, 140.2], [10.6, 20.2, 60.7, 90.9]], [0, 0])]
    ref, _ = cpu_and_device(samples, HW, decode=decode)
    plugin = DoublePrecision() if precision == "64-true" else HalfPrecision(precision)
    dm = GridBoxDataModule(lambda **_: [], lambda **_: [], GridBoxTargetEncoder(), HW, decode=decode)
    dm.trainer = SimpleNamespace(precision_plugin=plugin)
    ds = EncodedDataset(samples, "test", letterbox_hw=HW if decode == "hybrid" else None)
    raw = plugin.convert_input(collate_encoded([ds[0]], 1))  # what Lightning's loop does before the transfer
    built = dm.on_after_batch_transfer(raw, 0)
    assert built["image"].dtype == (torch.float64 if precision == "64-true" else torch.bfloat16)
    for key in ("cov", "bbox", "cov_norm"):
        assert torch.equal(built[key], plugin.convert_input(ref[key])), key


def test_batches_outside_the_trainer_are_built_on_the_gpu_path_too(tmp_path):
    """The prune callback's Taylor criterion iterates the train loader itself: it gets built batches."""
    cfg = compose_train(tmp_path, [*TINY, "dataset.decode=gpu"])
    dm = instantiate(cfg.datamodule, _convert_="all")
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.batches_on(dm.train_dataloader(), "cpu")))
    assert batch["image"].shape == (4, 3, 128, 192) and batch["cov"].shape == (4, 1, 8, 12) and "augment" in batch


@pytest.mark.parametrize("prefetch", ["stream", "thread"])
def test_batches_outside_the_trainer_land_where_asked_from_the_prefetch_loader(tmp_path, monkeypatch, prefetch):
    """On a GPU the train loader is the prefetch wrapper (built on the trainer's device); code reading it outside
    the loops (pruning's Taylor criterion, QAT's calibration) still gets each batch joined and on its own device.
    Here the trainer's device is the CPU and the batches are asked for on ``meta``."""
    monkeypatch.setattr(GridBoxDataModule, "cuda_device", property(lambda self: torch.device("cpu")))
    cfg = compose_train(tmp_path, [*TINY, "dataset.decode=gpu", f"dataset.prefetch={prefetch}"])
    dm = instantiate(cfg.datamodule, _convert_="all")
    dm.prepare_data()
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert loader.threaded == (prefetch == "thread")
    batch = next(iter(dm.batches_on(loader, "meta")))
    assert batch["image"].device.type == "meta" and batch["cov"].shape == (4, 1, 8, 12)


def test_prune_callback_taylor_criterion_reads_built_batches(tmp_path):
    from types import SimpleNamespace

    from gridface.module import GridBoxModule
    from gridface.pruning.callback import PruneCallback

    dm = instantiate(compose_train(tmp_path, [*TINY, "dataset.decode=gpu"]).datamodule, _convert_="all")
    dm.prepare_data()
    dm.setup("fit")
    module = GridBoxModule(input_size=(128, 192))
    PruneCallback({"mode": "ratio", "ratio": 0.5, "criterion": "taylor", "taylor_batches": 1}).setup(
        SimpleNamespace(world_size=1, datamodule=dm), module, "fit")
    assert module.net.backbone.out_channels == 256


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (side streams)")
@pytest.mark.parametrize("threaded", [False, True], ids=["stream", "thread"])
@pytest.mark.parametrize("decode", ["gpu", "hybrid"])
def test_batches_built_on_the_side_stream_equal_batches_built_in_place_on_cuda(tmp_path, decode, threaded):
    """DevicePrefetchLoader builds batch n+1 on its own stream (from the loop's thread or the build thread) while
    step n runs; after the training stream joins it, each batch (augmented: drawn from the batch's keys) is the one
    built in place on the training stream."""
    from lightning_fabric.utilities.apply_func import move_data_to_device

    from gridface.data.prefetch import DevicePrefetchLoader, join_training_stream

    cfg = compose_train(tmp_path, [*TINY, f"dataset.decode={decode}", "dataset.num_workers=0"])
    dm = instantiate(cfg.datamodule, _convert_="all")
    dm.prepare_data()
    dm.setup("fit")
    loader = dm.train_dataloader()  # no trainer: the plain loader, its epoch fixed
    cuda = torch.device("cuda")
    in_place = [dm.device_batches(move_data_to_device(b, cuda)) for b in loader]
    prefetched = DevicePrefetchLoader(loader, cuda, dm.device_batches, threaded=threaded)
    assert len(prefetched) == len(loader) and prefetched.sampler is loader.sampler
    side = []
    for b in prefetched:
        b = join_training_stream(b)
        side.append({k: v.clone() if torch.is_tensor(v) else v for k, v in b.items()})  # used on the training stream
    torch.cuda.synchronize()
    assert len(side) == len(in_place) >= 2
    for a, b in zip(in_place, side, strict=True):
        assert a["path"] == b["path"] and "augment" in b
        for key in ("image", *TARGETS):
            assert torch.equal(a[key], b[key]), key
