"""Text that would drive a terminal is refused at intake and escaped when printed.

C0 and C1 control characters ("\\x1b[", "\\x9b" start terminal commands) and
the invisible Unicode format characters (bidi overrides such as U+202E,
zero-width ones) are refused in units and a heartbeat's agent_version, as
control characters always were.  What an older database holds is printed
escaped by ``tail`` and ``query`` (table, CSV and JSON lines).
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from support import frames_stored, run_cli, tcp, wait_until, write

from sensorwire import names, render
from sensorwire.proto import wire
from sensorwire.proto.v1.telemetry_pb2 import Frame

HOSTILE = ["\x1b[31m", "\x9b31m", "\x9d0;pwned\x07", "\x85", "\u202eC\u202c", "\u200b", "\u200f",
           "\u2066x\u2069", "\ufeffC", "\u00ad", "a\u2028b", "\U000e0001"]


@pytest.mark.parametrize("unit", HOSTILE)
def test_a_unit_with_a_control_or_format_character_is_refused(unit: str) -> None:
    assert names.unit_problem(unit) == ("must not hold control or invisible format characters "
                                        "(C0, C1, bidi, zero-width)")


@pytest.mark.parametrize("unit", ["", "C", "°C", "µg/m³", "m/s²", "%", "Ω", "kWh", "l/min"])
def test_units_beyond_ascii_that_print_as_they_read_are_taken(unit: str) -> None:
    assert names.unit_problem(unit) is None


def test_the_decoder_rejects_them_as_bad_names_and_bad_heartbeats() -> None:
    for i, unit in enumerate(HOSTILE, 1):
        f = Frame(site="gh", device_id="pi-1", boot_id=7, seq=i, time_unix_nano=1, sensor="env")
        f.samples.add(metric="t", value=1.0, unit=unit)
        with pytest.raises(wire.WireError) as err:
            wire.Decoder().decode(wire.encode(wire.data_topic("gh", "pi-1", "env"), f))
        assert err.value.reason == "bad_name", unit
        hb = Frame(site="gh", device_id="pi-1", boot_id=7, seq=0, time_unix_nano=1)
        hb.heartbeat.agent_version = "1.0" + unit
        with pytest.raises(wire.WireError) as err:
            wire.Decoder().decode(wire.encode(wire.heartbeat_topic("gh", "pi-1"), hb))
        assert err.value.reason == "bad_heartbeat", unit


def test_tail_prints_a_frame_and_a_heartbeat_with_hidden_characters_escaped() -> None:
    f = Frame(site="gh", device_id="pi-1", boot_id=7, seq=1, time_unix_nano=1, sensor="env")
    f.samples.add(metric="t", value=1.0, unit="°C\x9b2J\u202e")
    hb = Frame(site="gh", device_id="pi-1", boot_id=7, seq=0, time_unix_nano=1)
    hb.heartbeat.agent_version = "1.0\x9b2J\U000e0001"
    for frame, field, text in ((f, "samples", "°C\x9b2J\u202e"), (hb, "heartbeat", "1.0\x9b2J\U000e0001")):
        line = render.json_line(render.frame_dict(frame))
        assert line.isprintable(), line
        assert "°C" in line or frame is hb  # printable text beyond ASCII stays as it is
        back = json.loads(line)[field]
        assert (back[0]["unit"] if field == "samples" else back["agent_version"]) == text


def test_a_table_shows_hidden_characters_as_escapes() -> None:
    out = render.table(["unit"], [["°C\x9b2J\u202e\x1b"]])
    assert all(line.isprintable() for line in out.split("\n"))
    assert out.split("\n")[2] == "°C\\x9b2J\\u202e\\x1b"


@pytest.mark.slow
def test_query_prints_what_an_older_database_holds_escaped(tmp_path: Path, procs: Any) -> None:
    ep, db = tcp(), tmp_path / "t.db"
    procs("agent", "agent", "-c", str(write(tmp_path / "agent.toml", f"""\
site = "gh"
device_id = "pi-1"
[publish]
bind = ["{ep}"]
[[sensors]]
name = "env"
kind = "simulated"
interval_s = 0.05
metrics = [{{ name = "t", signal = "constant", value = 1.0, unit = "C" }}]
[spool]
enabled = false
""")))
    collector = procs("collector", "collector", "-c", str(write(tmp_path / "collector.toml",
                      f'[subscribe]\nconnect = ["{ep}"]\n[storage]\npath = "{db}"\n'
                      "flush_interval_s = 0.05\n")))

    wait_until(lambda: frames_stored(db) >= 3, timeout_s=30, what="frames stored")
    assert collector.terminate() == 0
    conn = sqlite3.connect(db)
    with conn:  # as a version that checked less could have stored it
        conn.execute("UPDATE series SET unit = ?", ("C\x9b2J\u202e",))
    conn.close()
    table = run_cli("query", "--db", str(db), "--format", "table")
    assert table.returncode == 0, table.stderr
    rows = table.stdout.splitlines()
    assert all(r.isprintable() for r in rows) and rows[2].endswith("C\\x9b2J\\u202e")
    lines = run_cli("query", "--db", str(db), "--format", "json").stdout.splitlines()
    assert lines and all(line.isprintable() for line in lines)
    assert json.loads(lines[0])["unit"] == "C\x9b2J\u202e"
    csv_rows = run_cli("query", "--db", str(db), "--format", "csv").stdout.splitlines()
    assert len(csv_rows) > 1 and all(r.isprintable() for r in csv_rows)
    assert csv_rows[1].endswith(",C\\x9b2J\\u202e")
