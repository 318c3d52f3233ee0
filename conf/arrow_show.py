"""An Arrow table printed as Spark's ``DataFrame.show(limit, truncate=False)`` prints it, so that
``infnet sql --engine duckdb`` and ``--engine spark`` show a result alike; and timestamps written
to CSV as Spark's ``toPandas`` gives them. No pyspark import: the duckdb engine runs without a JVM.
"""
from __future__ import annotations

import unicodedata

def naive_timestamps(table):
    """Time-zone-aware timestamp columns as UTC wall-clock times (what Spark's toPandas gives in
    the session time zone, UTC), so both engines write the same CSV."""
    import pyarrow as pa

    for i, column in enumerate(table.schema):
        if pa.types.is_timestamp(column.type) and column.type.tz:
            table = table.set_column(i, column.name, table.column(i).cast(pa.timestamp(column.type.unit)))
    return table


_META = str.maketrans({"\n": "\\n", "\r": "\\r", "\t": "\\t", "\f": "\\f", "\b": "\\b",
                       "\u000b": "\\v", "\u0007": "\\a"})


def java_number(text: str) -> str:
    """A float's shortest digits (``repr``) as Java's ``Double.toString`` writes them, as Spark
    shows them: plain in [1e-3, 1e7), else ``d.dddE<n>``.

    >>> [java_number(repr(x)) for x in (1.0, 0.30000000000000004, 1e-05, 12345678.9, 1e20, 0.001, -0.0)]
    ['1.0', '0.30000000000000004', '1.0E-5', '1.23456789E7', '1.0E20', '0.001', '-0.0']
    """
    from decimal import Decimal

    special = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}
    if text in special:
        return special[text]
    value = Decimal(text)
    if value == 0:
        return "-0.0" if text.startswith("-") else "0.0"
    sign, digits, exponent = value.as_tuple()
    power = len(digits) - 1 + exponent  # the decimal exponent of the first digit
    if -3 <= power < 7:
        plain = format(value, "f")
        return plain if "." in plain else plain + ".0"
    significant = "".join(map(str, digits)).rstrip("0") or "0"
    return f"{'-' if sign else ''}{significant[0]}.{significant[1:] or '0'}E{power}"


def spark_text(value, arrow_type) -> str:
    """One value as Spark's ``show`` writes it (NULL, true, [a, b], {k -> v}, {f1, f2}, [0A FF])."""
    import pyarrow as pa

    if value is None:
        return "NULL"
    t = arrow_type
    if pa.types.is_boolean(t):
        return "true" if value else "false"
    if pa.types.is_floating(t):
        if not pa.types.is_float64(t) and value == value and abs(value) != float("inf"):
            import numpy as np

            return java_number(str(np.float32(value)))  # Float.toString: float32's shortest digits
        return java_number(repr(float(value)))
    if pa.types.is_decimal(t):
        return format(value, "f")
    if pa.types.is_timestamp(t):
        if value.tzinfo is not None:
            import datetime as dt

            value = value.astimezone(dt.timezone.utc).replace(tzinfo=None)
        text = value.strftime("%Y-%m-%d %H:%M:%S")
        return text + (f".{value.microsecond:06d}".rstrip("0") if value.microsecond else "")
    if pa.types.is_date(t):
        return value.isoformat()
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
        return "[" + " ".join(f"{b:02X}" for b in value) + "]"
    if pa.types.is_map(t):
        return "{" + ", ".join(f"{spark_text(k, t.key_type)} -> {spark_text(v, t.item_type)}" for k, v in value) + "}"
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return "[" + ", ".join(spark_text(v, t.value_type) for v in value) + "]"
    if pa.types.is_struct(t):
        return "{" + ", ".join(spark_text(value[t.field(i).name], t.field(i).type) for i in range(t.num_fields)) + "}"
    return str(value)


def text_width(text: str) -> int:
    """Columns ``text`` takes in a terminal (full-width characters count 2, as Spark counts them)."""
    return sum(2 if unicodedata.east_asian_width(c) in "FW" else 1 for c in text)


def show_string(table, limit: int) -> str:
    """``table`` (a pyarrow.Table) as Spark's ``DataFrame.show(limit, truncate=False)`` prints it.

    >>> import pyarrow as pa
    >>> print(show_string(pa.table({"id": [1, None], "v": [0.5, 1e-5]}), 1))
    +---+---+
    |id |v  |
    +---+---+
    |1  |0.5|
    +---+---+
    only showing top 1 row
    """
    limit = max(limit, 0)
    header = list(table.column_names)
    rows = [[spark_text(v, table.schema.field(i).type).translate(_META)
             for v in table.column(i).slice(0, limit).to_pylist()]
            for i in range(table.num_columns)]
    cells = [header] + [list(r) for r in zip(*rows)] if rows else [header]
    widths = [max(3, *(text_width(row[i]) for row in cells)) for i in range(len(header))]
    line = "+" + "+".join("-" * w for w in widths) + "+"

    def render(row):
        return "|" + "|".join(c + " " * (w - text_width(c)) for c, w in zip(row, widths)) + "|"

    out = [line, render(header), line, *(render(r) for r in cells[1:]), line]
    text = "\n".join(out) + "\n"
    if table.num_rows > limit:
        text += f"only showing top {limit} row{'' if limit == 1 else 's'}"
    return text
