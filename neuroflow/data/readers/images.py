"""Readers for small image datasets stored as IDX, pixel-value rows or MATLAB cells.

Each returns `image` (float32 array N x H x W, scaled to [0, 1] from the declared `value_range`)
and `label` (the class index as stored in the source; the task's label mapping turns it into an
index of `label_names`).
"""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import numpy as np

from neuroflow.data.readers.base import Columns, Reader, SplitFiles, read_text
from neuroflow.data.readers.text import _single

_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def scale_to_unit(values: np.ndarray, value_range: list[float], where: str) -> np.ndarray:
    """Map `value_range` linearly onto [0, 1], refusing values outside the declared range."""
    if len(value_range) != 2 or value_range[1] <= value_range[0]:
        raise ValueError(f"{where}: value_range must be [low, high] with low < high, got {value_range}")
    low, high = float(value_range[0]), float(value_range[1])
    vmin, vmax = float(values.min(initial=low)), float(values.max(initial=low))
    tol = 1e-6 * (high - low)
    if vmin < low - tol or vmax > high + tol:
        raise ValueError(f"{where}: pixel values span [{vmin}, {vmax}], outside value_range [{low}, {high}]")
    return ((values.astype(np.float64) - low) / (high - low)).clip(0.0, 1.0).astype(np.float32)


def _integral_labels(raw: np.ndarray, where: str) -> np.ndarray:
    labels = np.rint(raw).astype(np.int64)
    if not np.allclose(raw, labels):
        bad = raw[~np.isclose(raw, labels)][0]
        raise ValueError(f"{where}: label {bad} is not an integer")
    return labels


