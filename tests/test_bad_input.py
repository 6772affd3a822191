"""Bad input never becomes silent garbage: a corpus of malformed images and label files, generated here, each
checked for the behaviour a user would see (the error naming file and line, or the reported and counted skip)."""

import io
import json
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from gridface.check_data import run as check_run
from gridface.contract import deployment_metadata
from gridface.data import problems as P
from gridface.data.check import scan_images
from gridface.data.dataset import DetectionDataset, collate
from gridface.data.images import (
    EMPTY,
    MISSING,
    NOT_IMAGE,
    TRUNCATED,
    UNDECODABLE,
    ImageReadError,
    read_image_rgb,
)
from gridface.data.parsers import read_coco, read_kitti, read_widerface_txt
from gridface.data.problems import DataProblems
from gridface.data.sample import LabelError
from gridface.stages.checks import check_dataset, check_postprocess
from gridface.utils.validate import ConfigError, check_writable

from .helpers import compose_config, compose_train

ROOT = Path(__file__).resolve().parents[1]


def photo(h=120, w=160, seed=0):
    """A smooth picture (compresses like a photo, so a cut really removes image data)."""
    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur(rng.integers(0, 255, (h, w, 3), np.uint8), (9, 9), 3)


def encode(img_rgb, ext, **pil_kw):
    if ext in (".jpg", ".png", ".bmp", ".webp", ".tif"):
        if pil_kw:
            buf = io.BytesIO()
            Image.fromarray(img_rgb).save(buf, "JPEG", **pil_kw)
            return buf.getvalue()
        ok, data = cv2.imencode(ext, cv2.cvtColor(img_rgb, cv2.COLOR_RGB2BGR))
        assert ok
        return data.tobytes()
    raise ValueError(ext)


# ------------------------------------------------------------------------------------------------ images
@pytest.mark.parametrize("ext", [".jpg", ".png", ".bmp", ".webp", ".tif"])
def test_whole_image_of_each_format_reads(tmp_path, ext):
    img = photo()
    p = tmp_path / f"a{ext}"
    p.write_bytes(encode(img, ext))
    out = read_image_rgb(p)
    assert out.shape == img.shape and out.dtype == np.uint8


@pytest.mark.parametrize("ext", [".jpg", ".png", ".bmp", ".webp", ".tif"])
@pytest.mark.parametrize("keep", [0.5, 0.95])
def test_truncated_image_of_each_format_is_refused(tmp_path, ext, keep):
    data = encode(photo(), ext)
    p = tmp_path / f"cut{ext}"
    p.write_bytes(data[:int(len(data) * keep)])
    with pytest.raises(ImageReadError) as e:
        read_image_rgb(p)
    # JPEG decoders return grey pixels for the lost part: caught by the structure check, named "truncated"
    assert e.value.kind == (TRUNCATED if ext == ".jpg" else UNDECODABLE)
    assert str(p) in str(e.value)


