"""A Python DB-API connection to the SQL endpoint (``scripts/thrift-server.sh``), with PyHive.

The Thrift server speaks HiveServer2's protocol (binary transport, SASL PLAIN with no password when
authentication is off, Spark's default); PyHive's ``hive.connect`` with ``auth="NONE"`` is a
DB-API 2.0 client for it::

    from conf.sql_endpoint import connect
    with connect() as conn:
        cur = conn.cursor()
        cur.execute("SELECT model_name, count(*) FROM infnet.scores GROUP BY model_name")
        print(cur.fetchall())
"""
from __future__ import annotations

import contextlib
import getpass
from collections.abc import Iterator

from conf.settings import ServiceSettings


@contextlib.contextmanager
def connect(services: ServiceSettings | None = None, username: str | None = None,
            database: str = "default") -> Iterator:
    """A PyHive connection to ``services.host:services.thrift_port``, closed on exit."""
    from pyhive import hive

    services = services or ServiceSettings()
    conn = hive.connect(host=services.host, port=services.thrift_port, username=username or getpass.getuser(),
                        database=database, auth="NONE")
    try:
        yield conn
    finally:
        conn.close()


def query(sql: str, services: ServiceSettings | None = None) -> list[tuple]:
    """Run one statement on the endpoint and return its rows."""
    with connect(services) as conn:
        cursor = conn.cursor()
        try:
            cursor.execute(sql)
            return cursor.fetchall()
        finally:
            cursor.close()
