#!/usr/bin/env bash
# Installs the driver runtimes tests/drivers.rs runs, idempotently:
#   - Debian: python3-venv, nodejs + npm, a JDK, libpostgresql-jdbc-java
#     (pgjdbc at /usr/share/java/postgresql.jar); `apt-get update` only
#     when something is missing.
#   - PyPI: psycopg[binary] and asyncpg into target/drivers-venv.
#   - npm: node-postgres into tests/drivers/node/node_modules (from the
#     committed package-lock.json).
# Needs root (or sudo) only when a Debian package is missing.
# Exits non-zero with a message naming what failed.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
venv="${LAGROUTER_DRIVERS_VENV:-$root/target/drivers-venv}"
jar=/usr/share/java/postgresql.jar

die() {
    echo "tests/drivers/install.sh: $*" >&2
    exit 1
}
say() { echo "tests/drivers/install.sh: $*"; }

# --- Debian packages -------------------------------------------------------
pkgs=()
command -v python3 >/dev/null 2>&1 || pkgs+=(python3)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || pkgs+=(python3-venv)
command -v node >/dev/null 2>&1 || pkgs+=(nodejs)
command -v npm >/dev/null 2>&1 || pkgs+=(npm)
{ command -v java >/dev/null 2>&1 && command -v javac >/dev/null 2>&1; } || pkgs+=(default-jdk-headless)
[ -f "$jar" ] || pkgs+=(libpostgresql-jdbc-java)

if [ "${#pkgs[@]}" -gt 0 ]; then
    say "installing Debian packages: ${pkgs[*]}"
    sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || die "need root to install ${pkgs[*]} (run as root or install them by hand)"
        sudo=(sudo)
    fi
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get update -q || die "apt-get update failed"
    "${sudo[@]}" apt-get install -y -q --no-install-recommends "${pkgs[@]}" \
        || die "apt-get install ${pkgs[*]} failed"
fi
[ -f "$jar" ] || die "$jar is missing after installing libpostgresql-jdbc-java"
command -v javac >/dev/null 2>&1 || die "javac is missing after installing default-jdk-headless"

# --- Python: psycopg 3 and asyncpg in a venv --------------------------------
req="$here/python/requirements.txt"
if [ ! -x "$venv/bin/python" ]; then
    say "creating venv $venv"
    python3 -m venv "$venv" || die "python3 -m venv $venv failed (is python3-venv installed?)"
fi
# The requirements are pinned, so a satisfied set needs no network.
stamp="$venv/.lagrouter-requirements"
if ! cmp -s "$req" "$stamp" \
    || ! "$venv/bin/python" -c 'import psycopg, asyncpg' >/dev/null 2>&1; then
    say "installing $(tr '\n' ' ' <"$req")into $venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$req" \
        || die "pip install -r $req failed"
    cp "$req" "$stamp"
fi
"$venv/bin/python" -c 'import psycopg, asyncpg' || die "psycopg/asyncpg do not import from $venv"

# --- node-postgres ----------------------------------------------------------
nodedir="$here/node"
want=$(node -p "require('$nodedir/package-lock.json').packages['node_modules/pg'].version") \
    || die "cannot read $nodedir/package-lock.json"
have=$(node -p "require('$nodedir/node_modules/pg/package.json').version" 2>/dev/null || true)
if [ "$have" != "$want" ]; then
    say "installing node-postgres $want into $nodedir/node_modules"
    (cd "$nodedir" && npm ci --no-audit --no-fund --loglevel=error) || die "npm ci in $nodedir failed"
fi
(cd "$nodedir" && node -e "require('pg')") || die "node-postgres does not load from $nodedir"

say "ok: venv $venv, node-postgres $want, pgjdbc $jar, $(javac -version 2>&1)"
