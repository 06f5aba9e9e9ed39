#!/usr/bin/env python3
"""What a capture trigger costs a SQLite writer, piece by piece, against the floor.

SQLite has no statement triggers and no change stream another process can
read, so capture is a row trigger inside every write. This measures one
connection's single-row UPDATEs (autocommit, WAL, synchronous=NORMAL, as
realtide leaves the file; each statement text is new, so SQLite compiles it
and its trigger every time, as a shell or a driver without a statement cache
does) and one UPDATE of every row, for:

- no trigger;
- the floor: one AFTER UPDATE ... FOR EACH ROW trigger inserting an empty
  row (VALUES (NULL)) into a table holding only an integer primary key;
- an empty row in a log shaped like realtide's (its columns, AUTOINCREMENT,
  the index by table), then without that index, then without AUTOINCREMENT;
- realtide's trigger (whole old and new rows as JSON), then the same rows
  written as SQL literals by quote() instead.

The kinds take turns, five rounds, medians. Run: python3
benches/sqlite-trigger-floor.py (uses the sqlite3 library Python links).
"""

import os
import sqlite3
import statistics
import tempfile
import time

ROWS = 50_000
SINGLE = 5_000
ROUNDS = 5
COLUMNS = ["id", "value", "sent_ns"]
NOW_MS = "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)"


def value(alias, column):
    # As realtide's trigger spells a column (src/changes/sqlite.rs).
    v = f'{alias}."{column}"'
    return (
        f"CASE typeof({v}) WHEN 'blob' THEN json_object('$blob', hex({v})) "
        f"WHEN 'real' THEN json_object('$real', printf('%!.20g', {v})) ELSE {v} END"
    )


def row_json(alias):
    return "json_object(" + ", ".join(f"'{c}', {value(alias, c)}" for c in COLUMNS) + ")"


def row_quoted(alias):
    marks = ",".join(["%s"] * len(COLUMNS))
    return f"printf('{marks}', " + ", ".join(f'quote({alias}."{c}")' for c in COLUMNS) + ")"


def log(autoincrement=True, by_table=True):
    sql = (
        f"CREATE TABLE _realtide_changes (seq INTEGER PRIMARY KEY {'AUTOINCREMENT' if autoincrement else ''}, "
        "table_name TEXT NOT NULL, op TEXT NOT NULL, new_row TEXT, old_row TEXT, changed_at INTEGER NOT NULL);"
    )
    if by_table:
        sql += "CREATE INDEX _realtide_changes_by_table ON _realtide_changes (table_name, seq);"
    return sql


def logged(rows):
    return (
        "INSERT INTO _realtide_changes (table_name, op, new_row, old_row, changed_at) "
        f"VALUES ('bench_rows', 'UPDATE', {rows}, {NOW_MS})"
    )


KINDS = {
    "no trigger": (None, ""),
    "the floor": ("INSERT INTO floor_log VALUES (NULL)", "CREATE TABLE floor_log (id INTEGER PRIMARY KEY);"),
    "empty log row": (logged("NULL, NULL"), log()),
    "  without the index": (logged("NULL, NULL"), log(by_table=False)),
    "  nor AUTOINCREMENT": (logged("NULL, NULL"), log(autoincrement=False, by_table=False)),
    "realtide's trigger": (logged(f"{row_json('NEW')}, {row_json('OLD')}"), log()),
    "  rows by quote()": (logged(f"{row_quoted('NEW')}, {row_quoted('OLD')}"), log()),
}


def database(path, body, ddl):
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute(
        "CREATE TABLE bench_rows (id BIGINT PRIMARY KEY, value BIGINT NOT NULL, sent_ns BIGINT NOT NULL)"
    )
    conn.execute(
        f"WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < {ROWS}) "
        "INSERT INTO bench_rows SELECT x, 0, 0 FROM c"
    )
    conn.executescript(ddl)
    if body is not None:
        conn.execute(f"CREATE TRIGGER capture AFTER UPDATE ON bench_rows FOR EACH ROW BEGIN {body}; END")
    return conn


def main():
    print(
        f"SQLite {sqlite3.sqlite_version}: {ROWS} rows; {SINGLE} single-row UPDATEs and one bulk "
        f"UPDATE per kind and round, {ROUNDS} rounds, medians"
    )
    with tempfile.TemporaryDirectory() as dir:
        conns = {
            name: database(os.path.join(dir, f"{i}.db"), body, ddl)
            for i, (name, (body, ddl)) in enumerate(KINDS.items())
        }
        single = {name: [] for name in KINDS}
        bulk = {name: [] for name in KINDS}
        for round in range(ROUNDS):
            for name, conn in conns.items():
                started = time.perf_counter()
                for i in range(SINGLE):
                    row = 1 + (i * 7 + round * SINGLE) % ROWS
                    conn.execute(f"UPDATE bench_rows SET value = value + 1 WHERE id = {row}")
                single[name].append((time.perf_counter() - started) / SINGLE)
                started = time.perf_counter()
                conn.execute("UPDATE bench_rows SET value = value + 1")
                bulk[name].append(time.perf_counter() - started)
        floor = (statistics.median(single["the floor"]), statistics.median(bulk["the floor"]))
        for name in KINDS:
            s, b = statistics.median(single[name]), statistics.median(bulk[name])
            print(
                f"  {name:22} single-row {s * 1e6:6.1f} µs ({s / floor[0]:4.2f}x the floor)   "
                f"bulk {b * 1000:6.1f} ms ({b / floor[1]:4.2f}x the floor)"
            )


if __name__ == "__main__":
    main()
