#!/usr/bin/env python3
"""What any capture trigger costs a SQLite writer, as a floor under realtide's.

SQLite has no statement triggers and no change stream another process can
read, so capture is a row trigger inside every write. This measures one
connection's single-row UPDATEs (autocommit, WAL, synchronous=NORMAL, as
realtide leaves the file) and one UPDATE of every row, for: no trigger; a
trigger that appends a row holding no data to a log shaped like realtide's;
and realtide's own trigger body for the table. Run: python3
benches/sqlite-trigger-floor.py (uses the sqlite3 library Python links).
"""

import os
import sqlite3
import tempfile
import time

ROWS = 50_000
SINGLE = 20_000
COLUMNS = ["id", "value", "sent_ns"]


def value(alias, column):
    # As realtide's trigger spells a column (src/changes/sqlite.rs).
    v = f'{alias}."{column}"'
    return (
        f"CASE typeof({v}) WHEN 'blob' THEN json_object('$blob', hex({v})) "
        f"WHEN 'real' THEN json_object('$real', printf('%!.20g', {v})) ELSE {v} END"
    )


def row_json(alias):
    return "json_object(" + ", ".join(f"'{c}', {value(alias, c)}" for c in COLUMNS) + ")"


BODIES = {
    "no trigger": None,
    "empty log row": "NULL, NULL",
    "realtide's trigger": f"{row_json('NEW')}, {row_json('OLD')}",
}


def database(path, body):
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
    conn.execute(
        "CREATE TABLE _realtide_changes (seq INTEGER PRIMARY KEY AUTOINCREMENT, table_name TEXT NOT NULL, "
        "op TEXT NOT NULL, new_row TEXT, old_row TEXT, changed_at INTEGER NOT NULL)"
    )
    conn.execute("CREATE INDEX _realtide_changes_by_table ON _realtide_changes (table_name, seq)")
    if body is not None:
        conn.execute(
            "CREATE TRIGGER capture AFTER UPDATE ON bench_rows FOR EACH ROW BEGIN "
            "INSERT INTO _realtide_changes (table_name, op, new_row, old_row, changed_at) "
            f"VALUES ('bench_rows', 'UPDATE', {body}, "
            "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)); END"
        )
    return conn


def main():
    print(f"SQLite {sqlite3.sqlite_version}: {ROWS} rows; {SINGLE} single-row UPDATEs; bulk = median of 3")
    base = None
    for name, body in BODIES.items():
        with tempfile.TemporaryDirectory() as dir:
            conn = database(os.path.join(dir, "floor.db"), body)
            started = time.perf_counter()
            for i in range(SINGLE):
                conn.execute(f"UPDATE bench_rows SET value = value + 1 WHERE id = {1 + i % ROWS}")
            single = SINGLE / (time.perf_counter() - started)
            bulks = []
            for _ in range(3):
                started = time.perf_counter()
                conn.execute("UPDATE bench_rows SET value = value + 1")
                bulks.append(time.perf_counter() - started)
            bulk = sorted(bulks)[1]
            conn.close()
        if base is None:
            base = (single, bulk)
        print(
            f"  {name:20} single-row {single:8.0f}/s ({base[0] / single:4.2f}x the time)   "
            f"bulk {bulk * 1000:6.1f} ms ({bulk / base[1]:5.1f}x)"
        )


if __name__ == "__main__":
    main()
