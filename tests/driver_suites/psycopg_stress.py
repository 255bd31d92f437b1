"""A stress of psycopg 3 against one endpoint, driven by tests/driver_stress.rs.

Modeled on psycopg's own `test_copy_to_leaks` and `test_cursor.py::test_leak`:
a table of random column types whose values range from empty to tens of KiB
(so that rows, CopyData messages and whole responses straddle the 8 KiB and
16 KiB sizes of libpq's buffers, TLS records and the proxy's relay buffers),
then, on a fresh connection per iteration, COPY OUT in text and in binary
read row by row, COPY OUT read in chunks, and SELECTs fetched one row at a
time, in text and binary, and whole responses of sizes around multiples of
8 KiB, each twice. After each response the backend goes quiet and
waits for the client: a tail withheld anywhere on the way hangs the client,
and a watchdog turns the hang into `HANG`, a stack dump, what the
backends were doing at that moment, and exit code 3.

Every result is checked against the records inserted, so a byte lost or
reordered on the way is a failure too.

Usage: psycopg_stress.py  (configured by the environment)
  STRESS_DSN         libpq connection string of the endpoint
  STRESS_ITERATIONS  connections to open (default 200)
  STRESS_ROWS        rows in the table (default 20)
  STRESS_SEED        random seed (default: random; printed)
  STRESS_HANG_AFTER  seconds without progress that count as a hang (default 60)
  STRESS_OBSERVER_DSN  optional: a direct connection that may read every
                     backend's state, printed when the stress hangs
Prints `seed N`, `lease ID` for each connection (the lease id from the role's
comment, or `-` when the endpoint is PostgreSQL itself), and `ok N` at the end.
"""

import datetime as dt
import faulthandler
import os
import random
import sys
import threading
import time
import uuid
from decimal import Decimal

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

TABLE = sql.Identifier("stress_table")

# Sizes that land on both sides of the 8 KiB and 16 KiB boundaries, plus
# small values and values of tens of KiB (several TLS records each).
SIZES = [
    (0, 40),
    (100, 2000),
    (8100, 8300),
    (16250, 16450),
    (20000, 70000),
]


def value_len(rng, small):
    if small:
        return rng.randrange(100)
    lo, hi = rng.choice(SIZES)
    return rng.randrange(lo, hi + 1)


def make_text(rng, small):
    # Printable ASCII and a few multibyte characters; no NUL (PostgreSQL
    # text cannot hold it).
    n = value_len(rng, small)
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789 \t\\\"',;é€𝄞\n"
    return "".join(rng.choice(alphabet) for _ in range(n))


def make_bytes(rng, small):
    return rng.randbytes(value_len(rng, small))


def make_json(rng, small):
    n = rng.choice([1, 5, 10] if small else [1, 5, 50, 400, 2000])
    return Jsonb({f"k{i}": rng.choice([rng.randrange(-(10**9), 10**9), "v" * rng.randrange(40)]) for i in range(n)})


def make_float(rng, small):
    # Finite doubles only: NaN never compares equal.
    return float(f"{rng.choice('-+')}0.{rng.randrange(1 << 53)}e{rng.randrange(-300, 300)}")


def make_timestamptz(rng, small):
    start = dt.datetime(1900, 1, 1, tzinfo=dt.timezone.utc)
    return start + dt.timedelta(microseconds=rng.randrange(200 * 365 * 86400 * 10**6))


