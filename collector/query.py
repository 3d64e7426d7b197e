"""``sensorwire query``: stored samples as a table, CSV or JSON lines."""

from __future__ import annotations

import csv
import math
import sys
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

from sensorwire import render
from sensorwire.collector import storage
from sensorwire.collector.sqlite_store import QueryFilter
from sensorwire.timefmt import iso_from_ns


def _nan_for_null(rows: Iterable[tuple[Any, ...]]) -> Iterator[tuple[Any, ...]]:
    """SQLite stores a NaN reading as NULL: show it as the NaN it was, in every format."""
    for r in rows:
        yield r if r[4] is not None else (*r[:4], math.nan, *r[5:])


def _counted(rows: Iterable[tuple[Any, ...]], seen: list[int]) -> Iterator[tuple[Any, ...]]:
    for r in rows:
        seen[0] += 1
        yield r


def _say_why_empty(reader: storage.Reader, f: QueryFilter, err: TextIO) -> None:
    """No row came: say so on stderr, and name the devices stored when --device names none."""
    if f.device is not None:
        devices = sorted({str(d["device"]) for d in reader.status()})
        if f.device not in devices:
            err.write(f"sensorwire: query: no device {f.device!r} is stored; devices: "
                      f"{', '.join(devices) or 'none yet'} (--device takes the device_id "
                      "alone, without the site)\n")
            return
    if f.device or f.sensor or f.metric or f.since_ns or f.until_ns:
        err.write("sensorwire: query: no rows match (--sensor names a sensor, like env; "
                  "--metric one of its readings, like temperature)\n")
    else:
        err.write("sensorwire: query: nothing is stored yet\n")


def run(db: str, f: QueryFilter, fmt: str, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    reader = storage.connect_reader(db)  # a SQLite path or a PostgreSQL DSN
    seen = [0]
    try:
        rows = _counted(_nan_for_null(reader.query(f)), seen)
        if fmt == "json":
            for t, dev, sensor, metric, value, unit, boot_id, seq in rows:
                out.write(render.json_line({
                    "time": iso_from_ns(t), "device": dev, "sensor": sensor, "metric": metric,
                    "value": render._num(value), "unit": unit, "boot_id": boot_id, "seq": seq,
                }) + "\n")
        elif fmt == "csv":
            w = csv.writer(out, lineterminator="\n")
            w.writerow(["time", "device", "sensor", "metric", "value", "unit"])
            for t, dev, sensor, metric, value, unit, _b, _s in rows:
                # as the table: a unit from older data holding a control character is escaped
                w.writerow([iso_from_ns(t), dev, sensor, metric, repr(value),
                            render.printable(unit or "")])
        else:
            # written as the rows come (widths from the first rows): any number in bounded memory
            for line in render.table_lines(
                    ["time", "device", "sensor", "metric", "value", "unit"],
                    ((iso_from_ns(t), d, s, m, f"{v:.6g}", u) for t, d, s, m, v, u, _b, _q in rows)):
                out.write(line + "\n")
        out.flush()
        if not seen[0] and (f.limit is None or f.limit > 0):
            _say_why_empty(reader, f, err)
    finally:
        reader.close()
    return 0
