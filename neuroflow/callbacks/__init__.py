"""Lightning callbacks: `ExpertCollector` writes each finished fit as an expert."""

from neuroflow.callbacks.expert_collector import ExpertCollector

__all__ = ["ExpertCollector"]