# (SQL type, maker). Arrays of text grow big too.
TYPES = [
    ("int2", lambda r, s: r.randrange(-(1 << 15), 1 << 15)),
    ("int4", lambda r, s: r.randrange(-(1 << 31), 1 << 31)),
    ("int8", lambda r, s: r.randrange(-(1 << 63), 1 << 63)),
    ("numeric", lambda r, s: Decimal(r.randrange(-(10**30), 10**30)).scaleb(-r.randrange(0, 20))),
    ("float8", make_float),
    ("bool", lambda r, s: r.choice([True, False])),
    ("date", lambda r, s: dt.date.fromordinal(r.randrange(1, 3_000_000))),
    ("timestamptz", make_timestamptz),
    ("uuid", lambda r, s: uuid.UUID(int=r.getrandbits(128))),
    ("text", make_text),
    ("text", make_text),
    ("bytea", make_bytes),
    ("bytea", make_bytes),
    ("jsonb", make_json),
    ("int8[]", lambda r, s: [r.randrange(-(1 << 63), 1 << 63) for _ in range(r.choice([1, 10] if s else [1, 10, 1500]))]),
    ("text[]", lambda r, s: [make_text(r, s) for _ in range(r.choice([1, 2, 4]))]),
]


def make_schema(rng, ncols):
    return [rng.choice(TYPES) for _ in range(ncols)]


def make_records(rng, schema, nrows, small):
    return [
        tuple(None if rng.random() < 0.05 else make(rng, small) for _, make in schema)
        for _ in range(nrows)
    ]


def expected(value):
    """What a loader returns for an inserted value."""
    if isinstance(value, Jsonb):
        return value.obj
    return value


def check_rows(what, got, records):
    if len(got) != len(records):
        raise AssertionError(f"{what}: {len(got)} rows, expected {len(records)}")
    for i, (g, want) in enumerate(zip(got, records)):
        want = tuple(expected(v) for v in want)
        if tuple(g) != want:
            for j, (a, b) in enumerate(zip(g, want)):
                if a != b:
                    raise AssertionError(
                        f"{what}: row {i} column {j} differs: got {repr(a)[:200]}, want {repr(b)[:200]}"
                    )
            raise AssertionError(f"{what}: row {i} differs")


def one_iteration(dsn, rng, nrows):
    # Half of the iterations look like psycopg's faker tables (20 columns
    # of small values), half carry values up to tens of KiB.
    small = rng.random() < 0.5
    schema = make_schema(rng, ncols=20 if small else rng.randrange(4, 10))
    records = make_records(rng, schema, nrows, small)
    types = [t for t, _ in schema]
    fields = sql.SQL(", ").join(sql.Identifier(f"fld_{i}") for i in range(len(schema)))
    with psycopg.connect(dsn, connect_timeout=10) as conn:
        lease = conn.execute(
            "SELECT shobj_description(r.oid, 'pg_authid')::json->>'lease_id' "
            "FROM pg_roles r WHERE r.rolname = session_user"
        ).fetchone()[0]
        print("lease", lease or "-", flush=True)
        # As psycopg's tests do: the table made anew on each connection,
        # the records sent with executemany (a pipeline: the client writes
        # while the server answers).
        cols = sql.SQL(", ").join(
            sql.SQL("{} {}").format(sql.Identifier(f"fld_{i}"), sql.SQL(t)) for i, t in enumerate(types)
        )
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(TABLE))
        conn.execute(sql.SQL("CREATE TABLE {} (id serial PRIMARY KEY, {})").format(TABLE, cols))
        phs = sql.SQL(", ").join(sql.Placeholder() for _ in schema)
        with conn.cursor(binary=rng.random() < 0.5) as cur:
            cur.executemany(sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(TABLE, fields, phs), records)
        conn.commit()
        select = sql.SQL("SELECT {} FROM {} ORDER BY id").format(fields, TABLE)

        # COPY OUT, text then binary, one row at a time (Copy.read_row).
        for fmt in ("text", "binary"):
            stmt = sql.SQL("COPY ({}) TO STDOUT (FORMAT {})").format(select, sql.SQL(fmt))
            with conn.cursor(binary=(fmt == "binary")) as cur:
                with cur.copy(stmt) as copy:
                    copy.set_types(types)
                    rows = []
                    while (row := copy.read_row()) is not None:
                        rows.append(row)
            check_rows(f"COPY {fmt} read_row", rows, records)

        # COPY OUT read as raw chunks (Copy.read): one line per row, as
        # text COPY escapes newlines inside values.
        stmt = sql.SQL("COPY ({}) TO STDOUT (FORMAT text)").format(select)
        with conn.cursor() as cur:
            with cur.copy(stmt) as copy:
                data = bytearray()
                while chunk := copy.read():
                    data += chunk
        lines = data.count(b"\n")
        if lines != len(records):
            raise AssertionError(f"COPY text read: {lines} lines, expected {len(records)}")

        # Plain SELECTs fetched one by one, text and binary, and a
        # server-side cursor fetching one row per round trip.
        for binary in (False, True):
            with conn.cursor(binary=binary) as cur:
                cur.execute(select)
                rows = []
                while (row := cur.fetchone()) is not None:
                    rows.append(row)
            check_rows(f"SELECT binary={binary} fetchone", rows, records)
        with conn.cursor(name="stress_named") as cur:
            cur.itersize = 1
            cur.execute(select)
            rows = list(cur)
        check_rows("named cursor", rows, records)
        conn.execute(sql.SQL("DROP TABLE {}").format(TABLE))
        sweep(conn, rng)
    return small


