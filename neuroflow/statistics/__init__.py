"""Data statistics of the experts for the data-aware merges (RegMean Grams, diagonal Fishers).

```python
from neuroflow.statistics import compute_statistics
compute_statistics("runs/experts", "configs/data/text4.yaml", kinds=["regmean", "fisher"], max_batches=50)
```
writes `<expert>/statistics/{regmean,fisher}.safetensors`, which `ManifestExperts.statistics(i, kind)`
hands to `RegMean` / `FisherMerging`. Command line: `python -m neuroflow stats`. See docs/statistics.md.
"""

from neuroflow.statistics.collect import StatisticsRecord, compute_statistics
from neuroflow.statistics.files import (
    KINDS,
    StatisticsFile,
    StatisticsMismatchError,
    open_statistics,
    statistics_path,
    write_statistics,
)
from neuroflow.statistics.module import StatisticsModule

__all__ = [
    "KINDS",
    "StatisticsFile",
    "StatisticsMismatchError",
    "StatisticsModule",
    "StatisticsRecord",
    "compute_statistics",
    "open_statistics",
    "statistics_path",
    "write_statistics",
]
