"""The bundled raw files restricted to a user sample, for tests that run whole pipelines (the
cluster proof, the Airflow DAG run): a landing zone in the layout ingest reads (``$INFNET_RAW_DIR``)."""
from __future__ import annotations

from pathlib import Path

USER_SAMPLE_MODULO = 40  # ~700 users, ~400 impressions a day: the pipeline's work, not the data's size


def landing_zone(folder: Path, modulo: int = USER_SAMPLE_MODULO) -> Path:
    """Log, users and history of the users with ``user_id % modulo == 0``; videos as they are (a link)."""
    import pandas as pd

    from conf.settings import DEMO_DATA_DIR, RAW_SOURCE_FILES, raw_sources

    source = raw_sources(str(DEMO_DATA_DIR))
    folder.mkdir()
    keep = lambda df: df[df.user_id % modulo == 0]  # noqa: E731
    keep(pd.read_csv(source["log"])).to_csv(folder / RAW_SOURCE_FILES["log"], index=False)
    keep(pd.read_csv(source["users"])).to_csv(folder / RAW_SOURCE_FILES["users"], index=False)
    keep(pd.read_parquet(source["history"])).to_parquet(folder / RAW_SOURCE_FILES["history"], index=False)
    (folder / RAW_SOURCE_FILES["videos"]).symlink_to(source["videos"])
    return folder
