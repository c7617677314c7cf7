#!/usr/bin/env bash
# Install what herald's test suite needs from Debian's packages, and only what is missing:
#   nginx (nginx-light where the release has it), libnginx-mod-nchan, redis-server,
#   redis-sentinel, prometheus (for promtool), chromium and chromium-driver, Node.js with
#   npm, curl (the HTTP/2 client of tests/nginx_kit.rs) and systemd (systemd-analyze, for
#   the unit).
# Runs `apt-get update` once, and only when something has to be installed. Installing
# needs root; without it, the script names what is missing and fails.
# The node packages of the browser test are installed by `make test` (npm ci), not here.
set -euo pipefail

log() { printf 'install-test-deps: %s\n' "$*" >&2; }

installed() { # installed PACKAGE: true when dpkg has PACKAGE fully installed
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q '^install ok installed$'
}

missing=()
need() { # need PACKAGE CHECK...: add PACKAGE when the CHECK command fails
    local package=$1
    shift
    if ! "$@" >/dev/null 2>&1; then
        missing+=("$package")
    fi
}

need nginx command -v nginx
need libnginx-mod-nchan installed libnginx-mod-nchan
need redis-server command -v redis-server
need redis-sentinel command -v redis-sentinel
need prometheus command -v promtool
need chromium test -x /usr/bin/chromium
need chromium-driver test -x /usr/bin/chromedriver
need nodejs command -v node
need npm command -v npm
need curl test -x /usr/bin/curl
need systemd test -x /usr/bin/systemd-analyze

if [ ${#missing[@]} -eq 0 ]; then
    log "all present (nginx, nchan, redis-server, redis-sentinel, promtool, chromium, chromedriver, node, npm, curl, systemd-analyze)"
else
    if [ "$(id -u)" -ne 0 ]; then
        log "ERROR: missing: ${missing[*]}"
        log "ERROR: installing them needs root: run 'sudo scripts/install-test-deps.sh', then 'make test' again"
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    log "missing: ${missing[*]}; running apt-get update"
    apt-get update -q
    packages=()
    for p in "${missing[@]}"; do
        if [ "$p" = nginx ] && apt-cache show nginx-light >/dev/null 2>&1; then
            p=nginx-light # the smallest build; newer Debian releases only have nginx
        fi
        packages+=("$p")
    done
    # Tests start their own servers on loopback ports: keep the packages' services from
    # starting during the install (an existing policy is left as it is).
    policy=/usr/sbin/policy-rc.d
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod +x "$policy"
        trap 'rm -f "$policy"' EXIT
    fi
    log "apt-get install ${packages[*]}"
    apt-get install -y -q --no-install-recommends "${packages[@]}"
fi

node_major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$node_major" -lt 20 ]; then
    log "ERROR: node $(node --version) is too old for the browser test (playwright-core needs 20 or newer)"
    exit 1
fi
