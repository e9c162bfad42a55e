"""The one error type of checkpoint reading, checking and writing."""

from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint cannot be read or merged: the message names the file (and tensor, expert)."""