def test_truncated_progressive_jpeg_and_one_with_an_exif_thumbnail_are_refused(tmp_path):
    """A thumbnail inside the EXIF block has its own end marker: it must not pass for the image's."""
    thumb = Image.fromarray(photo(30, 40, 1))
    exif = Image.Exif()
    exif[0x0112] = 1
    buf = io.BytesIO()
    thumb.save(buf, "JPEG")
    exif_bytes = exif.tobytes()
    whole = {"progressive": encode(photo(), ".jpg", progressive=True, quality=90),
             "exif": encode(photo(), ".jpg", exif=exif_bytes + buf.getvalue(), quality=90)}
    for name, data in whole.items():
        (tmp_path / f"{name}.jpg").write_bytes(data)
        assert read_image_rgb(tmp_path / f"{name}.jpg").shape == (120, 160, 3)
        (tmp_path / f"{name}_cut.jpg").write_bytes(data[: len(data) * 2 // 3])
        with pytest.raises(ImageReadError, match="truncated"):
            read_image_rgb(tmp_path / f"{name}_cut.jpg")


def damaged_jpegs() -> dict[str, bytes]:
    """JPEGs whole in structure (an end marker after the scan) but damaged inside, the way broken copies and tools
    leave them: cut in half with the end marker put back; a third of the compressed data zeroed."""
    data = encode(photo(240, 320), ".jpg")
    middle = bytearray(data)
    middle[len(data) // 3: 2 * len(data) // 3] = bytes(len(data) // 3)
    return {"cut_with_end_marker": data[: len(data) // 2] + b"\xff\xd9", "zeroed_middle": bytes(middle)}


@pytest.mark.parametrize("damage", ["cut_with_end_marker", "zeroed_middle"])
def test_a_damaged_jpeg_with_its_end_marker_is_refused_not_decoded_into_invented_pixels(tmp_path, damage):
    """OpenCV and PIL decode both into grey or shifted blocks (a 'Corrupt JPEG data' line on stderr, no file name)."""
    from gridface.data.device_decode import read_encoded
    from gridface.data.images import CORRUPT, check_jpeg_data

    data = damaged_jpegs()[damage]
    assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) is not None  # what a lenient reader does
    p = tmp_path / f"{damage}.jpg"
    p.write_bytes(data)
    for read in (read_image_rgb, read_encoded):  # the CPU reader; a device-path worker (nvJPEG decodes later)
        with pytest.raises(ImageReadError, match="Corrupt JPEG data") as e:
            read(p)
        assert e.value.kind == CORRUPT and str(p) in str(e.value)
    with pytest.raises(ImageReadError):
        check_jpeg_data(data, p)
    check_jpeg_data(encode(photo(240, 320), ".jpg"), p)  # a whole one passes


def test_padding_before_the_end_marker_decodes_with_a_warning_naming_the_file(tmp_path, caplog):
    """Bytes between the last scan and the end marker (libjpeg: 'N extraneous bytes before marker 0xd9'): the padding
    some encoders write, common in real datasets and harmless, so the picture is used, and the file named once."""
    from gridface.data.device_decode import read_encoded
    from gridface.data.images import check_jpeg_data

    data = encode(photo(), ".jpg")
    p = tmp_path / "padded.jpg"
    p.write_bytes(data[:-2] + bytes(100) + b"\xff\xd9")
    (tmp_path / "whole.jpg").write_bytes(data)
    with caplog.at_level("WARNING", logger="gridface.data.images"):
        np.testing.assert_array_equal(read_image_rgb(p), read_image_rgb(tmp_path / "whole.jpg"))
        read_image_rgb(p)
        read_encoded(p)
        check_jpeg_data(p.read_bytes(), p)
    (warning,) = [r.getMessage() for r in caplog.records if "extraneous" in r.getMessage()]  # once, named
    assert warning.startswith(f"{p}: Corrupt JPEG data: ") and "bytes before marker 0xd9: decoded (padding" in warning


def test_exif_orientation_after_large_header_segments_is_applied(tmp_path):
    """A 128 KB APP13 (Photoshop) segment before the EXIF block: the orientation is still found, as OpenCV finds it."""
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.fromarray(photo(60, 80)).save(buf, "JPEG", exif=exif.tobytes())
    data = buf.getvalue()
    app13 = b"\xff\xed" + (65533).to_bytes(2, "big") + bytes(65531)  # two segments of the largest size
    data = data[:2] + app13 + app13 + data[2:]
    p = tmp_path / "x.jpg"
    p.write_bytes(data)
    want = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    assert want.shape == (80, 60, 3)
    np.testing.assert_array_equal(read_image_rgb(p), want)


def test_a_16_bit_png_holding_8_bit_values_is_reported_not_decoded_black(tmp_path):
    """8-bit data saved with 16 bits per sample (values 0-255): scaled to 8 bits as OpenCV does (>> 8), every pixel
    was 0, and the black image was trained on without a word. A 12-bit one (0-4095) is dark but an image."""
    from gridface.data.images import LOW_RANGE

    values = photo(60, 80).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "low.png"), values)
    cv2.imwrite(str(tmp_path / "twelve.png"), values * 16)
    cv2.imwrite(str(tmp_path / "full.png"), values * 257)
    cv2.imwrite(str(tmp_path / "black.png"), np.zeros((60, 80, 3), np.uint16))
    with pytest.raises(ImageReadError, match=r"low.png: 16-bit with 8-bit values \(a 16-bit PNG whose values all lie "
                                             r"below 256 \(the largest is \d+\)") as e:
        read_image_rgb(tmp_path / "low.png")
    assert e.value.kind == LOW_RANGE
    np.testing.assert_array_equal(read_image_rgb(tmp_path / "full.png"), cv2.cvtColor(photo(60, 80), cv2.COLOR_BGR2RGB))
    assert 0 < read_image_rgb(tmp_path / "twelve.png").max() < 16 and read_image_rgb(tmp_path / "black.png").max() == 0


def test_the_exif_orientation_of_a_photo_over_pils_pixel_limit_is_read():
    """A 200 MP phone photo (16320x12240, orientation 6): PIL's Image.open refuses more than ~179 MP before it reads
    a tag, the orientation came out 1, and the photo was trained and inferred on sideways. Here a small JPEG whose
    frame header says 16320x12240 (only the headers are read)."""
    from PIL import Image

    from gridface.data.images import exif_orientation

    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.fromarray(photo(60, 80)).save(buf, "JPEG", exif=exif.tobytes())
    data = bytearray(buf.getvalue())
    sof = data.find(b"\xff\xc0")
    assert int.from_bytes(data[sof + 5:sof + 7], "big") == 60  # height, then width
    data[sof + 5:sof + 9] = (12240).to_bytes(2, "big") + (16320).to_bytes(2, "big")
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(bytes(data)))
    assert exif_orientation(bytes(data)) == 6


@pytest.mark.parametrize("kind", ["orientation", "grey", "cmyk", "progressive"])
def test_jpegs_decode_to_opencvs_pixels(tmp_path, kind):
    """The strict decoder gives OpenCV's pixels (the same libjpeg-turbo), EXIF orientation applied as OpenCV does."""
    img = Image.fromarray(photo(60, 80))
    variants = {"grey": [img.convert("L")], "cmyk": [img.convert("CMYK")], "progressive": [img]}.get(kind)
    files = []
    for orientation in range(1, 9) if variants is None else [1]:
        exif = Image.Exif()
        exif[0x0112] = orientation
        buf = io.BytesIO()
        (variants or [img])[0].save(buf, "JPEG", exif=exif.tobytes(), progressive=kind == "progressive")
        files.append(buf.getvalue())
    for data in files:
        p = tmp_path / "x.jpg"
        p.write_bytes(data)
        want = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        np.testing.assert_array_equal(read_image_rgb(p), want)


@pytest.mark.parametrize(("content", "kind"), [(None, MISSING), (b"", EMPTY), (b"hello, I am text", NOT_IMAGE),
                                               (b"\xff\xd8\xff\xe0\x00", TRUNCATED)])
def test_missing_empty_and_text_files(tmp_path, content, kind):
    p = tmp_path / "x.jpg"
    if content is not None:
        p.write_bytes(content)
    with pytest.raises(ImageReadError) as e:
        read_image_rgb(p)
    assert e.value.kind == kind


def test_training_never_sees_a_truncated_jpeg(tmp_path, caplog):
    good, cut = tmp_path / "good.jpg", tmp_path / "cut.jpg"
    data = encode(photo(), ".jpg")
    good.write_bytes(data)
    cut.write_bytes(data[: len(data) // 2])
    box = [[10, 10, 60, 70]]
    from gridface.data.sample import Sample
    from gridface.targets import GridBoxTargetEncoder

    ds = DetectionDataset([Sample(good, box, [0], origin="gt.txt:1"), Sample(cut, box, [0], origin="gt.txt:4")],
                          (128, 192), GridBoxTargetEncoder(), None, "train")
    batch = collate([ds[0], ds[1]])
    assert batch["image"].shape[0] == 1 and batch["path"] == [str(good)]
    assert batch["skips"] == [{"kind": TRUNCATED, "path": str(cut), "origin": "gt.txt:4"}]
    assert "cut.jpg: truncated" in caplog.text and "listed at gt.txt:4" in caplog.text


# -------------------------------------------------------------------------------------------- WIDER text
def wider(tmp_path, text, images=("a.jpg", "b.jpg", "c.jpg"), encoding="utf-8"):
    for name in images:
        (tmp_path / "img" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "img" / name).write_bytes(b"")
    f = tmp_path / "gt.txt"
    f.write_bytes(text.encode(encoding))
    return f, tmp_path / "img"


FACE = "10 20 30 40 0 0 0 0 0 0"


@pytest.mark.parametrize(
    ("line", "kind"),
    [("10 20 30 40 0", P.SHORT_LINE), ("10 20 30 40 0 0 0 0 0 0 7 7", P.SHORT_LINE),
     ("10 20 nan 40 0 0 0 0 0 0", P.NON_FINITE), ("10 inf 30 40 0 0 0 0 0 0", P.NON_FINITE),
     ("10 20 -30 40 0 0 0 0 0 0", P.DEGENERATE), ("10 20 30 0 0 0 0 0 0 0", P.DEGENERATE),
     ("10 20 3x 40 0 0 0 0 0 0", P.NOT_NUMBER)],
)
def test_wider_bad_face_line_is_reported_with_its_line_and_never_a_face(tmp_path, line, kind):
    f, img = wider(tmp_path, f"a.jpg\n3\n{FACE}\n{line}\n{FACE}\nb.jpg\n1\n{FACE}\n")
    problems = DataProblems()
    samples = read_widerface_txt(f, img, problems=problems)
    assert [len(s.boxes) for s in samples] == [2, 1]
    assert np.isfinite(samples[0].boxes).all()
    assert problems.counts() == {kind: 1}
    assert problems.items[0].where == f"{f}:4"
    with pytest.raises(LabelError, match=r"gt.txt:4: .*dataset.strict=true") as error:
        read_widerface_txt(f, img, problems=DataProblems(strict=True))
    assert "skipped" not in str(error.value)  # a strict run skips nothing: it stops


def test_wider_count_past_the_end_names_the_count_line(tmp_path):
    f, img = wider(tmp_path, f"a.jpg\n1\n{FACE}\nb.jpg\n3\n{FACE}\n{FACE}\n")
    with pytest.raises(LabelError, match=r"gt.txt:5: unexpected end of file: b.jpg promises 3 faces, the file ends "
                                         r"after 2"):
        read_widerface_txt(f, img)


def test_wider_bom_crlf_and_missing_placeholder_lines(tmp_path):
    text = f"a.jpg\r\n0\r\nb.jpg\r\n1\r\n{FACE}\r\nc.jpg\r\n0\r\n"  # no '0 0 0 ...' placeholders at all
    f, img = wider(tmp_path, "\ufeff" + text)
    problems = DataProblems()
    samples = read_widerface_txt(f, img, problems=problems)
    assert [s.image.name for s in samples] == ["a.jpg", "b.jpg", "c.jpg"]
    assert [len(s.boxes) for s in samples] == [0, 1, 0]
    assert len(problems) == 0


def test_wider_image_listed_twice_is_merged_and_reported(tmp_path):
    f, img = wider(tmp_path, f"a.jpg\n1\n{FACE}\nb.jpg\n1\n{FACE}\na.jpg\n1\n50 50 20 20 0 0 0 0 0 0\n")
    problems = DataProblems()
    samples = read_widerface_txt(f, img, problems=problems)
    assert [s.image.name for s in samples] == ["a.jpg", "b.jpg"]
    np.testing.assert_allclose(samples[0].boxes, [[10, 20, 40, 60], [50, 50, 70, 70]])
    (p,) = problems.items
    assert p.kind == P.DUPLICATE and p.where == f"{f}:7" and "first at line 1" in p.message


def test_wider_missing_image_is_reported_with_the_ground_truth_line(tmp_path):
    f, img = wider(tmp_path, f"a.jpg\n1\n{FACE}\ngone.jpg\n1\n{FACE}\n", images=("a.jpg",))
    problems = DataProblems()
    samples = read_widerface_txt(f, img, problems=problems)
    assert [s.image.name for s in samples] == ["a.jpg"]
    (p,) = problems.items
    assert p.kind == P.MISSING_IMAGE and p.where == f"{f}:4" and "gone.jpg" in p.message


def test_wider_face_after_a_zero_count_and_a_flag_out_of_range_are_reported(tmp_path):
    """After a count of 0 only the all-zero placeholder is skipped unreported; an invalid flag other than 0/1 is
    neither a face nor an ignore region; a count lower than the face lines names the count line."""
    f, img = wider(tmp_path, f"a.jpg\n0\n{FACE}\nb.jpg\n0\n0 0 0 0 0 0 0 0 0 0\nc.jpg\n2\n{FACE}\n"
                             "50 50 20 20 0 0 0 2 0 0\n")
    problems = DataProblems()
    samples = read_widerface_txt(f, img, problems=problems)
    assert [len(s.boxes) for s in samples] == [0, 0, 1]
    assert problems.counts() == {P.COUNT_MISMATCH: 1, P.BAD_FLAG: 1}
    assert [p.where for p in problems.items] == [f"{f}:3", f"{f}:10"]
    assert "face count of 0 (line 2)" in problems.items[0].message
    f, img = wider(tmp_path / "low", f"a.jpg\n1\n{FACE}\n{FACE}\nb.jpg\n0\n")
    with pytest.raises(LabelError, match=r"gt.txt:4: expected an image path .*face count of a.jpg on line 2"):
        read_widerface_txt(f, img)


def test_wider_file_that_is_not_utf8_names_the_line(tmp_path):
    f, img = wider(tmp_path, f"a.jpg\n1\n{FACE}\nb\xe9.jpg\n0\n", encoding="latin-1")
    with pytest.raises(LabelError, match=r"gt.txt:4: not UTF-8"):
        read_widerface_txt(f, img)


# -------------------------------------------------------------------------------------------------- KITTI
def kitti(tmp_path, labels, images):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    for stem in images:
        cv2.imwrite(str(tmp_path / "images" / f"{stem}.png"), photo(60, 80))
    for stem, text in labels.items():
        (tmp_path / "labels" / f"{stem}.txt").write_text(text)
    return tmp_path / "images", tmp_path / "labels"


KFACE = "face 0.00 0 0.00 1 2 31 42 0 0 0 0 0 0 0"


@pytest.mark.parametrize(
    ("line", "kind"),
    [("face 0 0 0 1 2 31 42", P.SHORT_LINE), ("face 0 0 0 1 2 nan 42 0 0 0 0 0 0 0", P.NON_FINITE),
     ("face 0 0 0 31 2 1 42 0 0 0 0 0 0 0", P.DEGENERATE), ("face 0 0 0 1 2 x 42 0 0 0 0 0 0 0", P.NOT_NUMBER)],
)
def test_kitti_bad_line_is_reported_with_its_line(tmp_path, line, kind):
    images, labels = kitti(tmp_path, {"a": f"{KFACE}\n{line}\n"}, ["a"])
    problems = DataProblems()
    (s,) = read_kitti(images, labels, problems=problems)
    assert len(s.boxes) == 1 and problems.counts() == {kind: 1}
    assert problems.items[0].where == f"{labels / 'a.txt'}:2"


def test_kitti_orphan_image_counts_as_empty_and_orphan_label_is_named(tmp_path):
    images, labels = kitti(tmp_path, {"a": KFACE + "\n", "ghost": KFACE + "\n"}, ["a", "nolabel"])
    problems = DataProblems()
    samples = read_kitti(images, labels, problems=problems)
    assert {s.image.name: len(s.boxes) for s in samples} == {"a.png": 1, "nolabel.png": 0}
    by_kind = {p.kind: p for p in problems.items}
    assert set(by_kind) == {P.NO_LABEL_FILE, P.ORPHAN_LABEL}
    assert by_kind[P.ORPHAN_LABEL].where == str(labels / "ghost.txt")
    assert by_kind[P.NO_LABEL_FILE].where == str(images / "nolabel.png")


def test_boxes_wholly_outside_their_image_are_reported_and_those_crossing_its_border_counted(tmp_path):
    """Images of 80x60: a box at x 100..120 is outside it (reported, naming the label file; training drops it and
    validation would count it as a missed face), one from x 70 to 90 crosses the border (counted; clipped)."""
    from gridface.data.check import scan_images
    from gridface.data.report import split_stats

    images, labels = kitti(tmp_path, {"a": f"{KFACE}\nface 0 0 0 100 10 120 30 0 0 0 0 0 0 0\n",
                                      "b": f"{KFACE}\nface 0 0 0 70 10 90 30 0 0 0 0 0 0 0\n"}, ["a", "b"])
    problems = DataProblems()
    checks = scan_images(read_kitti(images, labels, problems=problems), problems, desc=None)
    (p,) = problems.items
    assert p.kind == P.OUTSIDE_IMAGE and p.where == str(labels / "a.txt")
    assert "1 box(es) lie wholly outside the 80x60 image a.png (the first: x1=100 y1=10 x2=120 y2=30)" in p.message
    assert split_stats(checks, None)["boxes_crossing_the_border"] == 1


def test_a_kitti_label_file_that_is_not_utf8_skips_its_image_only(tmp_path):
    images, labels = kitti(tmp_path, {"a": KFACE + "\n", "b": KFACE + "\n"}, ["a", "b"])
    (labels / "b.txt").write_bytes(f"{KFACE}\nf\xe9ce 0 0 0 1 2 31 42 0 0 0 0 0 0 0\n".encode("latin-1"))
    problems = DataProblems()
    (s,) = read_kitti(images, labels, problems=problems)
    assert s.image.name == "a.png"
    (p,) = problems.items
    assert p.kind == P.NOT_TEXT and p.where == f"{labels / 'b.txt'}:2" and "b.png skipped" in p.message


def test_kitti_images_sharing_a_stem_and_unlisted_classes_are_reported(tmp_path, caplog):
    """Two images for one label file: the first (sorted) keeps the labels, the other is reported. Objects of classes
    that are not trained are skipped, as TAO does, and one warning names each class, its count and first line."""
    images, labels = kitti(tmp_path, {"a": f"{KFACE}\nfcae 0 0 0 1 2 31 42 0 0 0 0 0 0 0\nperson 0 0 0 1 2 9 9 "
                                            "0 0 0 0 0 0 0\nfcae 0 0 0 5 5 30 30 0 0 0 0 0 0 0\n"}, ["a"])
    cv2.imwrite(str(images / "a.jpg"), photo(60, 80))
    problems = DataProblems()
    with caplog.at_level("WARNING", logger="gridface.data.parsers"):
        (s,) = read_kitti(images, labels, problems=problems)
    assert s.image.name == "a.jpg" and len(s.boxes) == 1
    (p,) = problems.items
    assert p.kind == P.SAME_STEM and p.where == str(images / "a.png") and "a.jpg" in p.message
    (warning,) = [r.getMessage() for r in caplog.records if "not one of" in r.getMessage()]
    assert "skipped 3 objects" in warning and f"'fcae' x2 (first at {labels / 'a.txt'}:2)" in warning
    assert f"'person' x1 (first at {labels / 'a.txt'}:3)" in warning


# --------------------------------------------------------------------------------------------------- COCO
def test_coco_bad_boxes_duplicates_and_missing_images(tmp_path):
    cv2.imwrite(str(tmp_path / "x.png"), photo(60, 80))
    ann = {"images": [{"id": 1, "file_name": "x.png"}, {"id": 2, "file_name": "x.png"},
                      {"id": 3, "file_name": "gone.png"}],
           "categories": [{"id": 1, "name": "face"}],
           "annotations": [{"id": 10, "image_id": 1, "category_id": 1, "bbox": [1, 2, 10, 20]},
                           {"id": 11, "image_id": 2, "category_id": 1, "bbox": [30, 30, 10, 10]},
                           {"id": 12, "image_id": 1, "category_id": 1, "bbox": [1, 2, float("nan"), 20]},
                           {"id": 13, "image_id": 1, "category_id": 1, "bbox": [1, 2, -5, 20]}]}
    f = tmp_path / "a.json"
    f.write_text(json.dumps(ann))
    problems = DataProblems()
    (s,) = read_coco(f, tmp_path, problems=problems)
    np.testing.assert_allclose(s.boxes, [[1, 2, 11, 22], [30, 30, 40, 40]])
    assert problems.counts() == {P.DUPLICATE: 1, P.NON_FINITE: 1, P.DEGENERATE: 1, P.MISSING_IMAGE: 1}
    assert any("annotations[2] (id 12)" in p.where for p in problems.items)


def test_coco_annotations_naming_unknown_ids_or_malformed_are_skipped_and_reported(tmp_path, caplog):
    cv2.imwrite(str(tmp_path / "x.png"), photo(60, 80))
    ann = {"images": [{"id": 1, "file_name": "x.png"}],
           "categories": [{"id": 1, "name": "face"}, {"id": 2, "name": "person"}],
           "annotations": [{"id": 10, "image_id": 1, "category_id": 1, "bbox": [1, 2, 10, 20]},
                           {"id": 11, "image_id": "1", "category_id": 1, "bbox": [1, 2, 10, 20]},
                           {"id": 12, "image_id": 1, "category_id": 7, "bbox": [1, 2, 10, 20]},
                           {"id": 13, "image_id": 1, "category_id": 1, "bbox": "1234"},
                           {"id": 14, "image_id": 1, "category_id": 1, "segmentation": [[1, 2, 3, 4, 5, 6]]},
                           {"id": 15, "image_id": 1, "category_id": 2, "bbox": [5, 5, 10, 10]}]}
    f = tmp_path / "a.json"
    f.write_text(json.dumps(ann))
    problems = DataProblems()
    with caplog.at_level("WARNING", logger="gridface.data.parsers"):
        (s,) = read_coco(f, tmp_path, problems=problems)
    np.testing.assert_allclose(s.boxes, [[1, 2, 11, 22]])
    assert problems.counts() == {P.UNKNOWN_REFERENCE: 2, P.SHORT_LINE: 2}
    messages = {p.where.rsplit("(id ", 1)[1].rstrip(")"): p.message for p in problems.items}
    assert "image_id '1'" in messages["11"] and "category_id 7" in messages["12"]
    assert "got str '1234'" in messages["13"] and "needs bbox" in messages["14"]
    (warning,) = [r.getMessage() for r in caplog.records if "not one of" in r.getMessage()]
    assert "'person' x1 (first at" in warning and "annotations[5]" in warning


@pytest.mark.parametrize(("images", "categories", "message"), [
    ([{"id": 1, "file_name": "x.png"}, {"id": 1, "file_name": "y.png"}], [{"id": 1, "name": "face"}],
     r"images\[1\] \(y.png\) has id 1, the id of images\[0\] \(x.png\)"),
    ([{"id": 1, "file_name": "x.png"}], [{"id": 1}], r"categories\[0\] needs id \(.*\) and name"),
    ([{"id": 1, "file_name": "x.png"}], ["face"], r"categories\[0\] needs id \(.*\) and name, got face"),
    ([{"id": [1], "file_name": "x.png"}], [], r"images\[0\] has id \[1\]: a whole number or a string"),
    ([{"id": 1.5, "file_name": "x.png"}], [], r"images\[0\] has id 1.5: a whole number or a string"),
])
def test_coco_ambiguous_images_and_malformed_categories_name_the_entry(tmp_path, images, categories, message):
    f = tmp_path / "a.json"
    f.write_text(json.dumps({"images": images, "categories": categories, "annotations": []}))
    with pytest.raises(LabelError, match=message):
        read_coco(f, tmp_path)


@pytest.mark.parametrize("key", ["images", "annotations", "categories"])
def test_a_coco_file_whose_lists_are_null_names_the_key(tmp_path, key):
    """``"annotations": null`` was a TypeError traceback from inside the reader."""
    ann = {"images": [{"id": 1, "file_name": "x.png"}], "categories": [{"id": 1, "name": "face"}], "annotations": []}
    f = tmp_path / "a.json"
    f.write_text(json.dumps({**ann, key: None}))
    with pytest.raises(LabelError, match=rf"a.json: '{key}' must be a list, got null"):
        read_coco(f, tmp_path)
    f.write_text("[]")
    with pytest.raises(LabelError, match=r"a.json: a COCO file is a JSON object .*, got a list"):
        read_coco(f, tmp_path)


def test_coco_ids_written_as_whole_floats_and_iscrowd_flags(tmp_path):
    """pandas writes ids as 2.0 (pycocotools takes them): every annotation was skipped, with a message that 2.0
    'must be a number'. ``"iscrowd": "0"`` made an ignore box (bool('0') is True); it is reported and skipped."""
    cv2.imwrite(str(tmp_path / "x.png"), photo(60, 80))
    ann = {"images": [{"id": 1.0, "file_name": "x.png"}], "categories": [{"id": 1.0, "name": "face"}],
           "annotations": [{"id": 10, "image_id": 1.0, "category_id": 1, "bbox": [1, 2, 10, 20]},
                           {"id": 11, "image_id": 1, "category_id": 1.0, "bbox": [20, 2, 10, 20], "iscrowd": True},
                           {"id": 12, "image_id": 1, "category_id": 1, "bbox": [40, 2, 10, 20], "iscrowd": "0"},
                           {"id": 13, "image_id": 1.5, "category_id": 1, "bbox": [1, 2, 10, 20]}]}
    f = tmp_path / "a.json"
    f.write_text(json.dumps(ann))
    problems = DataProblems()
    (s,) = read_coco(f, tmp_path, problems=problems)
    np.testing.assert_allclose(s.boxes, [[1, 2, 11, 22], [20, 2, 30, 22]])
    assert s.ignore.tolist() == [False, True]
    assert problems.counts() == {P.BAD_FLAG: 1, P.UNKNOWN_REFERENCE: 1}
    messages = {p.where.rsplit("(id ", 1)[1].rstrip(")"): p.message for p in problems.items}
    assert "iscrowd must be 0 or 1, got '0'" in messages["12"] and "whole numbers or strings" in messages["13"]


def test_check_data_reports_an_image_whose_size_differs_from_its_coco_entry(tmp_path):
    """The COCO entry's width and height against the decoded image: a resized image (or labels made on the pixels
    before the EXIF rotation) passed check_data, its boxes clipped silently."""
    for name, (h, w) in {"same.png": (60, 80), "resized.png": (30, 40), "turned.png": (80, 60)}.items():
        cv2.imwrite(str(tmp_path / name), photo(h, w))
    images = [{"id": i, "file_name": n, "width": 80, "height": 60}
              for i, n in enumerate(["same.png", "resized.png", "turned.png"])]
    f = tmp_path / "a.json"
    f.write_text(json.dumps({"images": images, "categories": [{"id": 1, "name": "face"}],
                             "annotations": [{"image_id": i, "category_id": 1, "bbox": [1, 2, 10, 20]}
                                             for i in range(3)]}))
    problems = DataProblems()
    scan_images(read_coco(f, tmp_path, problems=problems), problems, workers=1, desc=None)
    assert problems.counts() == {P.SIZE_MISMATCH: 2}
    resized, turned = (p.message for p in problems.items)
    assert "the labels give resized.png as 80x60, it decodes to 40x30 (resized or replaced" in resized
    assert "turned.png as 80x60, it decodes to 60x80 (the two sides swapped: labels made on the pixels before the " \
           "EXIF rotation?)" in turned


def test_a_kitti_class_name_with_a_space_is_a_reported_line_not_a_shifted_box(tmp_path):
    """'Human face 0.00 0 ...' has 16 fields, KITTI's count with a score: it was read as type 'Human', truncated
    'face', and a box one field early ([0, 120, 80, 140] instead of [120, 80, 140, 104])."""
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    cv2.imwrite(str(tmp_path / "images" / "a.png"), photo(120, 160))
    (tmp_path / "labels" / "a.txt").write_text("Human face 0.00 0 0.00 120 80 140 104 0 0 0 0 0 0 0\n"
                                               "human 0.00 0 0.00 10 20 30 44 0 0 0 0 0 0 0\n")
    problems = DataProblems()
    (s,) = read_kitti(tmp_path / "images", tmp_path / "labels", class_map={"human": "face"}, problems=problems)
    np.testing.assert_allclose(s.boxes, [[10, 20, 30, 44]])
    (problem,) = problems.items
    assert problem.kind == P.NOT_NUMBER and problem.where.endswith("a.txt:1") and "one word" in problem.message


# ----------------------------------------------------------------------------------------- check_data
def broken_kitti_set(tmp_path):
    """A KITTI set with one of each problem: a truncated JPEG, a bad line, an orphan label, an image without labels."""
    for split in ("train", "val"):
        (tmp_path / split / "images").mkdir(parents=True)
        (tmp_path / split / "labels").mkdir(parents=True)
        for i in range(3):
            cv2.imwrite(str(tmp_path / split / "images" / f"{i}.jpg"), photo(96, 128, i))
            (tmp_path / split / "labels" / f"{i}.txt").write_text(KFACE + "\n")
    data = (tmp_path / "train" / "images" / "0.jpg").read_bytes()
    (tmp_path / "train" / "images" / "0.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "train" / "labels" / "1.txt").write_text(KFACE + "\nface 0 0 0 1 2 inf 4 0 0 0 0 0 0 0\n")
    (tmp_path / "train" / "labels" / "ghost.txt").write_text(KFACE + "\n")
    (tmp_path / "train" / "labels" / "2.txt").unlink()
    return tmp_path


def train_on(tmp_path, root, *overrides):
    """A short CPU training run's config on the KITTI set at ``root`` (2 epochs of batches of 2 at 128x96)."""
    return compose_train(tmp_path, ["dataset=kitti", f"dataset.root={root}", "dataset.input_width=128",
                                    "dataset.input_height=96", "dataset.batch_size=2", "dataset.num_workers=0",
                                    "trainer=cpu", "trainer.max_epochs=2", "logger=none", "print_config=false",
                                    *overrides])


def test_check_data_reports_every_problem_with_file_and_line(tmp_path):
    root = broken_kitti_set(tmp_path / "data")
    cfg = compose_config("check_data", tmp_path / "out", tmp_path / "cache",
                         ["dataset=kitti", f"dataset.root={root}", "dataset.input_width=256",
                          "dataset.input_height=160"])
    report = check_run(cfg)
    train = report["splits"]["train"]
    assert train["images_listed"] == 3 and train["images_usable"] == 2 and train["images_skipped"] == 1
    assert train["faces"] == 1 and train["images_without_faces"] == 1  # 1.jpg's good line; 2.jpg has no label file
    assert report["problems"]["counts"] == {"image truncated": 1, P.NON_FINITE: 1, P.ORPHAN_LABEL: 1,
                                            P.NO_LABEL_FILE: 1}
    examples = report["problems"]["examples"]
    assert examples[P.NON_FINITE][0].startswith(f"{root / 'train' / 'labels' / '1.txt'}:2:")
    assert examples["image truncated"][0].startswith(str(root / "train" / "labels" / "0.txt"))
    assert report["splits"]["val"]["images_usable"] == 3
    out = tmp_path / "out"
    assert (out / "face_sizes.png").stat().st_size > 1000 and "image truncated: 1" in (out / "report.md").read_text()
    assert json.loads((out / "report.json").read_text())["problems"]["total"] == 4
    # splits=val (not [val]) is the one split, not the letters v, a, l
    one = check_run(compose_config("check_data", tmp_path / "out1", tmp_path / "cache",
                                   ["dataset=kitti", f"dataset.root={root}", "splits=val"]))
    assert list(one["splits"]) == ["val"] and one["splits"]["val"]["images_usable"] == 3


def test_training_result_counts_every_data_problem_once(tmp_path):
    from gridface.train import run as train_run

    root = broken_kitti_set(tmp_path / "data")
    result = train_run(train_on(tmp_path, root))
    assert result["data_problems"]["counts"] == {"image truncated": 1, P.NON_FINITE: 1, P.ORPHAN_LABEL: 1,
                                                 P.NO_LABEL_FILE: 1}  # the truncated image: once, not per epoch
    (truncated,) = result["data_problems"]["examples"]["image truncated"]
    assert "0.jpg: truncated" in truncated


@pytest.mark.slow
def test_check_data_exit_status_and_strict_training_stop_at_start(tmp_path):
    root = broken_kitti_set(tmp_path / "data")
    env_cmd = [sys.executable, "-m"]
    args = ["dataset=kitti", f"dataset.root={root}", f"hydra.run.dir={tmp_path / 'run'}"]
    check = subprocess.run([*env_cmd, "gridface.check_data", *args], capture_output=True, text=True, cwd=tmp_path)
    assert check.returncode == 1, check.stderr
    assert "data problems: 1 image truncated" in check.stdout
    train = subprocess.run([*env_cmd, "gridface.train", *args, "dataset.strict=true", "trainer=cpu",
                            "trainer.max_epochs=1", "print_config=false"], capture_output=True, text=True,
                           cwd=tmp_path)
    assert train.returncode == 2
    assert "gridface.train: error:" in train.stderr and "dataset.strict=true" in train.stderr
    assert "Traceback" not in train.stderr


@pytest.mark.parametrize("validation", [True, False], ids=["stops-before-validation", "stops-at-epoch-end"])
def test_training_where_no_training_image_is_readable_stops_before_any_checkpoint(tmp_path, validation):
    """Every training image truncated: the run stops at its first epoch with one error saying so, before validation
    ranks the untrained weights (it used to finish, with a best.ckpt that had never trained)."""
    from gridface.train import run as train_run

    root = broken_kitti_set(tmp_path / "data")
    for image in (root / "train" / "images").glob("*.jpg"):
        image.write_bytes(image.read_bytes()[:300])
    cfg = train_on(tmp_path, root, *([] if validation else ["trainer.limit_val_batches=0"]))
    with pytest.raises(ValueError, match=r"epoch 0: none of the training images could be read \(3 skipped"):
        train_run(cfg)
    assert not list((tmp_path / "out").rglob("*.ckpt"))


def test_a_training_split_without_one_face_of_the_trained_classes_is_an_error_at_start(tmp_path, caplog):
    """Every object labelled 'head' while the run trains 'face': it used to train on background and report NaN AP."""
    from gridface.train import run as train_run

    root = broken_kitti_set(tmp_path / "data")
    for label in (root / "train" / "labels").glob("*.txt"):
        label.write_text(KFACE.replace("face", "head") + "\n")
    cfg = train_on(tmp_path, root, "trainer.max_epochs=1")
    with caplog.at_level("WARNING", logger="gridface.data.parsers"), \
            pytest.raises(ValueError, match=r"training split lists 3 images but not one face box"):
        train_run(cfg)
    assert "'head' x2 (first at" in caplog.text


def test_validation_with_no_readable_image_warns_and_checkpointing_goes_on(tmp_path, caplog):
    """Every validation image truncated: each validation logs NaN metrics with a warning naming the epoch, and
    ModelCheckpoint(monitor=val/AP50) goes on (it raised 'could not find the monitored key' before)."""
    import logging
    import math

    import torch

    from gridface.train import run as train_run

    root = broken_kitti_set(tmp_path / "data")
    for image in (root / "val" / "images").glob("*.jpg"):
        image.write_bytes(image.read_bytes()[:300])
    cfg = train_on(tmp_path, root, "checkpoint_every_n_steps=0")
    with caplog.at_level(logging.WARNING, logger="gridface.module"):
        result = train_run(cfg)
    for when in ("the sanity check", "epoch 0", "epoch 1"):
        assert f"{when}: no validation image could be read" in caplog.text
    assert result["global_step"] == 4 and result["metrics"]["val/images"] == 0
    assert math.isnan(result["metrics"]["val/AP50"]) and math.isnan(result["metrics"]["val/mAP"])
    # best.ckpt: epoch 0's (NaN ranks as the worst score, so epoch 1's NaN does not replace it); last.ckpt: epoch 1's
    assert torch.load(Path(result["best_checkpoint"]), weights_only=False)["global_step"] == 2
    assert torch.load(Path(result["last_checkpoint"]), weights_only=False)["global_step"] == 4


@pytest.mark.parametrize(("split", "label", "message"), [
    ("val", "", r"the validation split lists 3 images but not one face box"),  # best.ckpt chosen by AP 0 == 0
    ("train", "face 0.00 0 0.00 0.1 0.2 0.3 0.45 0 0 0 0 0 0 0", r"every box of the training split lies within "
                                                                  r"0\.\.1 .*labels look normalised"),
    ("val", "face 0.00 0 0.00 0.1 0.2 0.3 0.45 0 0 0 0 0 0 0", r"every box of the validation split lies within"),
], ids=["val-without-faces", "train-normalised", "val-normalised"])
def test_a_split_with_nothing_to_train_or_measure_stops_training_and_fails_check_data(tmp_path, split, label,
                                                                                     message):
    """A validation split without one face trained to the end with val/AP50 0 every epoch (best.ckpt: epoch 0's);
    labels normalised to 0-1 trained on nothing (each face below min_box_size: all ignored) and said 'no data
    problems'. Training stops at start-up; check_data, the same question, fails (it passed these)."""
    from gridface.check_data import run as check_run
    from gridface.train import run as train_run

    root = broken_kitti_set(tmp_path / "data")
    for file in (root / split / "labels").glob("*.txt"):
        file.write_text(label + "\n" if label else "")
    with pytest.raises(ValueError, match=message):
        train_run(train_on(tmp_path, root, "trainer.max_epochs=1"))
    assert not list((tmp_path / "out").rglob("*.ckpt"))
    if split == "val":  # no validation, nothing measured: the run may go on
        assert train_run(train_on(tmp_path / "noval", root, "trainer.max_epochs=1",
                                  "trainer.limit_val_batches=0"))["global_step"] == 2
    report = check_run(compose_config("check_data", tmp_path / "check", tmp_path / "cache",
                                      ["dataset=kitti", f"dataset.root={root}"]))
    kind = P.NO_FACES if not label else P.NORMALISED
    assert report["problems"]["counts"][kind] == 1
    assert re.search(message.replace("validation", "val").replace("training", "train"),
                     report["problems"]["examples"][kind][0])


@pytest.mark.parametrize("decode", ["cpu", "hybrid", "gpu"])
def test_training_reports_label_boxes_wholly_outside_their_image(tmp_path, caplog, decode):
    """Labels made for the full-size images, trained on resized ones: the boxes beyond the image were dropped with
    a debug line, and the run said 'no data problems'. Each image is now reported once (file:line, its size, the
    first box) and counted in result.json, as check_data counts it; on every data path (the device paths on the
    CPU here)."""
    import logging

    from gridface.check_data import run as check_run
    from gridface.train import run as train_run

    root = broken_kitti_set(tmp_path / "data")
    for split in ("train", "val"):
        label = root / split / "labels" / "1.txt"
        label.write_text(label.read_text().splitlines()[0] + "\nface 0.00 0 0.00 300 200 360 260 0 0 0 0 0 0 0\n")
    cfg = train_on(tmp_path, root, "checkpoint_every_n_steps=0", f"dataset.decode={decode}", "trainer.max_epochs=1",
                   "trainer.num_sanity_val_steps=2")
    with caplog.at_level(logging.WARNING, logger="gridface.data"):
        result = train_run(cfg)
    problems = result["data_problems"]
    assert problems["counts"][P.OUTSIDE_IMAGE] == 2, problems  # each image once (val: sanity check and epoch 0)
    expected = {f"{root / split / 'labels' / '1.txt'}: 1 box(es) lie wholly outside the 128x96 image 1.jpg "
                "(the first: x1=300 y1=200 x2=360 y2=260)" for split in ("train", "val")}
    assert {e.split(";")[0] for e in problems["examples"][P.OUTSIDE_IMAGE]} == expected
    assert caplog.text.count("lie wholly outside the 128x96 image") == 2
    report = check_run(compose_config("check_data", tmp_path / "check", tmp_path / "cache",
                                      ["dataset=kitti", f"dataset.root={root}"]))
    assert {e.split(";")[0] for e in report["problems"]["examples"][P.OUTSIDE_IMAGE]} == expected


def test_check_data_fails_a_class_filter_that_matches_no_label(tmp_path):
    """'dataset.class_names=[head]' on face labels: check_data said '0 faces ... no data problems' (exit 0), then
    training refused the data."""
    from gridface.check_data import run as check_run

    root = broken_kitti_set(tmp_path / "data")
    report = check_run(compose_config("check_data", tmp_path / "check", tmp_path / "cache",
                                      ["dataset=kitti", f"dataset.root={root}", "dataset.class_names=[head]"]))
    assert report["problems"]["counts"][P.NO_FACES] == 2  # train and val
    assert "the train split lists 3 images but not one face box" in report["problems"]["examples"][P.NO_FACES][0]


def test_a_sanity_check_that_reads_no_image_does_not_stop_the_first_validation(tmp_path, caplog):
    """The sanity check's one batch holds only an unreadable image (sorted first), later validations read the
    others: the run ended after its first epoch with Lightning's 'self.log(val/AP50, ...) twice ... with different
    arguments' (NaN was logged without the progress-bar flag the measured metrics have)."""
    import logging
    import math

    from gridface.train import run as train_run

    root = broken_kitti_set(tmp_path / "data")
    first = root / "val" / "images" / "0.jpg"
    first.write_bytes(first.read_bytes()[:300])
    cfg = train_on(tmp_path, root, "checkpoint_every_n_steps=0", "dataset.batch_size=1",
                   "trainer.max_epochs=1", "trainer.num_sanity_val_steps=1")
    with caplog.at_level(logging.WARNING, logger="gridface.module"):
        result = train_run(cfg)
    assert "the sanity check: no validation image could be read" in caplog.text
    assert "epoch 0: no validation image" not in caplog.text and result["global_step"] == 3, result
    assert result["metrics"]["val/images"] == 2 and not math.isnan(result["metrics"]["val/AP50"])


# ------------------------------------------------------------------------------------ config values
@pytest.mark.parametrize(
    ("overrides", "message"),
    [(["dataset.input_width=100"], r"dataset.input_width = 100: must be a positive multiple of 16"),
     (["postprocess.clustering=kmeans"], r"postprocess.clustering = 'kmeans': must be one of dbscan, nms, hybrid"),
     (["postprocess.coverage_threshold=-0.1"], r"postprocess.coverage_threshold = -0.1: must be a number >= 0"),
     (["postprocess.dbscan_eps=0"], r"postprocess.dbscan_eps = 0: must be a number > 0 and <= 1"),
     (["dataset=widerface", "dataset.root=/no/such/folder"], r"dataset.root = '/no/such/folder' does not exist"),
     (["dataset=kitti"], r"dataset.root is not set"),
     (["dataset.batch_size=0"], r"dataset.batch_size = 0: must be a whole number >= 1")],
)
def test_config_values_out_of_range_name_the_key(tmp_path, overrides, message):
    cfg = compose_config("train", tmp_path / "out", tmp_path / "cache", overrides)
    with pytest.raises(ConfigError, match=message):
        check_dataset(cfg.dataset)
        check_postprocess(cfg.postprocess)


def test_a_network_block_left_under_model_names_the_new_key(tmp_path):
    from gridface.stages.checks import check_stage_config

    cfg = compose_config("train", tmp_path / "out", tmp_path / "cache", ["+model.pretrained=/w/resnet18.pth"])
    with pytest.raises(ConfigError, match=r"model = \['pretrained'\]: model is the input model's path in every "
                                          r"stage.*network.pretrained="):
        check_stage_config(cfg)


def test_unwritable_output_folder_is_named(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match=r"output_dir = '.*file/out': this folder cannot be written"):
        check_writable("output_dir", blocker / "out")


def test_user_error_is_one_clear_message_and_full_error_shows_the_trace(tmp_path):
    cmd = [sys.executable, "-m", "gridface.infer", "model=/no/such/model.onnx", "source=.",
           f"hydra.run.dir={tmp_path}"]
    plain = subprocess.run(cmd, capture_output=True, text=True)
    assert plain.returncode == 2
    assert plain.stderr.strip().splitlines()[0] == "gridface.infer: error: model = '/no/such/model.onnx': no such file"
    assert "Traceback" not in plain.stderr
    full = subprocess.run(cmd, capture_output=True, text=True, env={**__import__("os").environ,
                                                                     "HYDRA_FULL_ERROR": "1"})
    assert full.returncode == 1 and "Traceback" in full.stderr


def identity_onnx(path, input_name, hw, outputs):
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [1, 3, *hw])
    outs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, [1, 3, *hw]) for o in outputs]
    nodes = [helper.make_node("Identity", [input_name], [o]) for o in outputs]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], outs), opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    meta = deployment_metadata("onnx_fp32", (32, 32), ["face"], 16, {}, "model.ckpt", None, {})
    path.with_suffix(".json").write_text(json.dumps(meta))
    return path


IN, COV, BBOX = "input_1", "output_cov/Sigmoid", "output_bbox/BiasAdd"


@pytest.mark.parametrize(
    ("input_name", "hw", "outputs", "message"),
    [("x", (32, 32), [COV, BBOX], r"inputs \['x'\]: expected input 'input_1' \[N, 3, 32, 32\]"),
     (IN, (64, 64), [COV, BBOX], r"input 'input_1' has shape \[1, 3, 64, 64\]: expected"),
     (IN, (32, 32), [COV], r"lack \['output_bbox/BiasAdd'\]")],
)
def test_onnx_model_outside_the_contract_is_a_clear_error(tmp_path, input_name, hw, outputs, message):
    pytest.importorskip("onnxruntime")
    from gridface.contract import ONNX_INPUT, ONNX_OUTPUTS
    from gridface.inference.backends import load_backend

    assert (ONNX_INPUT, *ONNX_OUTPUTS) == (IN, COV, BBOX)
    path = identity_onnx(tmp_path / "m.onnx", input_name, hw, outputs)
    with pytest.raises(ValueError, match=message):
        load_backend(path)
