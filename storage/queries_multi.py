"""Several metrics' trajectories of the same runs in one DuckDB query.

`storage.queries.trajectories` reads one metric per call; a page that shows loss, alignment,
sharpness and per-layer movement of the same runs (Diagnostics) would scan the points table once
per metric. `trajectories_multi` gives, for every (run, metric), exactly the rows
`storage.queries.trajectories(source, run_ids, metric, max_points, log_x)` gives, in one query
(both run storage.queries' one M4 downsampling query).
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from storage.queries import TRAJECTORY_COLUMNS, QuerySource, trajectory_rows
from storage.settings import Settings

COLUMNS = TRAJECTORY_COLUMNS


def trajectories_multi(
    source: Settings | QuerySource,
    run_ids: Sequence[str],
    metrics: Sequence[str],
    max_points: int = 500,
    log_x: bool = True,
) -> pd.DataFrame:
    """Columns run_id, metric, step, value, kind: for each metric (in the order asked) the rows of
    storage.queries.trajectories for that metric (runs in the order asked, steps ascending)."""
    return trajectory_rows(source, run_ids, metrics, max_points, log_x)
