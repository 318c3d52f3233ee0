"""Lake files from Python (the model store, training snapshots) with pyarrow filesystems.

Spark reaches the lake through Hadoop (``s3a://`` via hadoop-aws); Python code that reads or writes
lake files itself (``model.store``, ``model.snapshot``, scoring workers on executors) uses
:func:`arrow_filesystem`, which maps the same URIs onto pyarrow: local folders and ``file:`` URIs
to the local filesystem, ``s3a://`` / ``s3://`` to ``pyarrow.fs.S3FileSystem`` with the endpoint,
credentials, region and addressing style of ``conf.settings.ObjectStoreSettings`` (the settings
Spark's s3a client gets; executors get them as ``spark.executorEnv`` variables), other URIs to
whatever pyarrow knows for them.

>>> fs, path = arrow_filesystem("file:///tmp/lake/models")
>>> type(fs).__name__, path
('LocalFileSystem', '/tmp/lake/models')
>>> fs, path = arrow_filesystem("s3a://bucket/lake/models", ObjectStoreSettings(endpoint="http://127.0.0.1:5055"))
>>> type(fs).__name__, path
('S3FileSystem', 'bucket/lake/models')
"""
from __future__ import annotations

import functools
import os
import re
from urllib.parse import urlparse

import pyarrow.fs as pafs

from conf.settings import ObjectStoreSettings, is_object_store


@functools.lru_cache(maxsize=8)
def s3_filesystem(s3: ObjectStoreSettings, connect_timeout_s: float = 5.0) -> pafs.S3FileSystem:
    """One pyarrow S3 client per distinct settings (the settings are frozen, hence hashable)."""
    options: dict = {"region": s3.region, "connect_timeout": connect_timeout_s, "request_timeout": 60.0,
                     "force_virtual_addressing": not s3.path_style_access,
                     "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=max(s3.retries, 1))}
    if s3.endpoint:
        parsed = urlparse(s3.endpoint if "://" in s3.endpoint else f"https://{s3.endpoint}")
        options["endpoint_override"] = parsed.netloc
        options["scheme"] = parsed.scheme or "https"
    if s3.access_key and s3.secret_key:
        options["access_key"], options["secret_key"] = s3.access_key, s3.secret_key
    return pafs.S3FileSystem(**options)


def arrow_filesystem(uri: str, s3: ObjectStoreSettings | None = None) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a lake URI or local path."""
    if is_object_store(uri):
        return s3_filesystem(s3 or ObjectStoreSettings()), uri.split("://", 1)[1].rstrip("/")
    if uri.startswith("file:"):
        return pafs.LocalFileSystem(), os.path.abspath(re.sub(r"^file:(//)?", "", uri))
    if "://" in uri:
        return pafs.FileSystem.from_uri(uri)
    return pafs.LocalFileSystem(), os.path.abspath(uri)


def is_local(fs: pafs.FileSystem) -> bool:
    return isinstance(fs, pafs.LocalFileSystem)
