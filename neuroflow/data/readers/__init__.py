"""Generic file readers, selected by a task's `source.path`.

Importing this package registers the built-in readers (subclasses of `Reader` with a `name`).
"""

from neuroflow.data.readers.base import Reader, build_reader, find_reader, known_readers, read_text, split_lines
from neuroflow.data.readers.images import DenseRows, IdxImages, MatCells, OnehotRows, read_idx
from neuroflow.data.readers.text import Delimited, LabelTextLines, ParallelLines

__all__ = [
    "Reader", "build_reader", "find_reader", "known_readers", "read_text", "split_lines",
    "LabelTextLines", "ParallelLines", "Delimited", "IdxImages", "DenseRows", "OnehotRows", "MatCells",
    "read_idx",
]
