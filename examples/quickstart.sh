#!/usr/bin/env bash
# Quick start: build Portcullis, start a throwaway PostgreSQL 15 (or use
# yours: set PGHOST, PGPORT, PGUSER, PGPASSWORD of a superuser), run the
# gateway on the embedded store, grant the user `alice` 1h on `orders`, and
# print the psql line to try. Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
demo=$(mktemp -d /tmp/portcullis-demo.XXXXXX)
chmod 755 "$demo"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  if [ -n "${PGDATA_DEMO:-}" ]; then
    su postgres -c "$PGBIN/pg_ctl -D $PGDATA_DEMO -m fast stop" >/dev/null 2>&1 || "$PGBIN/pg_ctl" -D "$PGDATA_DEMO" -m fast stop >/dev/null 2>&1 || true
  fi
  rm -rf "$demo"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
as_pg() { if [ "$(id -u)" = 0 ]; then su postgres -c "$*"; else bash -c "$*"; fi; }

echo "building portcullis..."
cargo build -q --bin portcullis
bin="$root/target/debug/portcullis"

if [ -z "${PGHOST:-}" ]; then
  PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
  export PGHOST=127.0.0.1 PGPORT=$(free_port) PGUSER=postgres PGPASSWORD=demo-superuser
  PGDATA_DEMO="$demo/pg"
  mkdir -p "$PGDATA_DEMO"; echo "$PGPASSWORD" > "$demo/pw"
  [ "$(id -u)" = 0 ] && chown -R postgres "$demo"
  echo "starting a throwaway PostgreSQL on $PGHOST:$PGPORT..."
  as_pg "$PGBIN/initdb -D $PGDATA_DEMO -U postgres --auth-local=trust --auth-host=scram-sha-256 --pwfile=$demo/pw" >/dev/null
  as_pg "$PGBIN/pg_ctl -D $PGDATA_DEMO -l $demo/pg.log -o '-p $PGPORT -k $demo -c listen_addresses=127.0.0.1' -w start" >/dev/null
fi

export ORDERS_RO_PASSWORD=demo-orders-ro
psql -X -q -v ON_ERROR_STOP=1 -d postgres <<SQL
DROP DATABASE IF EXISTS orders;
CREATE DATABASE orders;
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'orders_ro') THEN CREATE ROLE orders_ro LOGIN; END IF;
END \$\$;
ALTER ROLE orders_ro PASSWORD '$ORDERS_RO_PASSWORD';
SQL
psql -X -q -v ON_ERROR_STOP=1 -d orders <<SQL
CREATE TABLE items (id int PRIMARY KEY, name text);
INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 100) g;
GRANT SELECT ON items TO orders_ro;
SQL

api=$(free_port); gw=$(free_port)
sed -e "s|data_dir: ./portcullis-data|data_dir: $demo/data|" \
    -e "s|127.0.0.1:8080|127.0.0.1:$api|" -e "s|127.0.0.1:6432|127.0.0.1:$gw|" \
    -e "s|port: 5432|port: $PGPORT|" -e "s|host: 127.0.0.1|host: $PGHOST|" \
    examples/portcullis.yaml > "$demo/portcullis.yaml"
"$bin" serve -c "$demo/portcullis.yaml" 2> "$demo/portcullis.log" &
pids+=($!)
for _ in $(seq 100); do [ -s "$demo/data/admin.token" ] && curl -fs "http://127.0.0.1:$api/healthz" >/dev/null 2>&1 && break; sleep 0.1; done

export PORTCULLIS_URL="http://127.0.0.1:$api"
admin=$(cat "$demo/data/admin.token")
alice=$(PORTCULLIS_TOKEN=$admin "$bin" user add alice --group eng)
req=$(PORTCULLIS_TOKEN=$alice "$bin" request orders --for 1h --reason "quick start")
# admin may approve only because examples/portcullis.yaml names it under
# `approvers`: the admin right alone approves nothing.
PORTCULLIS_TOKEN=$admin "$bin" approve "$req" >/dev/null

cat <<EOT

Portcullis is running (log: $demo/portcullis.log). alice holds a 1h grant on "orders". Try:

  PGPASSWORD='$alice' psql "host=127.0.0.1 port=$gw user=alice dbname=orders sslmode=require" -c 'select count(*) from items'

and, as the admin, watch and end it:

  PORTCULLIS_URL=$PORTCULLIS_URL PORTCULLIS_TOKEN='$admin' $bin grants
  PORTCULLIS_URL=$PORTCULLIS_URL PORTCULLIS_TOKEN='$admin' $bin revoke GRANT_ID --reason done

Press Ctrl-C to stop.
EOT
wait "${pids[0]}"
