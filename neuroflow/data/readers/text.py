"""Readers for line- and field-oriented text files."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path
from typing import Literal

from neuroflow.data.readers.base import Columns, Reader, SplitFiles, read_text, split_lines


def _single(files: SplitFiles, reader: str, task: str) -> Path:
    if isinstance(files, dict):
        raise ValueError(f"task {task!r}: reader {reader!r} takes one file per split, got roles {sorted(files)}")
    return files


class LabelTextLines(Reader):
    """One example per line, parsed by a regular expression whose named groups become columns.

    Example: `pattern: '^(?P<label>\\S+) (?P<text>.*)$'` for `LABEL text` files (sst2, trec, subj).

    Args:
        pattern: regex with named groups, matched against each whole line.
        encoding: text encoding of the files.
        errors: decoding error handler (`strict`, `replace`, ...).
        skip_blank: ignore blank lines instead of reporting them as non-matching.
    """

    name = "label_text_lines"

    def __init__(
        self,
        pattern: str = r"^(?P<label>\S+) (?P<text>.*)$",
        encoding: str = "utf-8",
        errors: str = "strict",
        skip_blank: bool = False,
    ) -> None:
        try:
            self.regex = re.compile(pattern)
        except re.error as err:
            raise ValueError(f"pattern {pattern!r} is not a valid regular expression: {err}") from err
        if not self.regex.groupindex:
            raise ValueError(f"pattern {pattern!r} has no named groups (?P<column>...)")
        self.pattern, self.encoding, self.errors, self.skip_blank = pattern, encoding, errors, skip_blank

    def read_split(self, files: SplitFiles, task: str) -> Columns:
        path = _single(files, self.name, task)
        columns: Columns = {g: [] for g in self.regex.groupindex}
        for lineno, line in split_lines(read_text(path, self.encoding, self.errors), self.skip_blank):
            match = self.regex.fullmatch(line)
            if match is None:
                raise ValueError(
                    f"task {task!r}: {str(path)}:{lineno}: line does not match pattern {self.pattern!r}: {line[:80]!r}"
                )
            for group, value in match.groupdict().items():
                columns[group].append(value)
        return columns


class ParallelLines(Reader):
    """Line-aligned files, one per column (e.g. `train_text.txt` + `train_labels.txt`).

    `data_files` maps each split to `{column: file}`. Items are separated by "\\n" only, so a blank
    line is an (empty) item and text containing other line-break characters stays whole; all files
    of a split must hold the same number of items.

    Args:
        encoding: text encoding of the files.
        errors: decoding error handler.
    """

    name = "parallel_lines"

    def __init__(self, encoding: str = "utf-8", errors: str = "strict") -> None:
        self.encoding, self.errors = encoding, errors

    def read_split(self, files: SplitFiles, task: str) -> Columns:
        if not isinstance(files, dict) or not files:
            raise ValueError(
                f"task {task!r}: reader 'parallel_lines' needs, per split, a mapping column -> file, got {files!r}"
            )
        columns: Columns = {}
        counts: dict[str, int] = {}
        for column, path in files.items():
            columns[column] = [line for _, line in split_lines(read_text(path, self.encoding, self.errors))]
            counts[str(path)] = len(columns[column])
        if len(set(counts.values())) > 1:
            raise ValueError(f"task {task!r}: parallel files have different numbers of lines: {counts}")
        return columns


class Delimited(Reader):
    """CSV/TSV files, with or without a header row, with a choice of quoting.

    Args:
        column_names: names of the fields, required without a header (overrides a header).
        header: the first row holds the column names.
        delimiter: field separator (`","`, `"\\t"`, ...).
        quoting: `minimal` (double quotes group fields) or `none` (quotes are ordinary characters,
            needed for files such as tab-separated SMS texts with unbalanced quotes).
        encoding: text encoding of the files.
        errors: decoding error handler.
        skip_blank: ignore blank rows.
    """

    name = "delimited"

    def __init__(
        self,
        column_names: list[str] | None = None,
        header: bool = False,
        delimiter: str = ",",
        quoting: Literal["minimal", "none"] = "minimal",
        encoding: str = "utf-8",
        errors: str = "strict",
        skip_blank: bool = True,
    ) -> None:
        if not header and not column_names:
            raise ValueError("`column_names` is required when the file has no header")
        if quoting not in ("minimal", "none"):
            raise ValueError(f"quoting {quoting!r} must be 'minimal' or 'none'")
        self.column_names = list(column_names) if column_names else None
        self.header, self.delimiter, self.quoting = header, delimiter, quoting
        self.encoding, self.errors, self.skip_blank = encoding, errors, skip_blank

    def read_split(self, files: SplitFiles, task: str) -> Columns:
        path = _single(files, self.name, task)
        text = read_text(path, self.encoding, self.errors)
        quoting = csv.QUOTE_NONE if self.quoting == "none" else csv.QUOTE_MINIMAL
        rows = csv.reader(io.StringIO(text, newline=""), delimiter=self.delimiter, quoting=quoting)
        names = self.column_names
        if self.header:
            first = next(rows, None)
            if first is None:
                raise ValueError(f"task {task!r}: {str(path)!r} is empty (expected a header row)")
            names = names or first
        assert names is not None
        columns: Columns = {n: [] for n in names}
        for row in rows:
            if self.skip_blank and not any(field.strip() for field in row):
                continue
            if len(row) != len(names):
                raise ValueError(
                    f"task {task!r}: {str(path)}:{rows.line_num}: {len(row)} fields, expected {len(names)} "
                    f"({names}); check `delimiter`/`quoting`"
                )
            for name, value in zip(names, row):
                columns[name].append(value)
        return columns
