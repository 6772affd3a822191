import json

import numpy as np
import pytest

from gridface.data.parsers import read_coco, read_kitti, read_widerface_txt
from gridface.data.sample import LabelError

WIDER_TXT = """0--Parade/0_Parade_a.jpg
2
10 20 30 40 0 0 0 0 0 0
50 60 3 3 2 0 0 1 0 0
0--Parade/0_Parade_empty.jpg
0
0 0 0 0 0 0 0 0 0 0
1--Handshaking/1_b.jpg
1
5 5 100 120 0 0 0 0 0 0
"""


def touch_images(root, names):
    for n in names:
        (root / n).parent.mkdir(parents=True, exist_ok=True)
        (root / n).write_bytes(b"")


def test_widerface_txt(tmp_path):
    f = tmp_path / "gt.txt"
    f.write_text(WIDER_TXT)
    touch_images(tmp_path / "images", ["0--Parade/0_Parade_a.jpg", "0--Parade/0_Parade_empty.jpg",
                                       "1--Handshaking/1_b.jpg"])
    samples = read_widerface_txt(f, tmp_path / "images", min_size=4)
    assert [s.image.name for s in samples] == ["0_Parade_a.jpg", "0_Parade_empty.jpg", "1_b.jpg"]
    np.testing.assert_allclose(samples[0].boxes[0], [10, 20, 40, 60])
    assert samples[0].ignore.tolist() == [False, True]  # second: invalid and below min size
    assert len(samples[1].boxes) == 0
    assert samples[2].image == tmp_path / "images" / "1--Handshaking" / "1_b.jpg"


@pytest.mark.parametrize(
    ("text", "line"),
    [("a.jpg\nx\n", 2), ("a.jpg\n2\n1 2 3 4 0 0 0 0 0 0\n", 2), ("a.jpg\n-1\n", 2), ("a.jpg\n", 1),
     ("notanimage\n1\n", 1), ("a.jpg\n2\n1 2 3 4 0 0 0 0 0 0\nb.jpg\n0\n", 2)],
)
def test_widerface_malformed_names_file_and_line(tmp_path, text, line):
    f = tmp_path / "gt.txt"
    f.write_text(text)
    with pytest.raises(LabelError, match=rf"gt.txt:{line}:"):
        read_widerface_txt(f, tmp_path)


def test_widerface_mini_val_real_data(shared_data):
    root = shared_data / "widerface" / "mini_val"
    samples = read_widerface_txt(root / "wider_face_val_bbx_gt.txt", root / "images")
    assert len(samples) == 19
    assert sum(len(s.boxes) for s in samples) == 831
    assert sum(int(s.ignore.sum()) for s in samples) == 80
    assert all(s.image.is_file() for s in samples)


def write_kitti(tmp_path, lines):
    (tmp_path / "images").mkdir(exist_ok=True)
    (tmp_path / "labels").mkdir(exist_ok=True)
    (tmp_path / "images" / "a.png").write_bytes(b"")
    (tmp_path / "labels" / "a.txt").write_text(lines)
    return tmp_path / "images", tmp_path / "labels"


def test_kitti_class_map_and_dontcare(tmp_path):
    images, labels = write_kitti(tmp_path, "\ufeffFace 0 0 0 1 2 11 22 0 0 0 0 0 0 0\r\n"
                                           "DontCare -1 -1 -10 30 30 40 40 -1 -1 -1 -1 -1 -1 -1\n"
                                           "car 0 0 0 1 1 5 5 0 0 0 0 0 0 0\n")
    (s,) = read_kitti(images, labels, class_names=("face",))
    assert s.image.name == "a.png"
    np.testing.assert_allclose(s.boxes, [[1, 2, 11, 22], [30, 30, 40, 40]])
    assert s.ignore.tolist() == [False, True]


def test_kitti_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="KITTI folder not found"):
        read_kitti(tmp_path / "nope", tmp_path)


def test_coco(tmp_path):
    ann = {"images": [{"id": 1, "file_name": "x.jpg"}, {"id": 2, "file_name": "y.jpg"}],
           "categories": [{"id": 7, "name": "face"}, {"id": 8, "name": "hand"}],
           "annotations": [{"image_id": 1, "category_id": 7, "bbox": [1, 2, 10, 20]},
                           {"image_id": 1, "category_id": 7, "bbox": [50, 50, 5, 5], "iscrowd": 1},
                           {"image_id": 2, "category_id": 8, "bbox": [0, 0, 5, 5]}]}
    f = tmp_path / "a.json"
    f.write_text(json.dumps(ann))
    touch_images(tmp_path, ["x.jpg", "y.jpg"])
    a, b = read_coco(f, tmp_path)
    np.testing.assert_allclose(a.boxes, [[1, 2, 11, 22], [50, 50, 55, 55]])
    assert a.ignore.tolist() == [False, True] and len(b.boxes) == 0


def test_coco_malformed(tmp_path):
    f = tmp_path / "a.json"
    f.write_text('{"images": [], "annotations": [}')
    with pytest.raises(LabelError, match=r"a.json:1:"):
        read_coco(f, tmp_path)
    f.write_text(json.dumps({"images": [{"id": 1}], "categories": [], "annotations": []}))
    with pytest.raises(LabelError, match=r"images\[0\] needs id and file_name"):
        read_coco(f, tmp_path)