# Response sizes just under and over multiples of 8 KiB, where a TLS record
# of up to 16 KiB holds the response's tail.
SWEEP_QUERIES = 24


def sweep(conn, rng):
    """Whole responses whose sizes straddle multiples of 8 KiB, each run
    twice (as in the reports of async libpq clients stuck on large TLS
    records: the second run of a query of a precise size)."""
    with conn.cursor() as cur:
        for _ in range(SWEEP_QUERIES):
            total = 8192 * rng.randrange(1, 9) + rng.randrange(-300, 300)
            nrows = rng.choice([1, 2, 3, 7])
            width = max(1, total // nrows - 11)
            for _ in range(2):
                cur.execute("SELECT repeat('x', %s) FROM generate_series(1, %s)", (width, nrows))
                got = [len(r[0]) for r in cur]
                if got != [width] * nrows:
                    raise AssertionError(f"sweep: {got} rows of lengths, expected {nrows} of {width}")


def main():
    dsn = os.environ["STRESS_DSN"]
    iterations = int(os.environ.get("STRESS_ITERATIONS", "200"))
    nrows = int(os.environ.get("STRESS_ROWS", "20"))
    seed = int(os.environ.get("STRESS_SEED", str(random.randrange(1 << 32))))
    hang_after = float(os.environ.get("STRESS_HANG_AFTER", "60"))
    print("seed", seed, flush=True)
    rng = random.Random(seed)
    progress = [time.monotonic(), 0]
    threading.Thread(
        target=watchdog, args=(progress, hang_after, os.environ.get("STRESS_OBSERVER_DSN")), daemon=True
    ).start()
    for i in range(iterations):
        progress[:] = [time.monotonic(), i]
        one_iteration(dsn, rng, nrows)
    print("ok", iterations, flush=True)


def watchdog(progress, hang_after, observer_dsn):
    """Ends the process when an iteration makes no progress for
    `hang_after` seconds, saying where the client waits and (with an
    observer) what every client backend is doing meanwhile."""
    while time.monotonic() - progress[0] < hang_after:
        time.sleep(0.5)
    print(f"HANG: iteration {progress[1]} made no progress for {hang_after} s", file=sys.stderr, flush=True)
    faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
    if observer_dsn:
        try:
            with psycopg.connect(observer_dsn, connect_timeout=5) as conn:
                for row in conn.execute(
                    "SELECT pid, usename, state, wait_event_type, wait_event, regexp_replace(left(query, 60), '\\s+', ' ', 'g') "
                    "FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
                ):
                    print("backend", *row, file=sys.stderr, flush=True)
        except Exception as e:
            print(f"observer: {e}", file=sys.stderr, flush=True)
    os._exit(3)


if __name__ == "__main__":
    try:
        main()
    except Exception as e:
        print(f"FAILED: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
