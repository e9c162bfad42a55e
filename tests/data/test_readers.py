"""The generic readers on small hand-built files."""

import gzip
import struct

import numpy as np
import pytest

from neuroflow.data.readers import (
    Delimited, DenseRows, IdxImages, LabelTextLines, MatCells, OnehotRows, ParallelLines,
    find_reader, known_readers, read_idx, split_lines,
)


def test_known_readers():
    assert known_readers() == sorted(
        ["label_text_lines", "parallel_lines", "delimited", "idx_images", "dense_rows", "onehot_rows", "mat_cells"]
    )
    assert find_reader("delimited") is Delimited
    assert find_reader("neuroflow.data.readers.text.Delimited") is Delimited
    assert find_reader("csv") is None and find_reader("stanfordnlp/sst2") is None
    with pytest.raises(ValueError, match="not a neuroflow.data.readers.Reader subclass"):
        find_reader("collections.OrderedDict")


def test_split_lines_uses_newline_only():
    text = "a\u2028b\nc\x85d\n\ne\r\n"
    assert split_lines(text) == [(1, "a\u2028b"), (2, "c\x85d"), (3, ""), (4, "e")]
    assert split_lines(text, skip_blank=True) == [(1, "a\u2028b"), (2, "c\x85d"), (4, "e")]


def test_label_text_lines(tmp_path):
    f = tmp_path / "d.txt"
    f.write_bytes("1 good film\n0 bad\xe9 one\n".encode("cp1252"))
    cols = LabelTextLines(encoding="cp1252").read_split(f, "t")
    assert cols == {"label": ["1", "0"], "text": ["good film", "bad\xe9 one"]}
    with pytest.raises(ValueError, match="not valid utf-8 at byte"):
        LabelTextLines().read_split(f, "t")
    f.write_text("1 ok\nnolabel\n")
    with pytest.raises(ValueError, match=r"task 't': .*d.txt:2: line does not match pattern"):
        LabelTextLines().read_split(f, "t")
    fine = LabelTextLines(pattern=r"(?P<label>[A-Z]+):(?P<fine>\S+) (?P<text>.*)")
    f.write_text("DESC:manner How did it go ?\n")
    assert fine.read_split(f, "t") == {"label": ["DESC"], "fine": ["manner"], "text": ["How did it go ?"]}
    with pytest.raises(ValueError, match="no named groups"):
        LabelTextLines(pattern=r"(\S+) (.*)")


def test_parallel_lines_keeps_blank_items_and_checks_lengths(tmp_path):
    text, labels = tmp_path / "x_text.txt", tmp_path / "x_labels.txt"
    text.write_text("first\n\nthird has \u2028 inside\n", encoding="utf-8")
    labels.write_text("0\n1\n2\n")
    cols = ParallelLines().read_split({"text": text, "label": labels}, "t")
    assert cols == {"text": ["first", "", "third has \u2028 inside"], "label": ["0", "1", "2"]}
    labels.write_text("0\n1\n")
    with pytest.raises(ValueError, match="different numbers of lines"):
        ParallelLines().read_split({"text": text, "label": labels}, "t")


def test_delimited_quoting_and_header(tmp_path):
    f = tmp_path / "sms.tsv"
    f.write_text('ham\tsay "hi\nspam\tWIN "now" \t\n')
    with pytest.raises(ValueError):
        Delimited(column_names=["label", "text"], delimiter="\t").read_split(f, "t")
    f.write_text('ham\tsay "hi\nspam\tWIN "now"\n')
    cols = Delimited(column_names=["label", "text"], delimiter="\t", quoting="none").read_split(f, "t")
    assert cols == {"label": ["ham", "spam"], "text": ['say "hi', 'WIN "now"']}
    g = tmp_path / "h.csv"
    g.write_text('text,category\n"a, b",x\nc,y\n')
    assert Delimited(header=True).read_split(g, "t") == {"text": ["a, b", "c"], "category": ["x", "y"]}
    with pytest.raises(ValueError, match="column_names` is required"):
        Delimited()
    g.write_text("1,2\n3\n")
    with pytest.raises(ValueError, match=r"h.csv:2: 1 fields, expected 2"):
        Delimited(column_names=["a", "b"]).read_split(g, "t")


def _write_idx(path, array, code):
    header = struct.pack(">BBBB", 0, 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.tobytes())


