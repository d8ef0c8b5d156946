"""The one percentile definition of the report and the dashboard (they must print the same p95).

numpy's "linear" method: interpolation between the closest ranks (Hyndman & Fan's type 7, what
numpy, R and Excel's PERCENTILE use by default).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def percentile(values: Sequence[float], q: float) -> float | None:
    """The `q`th percentile (0-100) of `values`, in any order; None when there are none."""
    if not len(values):
        return None
    return float(np.percentile(np.asarray(values, dtype=np.float64), q, method="linear"))
