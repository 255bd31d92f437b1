#!/bin/sh
# pgbench's tables in appdb (scale 1), for
#   PGSSLMODE=... PGPASSWORD=$TOKEN pgbench -h localhost -p 6432 -U readwrite appdb
# Created as app_owner, like everything in appdb (see 10-rolemint-demo.sql).
# Run by the postgres image's entrypoint, against its init-time server (Unix
# socket only), after the SQL file.
set -e
PGOPTIONS='-c role=app_owner' pgbench -i -s 1 -q -U "$POSTGRES_USER" appdb
psql -X -q -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -d appdb <<'SQL'
GRANT SELECT ON ALL TABLES IN SCHEMA public TO app_read;
GRANT SELECT ON ALL SEQUENCES IN SCHEMA public TO app_read;
SQL
