"""neuroflow: fine-tune per-task experts with Lightning and merge them into one multi-task model."""

__version__ = "0.1.0"