def test_idx_images(tmp_path):
    images = np.array([[[0, 255], [51, 102]], [[255, 0], [0, 0]], [[1, 2], [3, 4]]], dtype=np.uint8)
    labels = np.array([7, 1, 0], dtype=np.uint8)
    _write_idx(tmp_path / "i.gz", images, 0x08)
    _write_idx(tmp_path / "l.gz", labels, 0x08)
    assert np.array_equal(read_idx(tmp_path / "i.gz"), images)
    cols = IdxImages().read_split({"images": tmp_path / "i.gz", "labels": tmp_path / "l.gz"}, "t")
    assert cols["label"].tolist() == [7, 1, 0]
    np.testing.assert_allclose(cols["image"][0], [[0.0, 1.0], [0.2, 0.4]], atol=1e-6)
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "bad")
    _write_idx(tmp_path / "l2.gz", labels[:2], 0x08)
    with pytest.raises(ValueError, match="are not N x H x W images with N labels"):
        IdxImages().read_split({"images": tmp_path / "i.gz", "labels": tmp_path / "l2.gz"}, "t")


def test_dense_rows_label_first_and_last(tmp_path):
    f = tmp_path / "u.gz"
    with gzip.open(f, "wt") as fh:
        fh.write("3.0000 -1 1 0 0.5\n9 1 1 1 1\n")
    cols = DenseRows(shape=[2, 2], label_position=0, value_range=[-1, 1]).read_split(f, "t")
    assert cols["label"].tolist() == [3, 9]
    np.testing.assert_allclose(cols["image"][0], [[0.0, 1.0], [0.5, 0.75]])
    g = tmp_path / "d.csv"
    g.write_text("0,16,8,4,5\n16,16,16,16,2\n")
    cols = DenseRows(shape=[2, 2], delimiter=",", value_range=[0, 16]).read_split(g, "t")
    assert cols["label"].tolist() == [5, 2]
    np.testing.assert_allclose(cols["image"][0], [[0, 1], [0.5, 0.25]])
    with pytest.raises(ValueError, match=r"outside value_range \[0.0, 1.0\]"):
        DenseRows(shape=[2, 2], delimiter=",").read_split(g, "t")
    with pytest.raises(ValueError, match="rows have 5 values, expected 10"):
        DenseRows(shape=[3, 3], delimiter=",", value_range=[0, 16]).read_split(g, "t")
    g.write_text("0,1,0,1,2.5\n")
    with pytest.raises(ValueError, match="label 2.5 is not an integer"):
        DenseRows(shape=[2, 2], delimiter=",").read_split(g, "t")


def test_onehot_rows(tmp_path):
    f = tmp_path / "s.data"
    f.write_bytes(b"1 0 0 1 0 0 1 \r\n0 1 1 0 1 0 0 \r\n")
    cols = OnehotRows(shape=[2, 2], num_classes=3).read_split(f, "t")
    assert cols["label"].tolist() == [2, 0]
    np.testing.assert_allclose(cols["image"][1], [[0, 1], [1, 0]])
    f.write_bytes(b"1 0 0 1 0 1 1\n")
    with pytest.raises(ValueError, match=r"s.data:1: label block \[0.0, 1.0, 1.0\] is not one-hot"):
        OnehotRows(shape=[2, 2], num_classes=3).read_split(f, "t")


def test_mat_cells(tmp_path):
    import scipy.io

    cells = np.empty((2, 3), dtype=object)
    for c in range(2):
        for i in range(3):
            cells[c, i] = np.full((4, 5), (c + i) % 2, dtype=np.uint8)
    scipy.io.savemat(tmp_path / "a.mat", {"dat": cells})
    cols = MatCells().read_split(tmp_path / "a.mat", "t")
    assert cols["image"].shape == (6, 4, 5)
    assert cols["label"].tolist() == [0, 0, 0, 1, 1, 1]
    assert cols["image"][1].max() == 1.0 and cols["image"][0].max() == 0.0
    cols_t = MatCells(label_axis=1).read_split(tmp_path / "a.mat", "t")
    assert cols_t["label"].tolist() == [0, 0, 1, 1, 2, 2]
    with pytest.raises(ValueError, match=r"has no variable 'images' \(found \['dat'\]\)"):
        MatCells(variable="images").read_split(tmp_path / "a.mat", "t")
