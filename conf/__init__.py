"""Shared core: settings, table names and contracts, the Spark session, and lake I/O helpers."""
