#!/usr/bin/env bash
# The modelled network of `make bench` (BENCH_NET=veth, the default): two network
# namespaces joined by a veth pair, 127.0.0.0/8 addresses only, nothing leaves the machine.
#
#   bench/netns.sh up ID      make herald-bench-b-ID (broker) and herald-bench-l-ID (load)
#   bench/netns.sh down ID    remove both (and with them the veth pair); idempotent
#   bench/netns.sh check      exit 0 when this machine can build them (root, ip, veth)
#
# Broker namespace: lo holds 127.0.0.1/32 only (not the usual 127.0.0.0/8), and the rest of
# 127.0.0.0/8 is routed over the veth `hbb-ID`. Load namespace: lo holds 127.0.0.2-254
# (/32 each: the source addresses herald-bench spreads its streams over), 127.0.0.1 is
# routed over `hbl-ID`. `route_localnet=1` lets 127.x packets (and their ARP) cross the
# pair. RPS (`queues/rx-0/rps_cpus`) runs each side's receive processing on its own core:
# what the broker's namespace receives (requests, ACKs) on $BROKER_CORE (default 0), what
# the load namespace receives (the events, the answers) on $LOAD_CORE (default 1). A
# broker's core thus pays for its sends and the ACKs it gets, the load core for the
# clients' receive path, as on two hosts; on plain loopback the sender's `sendmsg` runs the
# receiver's TCP path and wake-ups in its own softirq.
#
# Only the two namespaces are touched: no sysctl, route or address of the host changes.
set -euo pipefail

BROKER_CORE="${BROKER_CORE:-0}"
LOAD_CORE="${LOAD_CORE:-1}"

die() { echo "bench/netns.sh: $*" >&2; exit 1; }

names() {
    local id=$1
    [[ "$id" =~ ^[A-Za-z0-9]{1,10}$ ]] || die "ID must be 1-10 letters or digits, not '$id'"
    NS_BROKER="herald-bench-b-$id"
    NS_LOAD="herald-bench-l-$id"
    DEV_BROKER="hbb-$id"
    DEV_LOAD="hbl-$id"
}

# Hex CPU mask of one core, for rps_cpus.
mask() { printf '%x' $((1 << $1)); }

check() {
    [ "$(id -u)" = 0 ] || die "needs root (network namespaces); BENCH_NET=loopback runs without"
    command -v ip >/dev/null || die "needs ip (apt-get install iproute2)"
}

up() {
    names "$1"
    check
    down "$1"
    ip netns add "$NS_BROKER"
    ip netns add "$NS_LOAD"
    ip link add "$DEV_BROKER" netns "$NS_BROKER" type veth peer name "$DEV_LOAD" netns "$NS_LOAD"
    local ns dev
    for ns in "$NS_BROKER" "$NS_LOAD"; do
        dev=$DEV_BROKER
        [ "$ns" = "$NS_LOAD" ] && dev=$DEV_LOAD
        ip -n "$ns" link set lo up
        ip -n "$ns" link set "$dev" up
        ip netns exec "$ns" sysctl -qw net.ipv4.conf.all.route_localnet=1 \
            "net.ipv4.conf.$dev.route_localnet=1"
        # No IPv6 on the pair: no router solicitations or DAD traffic during a run.
        ip netns exec "$ns" sysctl -qw "net.ipv6.conf.$dev.disable_ipv6=1" 2>/dev/null || true
    done
    # Broker: 127.0.0.1 is its only local address; the rest of 127/8 is over the veth.
    ip -n "$NS_BROKER" addr del 127.0.0.1/8 dev lo
    ip -n "$NS_BROKER" addr add 127.0.0.1/32 dev lo
    ip -n "$NS_BROKER" route add 127.0.0.0/8 dev "$DEV_BROKER" src 127.0.0.1
    # Load: 127.0.0.2-254 are local, 127.0.0.1 is over the veth.
    ip -n "$NS_LOAD" addr del 127.0.0.1/8 dev lo
    local i
    for i in $(seq 2 254); do echo "addr add 127.0.0.$i/32 dev lo"; done | ip -n "$NS_LOAD" -b -
    ip -n "$NS_LOAD" route add 127.0.0.1/32 dev "$DEV_LOAD" src 127.0.0.2
    # Receive processing of each side on its own core (`ip netns exec` mounts the
    # namespace's own /sys, where its device is).
    ip netns exec "$NS_BROKER" sh -c "echo $(mask "$BROKER_CORE") > /sys/class/net/$DEV_BROKER/queues/rx-0/rps_cpus"
    ip netns exec "$NS_LOAD" sh -c "echo $(mask "$LOAD_CORE") > /sys/class/net/$DEV_LOAD/queues/rx-0/rps_cpus"
}

down() {
    names "$1"
    local ns
    for ns in "$NS_BROKER" "$NS_LOAD"; do
        if ip netns list 2>/dev/null | grep -qw "^$ns"; then
            # Whatever still runs inside was started by the caller, who stops it by pid;
            # the namespace goes once it is empty, and the veth pair with it.
            ip netns del "$ns" 2>/dev/null || true
        fi
    done
}

case "${1:-}" in
    up) [ $# = 2 ] || die "usage: $0 up ID"; up "$2" ;;
    down) [ $# = 2 ] || die "usage: $0 down ID"; down "$2" ;;
    check) check ;;
    *) die "usage: $0 up ID | down ID | check" ;;
esac