def read_idx(path: Path) -> np.ndarray:
    """An IDX array (the MNIST file format), gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{str(path)!r} is not an IDX file (bad magic number)")
    ndim = data[3]
    dims = tuple(int(d) for d in np.frombuffer(data, ">i4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expected = int(np.prod(dims)) * dtype.itemsize
    body = data[4 + 4 * ndim:]
    if len(body) != expected:
        raise ValueError(f"{str(path)!r}: IDX header promises {dims} ({expected} bytes), file has {len(body)}")
    return np.frombuffer(body, dtype).reshape(dims)


class IdxImages(Reader):
    """IDX image + label files (MNIST layout); `data_files` maps each split to `{images, labels}`.

    Args:
        value_range: the pixel range in the file, mapped onto [0, 1].
    """

    name = "idx_images"
    file_roles = ("images", "labels")

    def __init__(self, value_range: list[float] = [0.0, 255.0]) -> None:
        self.value_range = list(value_range)

    def read_split(self, files: SplitFiles, task: str) -> Columns:
        if not isinstance(files, dict) or set(files) != {"images", "labels"}:
            raise ValueError(f"task {task!r}: reader 'idx_images' needs, per split, {{images: ..., labels: ...}}, got {files!r}")
        images, labels = read_idx(files["images"]), read_idx(files["labels"])
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(
                f"task {task!r}: {str(files['images'])!r} {images.shape} and {str(files['labels'])!r} "
                f"{labels.shape} are not N x H x W images with N labels"
            )
        pixels = scale_to_unit(images, self.value_range, f"task {task!r}: {str(files['images'])!r}")
        return {"image": pixels, "label": labels.astype(np.int64)}


class DenseRows(Reader):
    """One image per row of numbers: H*W pixel values and the label (first or last field).

    Args:
        shape: image height and width; a row holds `H*W` pixels plus the label.
        label_position: `0` (label first) or `-1` (label last).
        delimiter: field separator; `None` splits on any whitespace.
        value_range: the pixel range in the file, mapped onto [0, 1].
    """

    name = "dense_rows"

    def __init__(
        self,
        shape: list[int],
        label_position: int = -1,
        delimiter: str | None = None,
        value_range: list[float] = [0.0, 1.0],
    ) -> None:
        if len(shape) != 2 or min(shape) < 1:
            raise ValueError(f"shape must be [height, width], got {shape}")
        if label_position not in (0, -1):
            raise ValueError(f"label_position must be 0 (first) or -1 (last), got {label_position}")
        self.shape, self.label_position = [int(s) for s in shape], label_position
        self.delimiter, self.value_range = delimiter, list(value_range)

    @property
    def label_width(self) -> int:
        return 1

    def _rows(self, path: Path, task: str) -> np.ndarray:
        text = read_text(path)
        try:
            rows = np.loadtxt(io.StringIO(text), delimiter=self.delimiter, ndmin=2, dtype=np.float64)
        except ValueError as err:
            raise ValueError(f"task {task!r}: {str(path)!r}: not a table of numbers: {err}") from err
        width = self.shape[0] * self.shape[1] + self.label_width
        if rows.shape[1] != width:
            raise ValueError(
                f"task {task!r}: {str(path)!r}: rows have {rows.shape[1]} values, expected {width} "
                f"({self.shape[0]}x{self.shape[1]} pixels + {self.label_width} label value(s))"
            )
        return rows

    def _labels(self, label_values: np.ndarray, path: Path, task: str) -> np.ndarray:
        return _integral_labels(label_values[:, 0], f"task {task!r}: {str(path)!r}")

    def read_split(self, files: SplitFiles, task: str) -> Columns:
        path = _single(files, self.name, task)
        rows = self._rows(path, task)
        k = self.label_width
        if self.label_position == 0:
            label_values, pixels = rows[:, :k], rows[:, k:]
        else:
            label_values, pixels = rows[:, -k:], rows[:, :-k]
        images = scale_to_unit(pixels, self.value_range, f"task {task!r}: {str(path)!r}")
        return {"image": images.reshape(-1, *self.shape), "label": self._labels(label_values, path, task)}


class OnehotRows(DenseRows):
    """Like `dense_rows`, with the label stored as `num_classes` one-hot values (semeion).

    Args:
        shape: image height and width.
        num_classes: width of the one-hot block.
        label_position: `0` (one-hot block first) or `-1` (last).
        delimiter: field separator; `None` splits on any whitespace.
        value_range: the pixel range in the file, mapped onto [0, 1].
    """

    name = "onehot_rows"

    def __init__(
        self,
        shape: list[int],
        num_classes: int,
        label_position: int = -1,
        delimiter: str | None = None,
        value_range: list[float] = [0.0, 1.0],
    ) -> None:
        super().__init__(shape, label_position, delimiter, value_range)
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.num_classes = int(num_classes)

    @property
    def label_width(self) -> int:
        return self.num_classes

    def _labels(self, label_values: np.ndarray, path: Path, task: str) -> np.ndarray:
        is_onehot = np.isin(label_values, (0.0, 1.0)).all(axis=1) & (label_values.sum(axis=1) == 1)
        if not is_onehot.all():
            row = int(np.argmin(is_onehot))
            raise ValueError(
                f"task {task!r}: {str(path)}:{row + 1}: label block {label_values[row].tolist()} is not one-hot"
            )
        return label_values.argmax(axis=1).astype(np.int64)


class MatCells(Reader):
    """A MATLAB cell array of equally sized images, one axis indexing the class (binalpha).

    Args:
        variable: the cell array's variable name in the `.mat` file.
        label_axis: the cell-array axis that indexes the class (0: rows are classes).
        value_range: the pixel range in the file, mapped onto [0, 1].
    """

    name = "mat_cells"

    def __init__(self, variable: str = "dat", label_axis: int = 0, value_range: list[float] = [0.0, 1.0]) -> None:
        if label_axis not in (0, 1):
            raise ValueError(f"label_axis must be 0 or 1, got {label_axis}")
        self.variable, self.label_axis, self.value_range = variable, label_axis, list(value_range)

    def read_split(self, files: SplitFiles, task: str) -> Columns:
        import scipy.io

        path = _single(files, self.name, task)
        try:
            mat = scipy.io.loadmat(str(path))
        except Exception as err:  # scipy raises several unrelated types for a bad file
            raise ValueError(f"task {task!r}: {str(path)!r} is not a readable MATLAB file: {err}") from err
        if self.variable not in mat:
            found = sorted(k for k in mat if not k.startswith("__"))
            raise ValueError(f"task {task!r}: {str(path)!r} has no variable {self.variable!r} (found {found})")
        cells = mat[self.variable]
        if cells.dtype != object or cells.ndim != 2:
            raise ValueError(f"task {task!r}: {str(path)!r}: {self.variable!r} is not a 2-D cell array")
        if self.label_axis == 1:
            cells = cells.T
        images, labels = [], []
        for label in range(cells.shape[0]):
            for item in range(cells.shape[1]):
                img = np.asarray(cells[label, item])
                if img.ndim != 2 or (images and img.shape != images[0].shape):
                    raise ValueError(
                        f"task {task!r}: {str(path)!r}: cell ({label}, {item}) has shape {img.shape}, "
                        f"expected {images[0].shape if images else 'a 2-D image'}"
                    )
                images.append(img)
                labels.append(label)
        pixels = scale_to_unit(np.stack(images), self.value_range, f"task {task!r}: {str(path)!r}")
        return {"image": pixels, "label": np.asarray(labels, dtype=np.int64)}
