"""Repeated measurements and the JSON a script can check (``--json PATH`` of bench.scoring / bench.ranking).

On a shared machine one run of one arm says little: :func:`interleaved` runs every arm once per
round, rounds in a row, so a load change hits every arm alike, and a ratio is taken per round
(both arms of a round ran side by side) before its median. :class:`Figures` collects rates,
ratios and seconds with all their repeats, their median, min and max, plus the machine's core
count and load average, and writes them as JSON.

>>> s = summary([3.0, 1.0, 2.0])
>>> s["median"], s["min"], s["max"], s["repeats"]
(2.0, 1.0, 3.0, [3.0, 1.0, 2.0])
>>> fig = Figures("demo")
>>> _ = fig.ratio("a_over_b", [2.0, 4.0, 3.0], top_level=True)
>>> fig.data["a_over_b"], fig.data["ratios"]["a_over_b"]["median"]
(3.0, 3.0)
"""
from __future__ import annotations

import json
import os
import statistics
import time
from typing import Callable


def summary(values: list[float]) -> dict:
    """``{"median", "min", "max", "spread" ((max - min) / median), "repeats"}`` of ``values``."""
    values = [float(v) for v in values]
    med = statistics.median(values)
    return {"median": med, "min": min(values), "max": max(values),
            "spread": (max(values) - min(values)) / med if med else float("nan"), "repeats": values}


def fmt(s: dict, digits: int = 0) -> str:
    """``median (min-max, n=repeats)`` for a printed table."""
    return f"{s['median']:,.{digits}f} ({s['min']:,.{digits}f}-{s['max']:,.{digits}f}, n={len(s['repeats'])})"


def interleaved(arms: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """Each arm's value per round: round 1 runs every arm once, then round 2, and so on."""
    out: dict[str, list[float]] = {name: [] for name in arms}
    for _ in range(repeats):
        for name, arm in arms.items():
            out[name].append(arm())
    return out


def per_round(numerator: list[float], denominator: list[float]) -> list[float]:
    """Ratio of two arms round by round (each pair ran side by side)."""
    return [a / b for a, b in zip(numerator, denominator)]


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # not on this platform
        return None


class Figures:
    """Every figure of one benchmark run, written as JSON by :meth:`write`.

    ``data`` holds ``cores`` (``os.cpu_count()``), ``load_average`` at the start and at the end
    (1, 5, 15 minutes), ``settings`` (the run's arguments), and per kind (``rates``, ``ratios``,
    ``seconds``) a :func:`summary` per name; ``top_level=True`` also puts the median under the
    name at the top, where a checking script looks first.
    """

    def __init__(self, benchmark: str, settings: dict | None = None):
        self.data: dict = {"benchmark": benchmark, "cores": os.cpu_count(), "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
                           "load_average": {"start": load_average()}, "settings": dict(settings or {}),
                           "rates": {}, "ratios": {}, "seconds": {}}

    def _add(self, kind: str, name: str, values: list[float], top_level: bool, **extra) -> dict:
        s = {**summary(values), **extra}
        self.data[kind][name] = s
        if top_level:
            self.data[name] = s["median"]
        return s

    def rate(self, name: str, values: list[float], unit: str = "candidates/s", top_level: bool = False, **extra) -> dict:
        return self._add("rates", name, values, top_level, unit=unit, **extra)

    def ratio(self, name: str, values: list[float], top_level: bool = False, **extra) -> dict:
        return self._add("ratios", name, values, top_level, **extra)

    def seconds(self, name: str, values: list[float], top_level: bool = False, **extra) -> dict:
        return self._add("seconds", name, values, top_level, **extra)

    def write(self, path: str | None) -> None:
        if not path:
            return
        self.data["load_average"]["end"] = load_average()
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            json.dump(self.data, f, indent=1, sort_keys=False)
            f.write("\n")
        print(f"figures written to {path}")
