#!/bin/sh
# A two-namespace lab for the README: `web` (10.0.0.1, serving TCP 80 and
# 22) and `client` (10.0.0.2), joined by a veth pair. Traffic stays between
# the two namespaces: no link to the host's network, no default route.
#   sudo sh examples/lab.sh up      # make it
#   sudo sh examples/lab.sh down    # remove it
set -e
case "$1" in
up)
    ip netns add sg-web
    ip netns add sg-client
    ip link add veth0 netns sg-web type veth peer name veth0 netns sg-client
    ip -n sg-web addr add 10.0.0.1/24 dev veth0
    ip -n sg-client addr add 10.0.0.2/24 dev veth0
    for ns in sg-web sg-client; do
        ip -n "$ns" link set lo up
        ip -n "$ns" link set veth0 up
    done
    # Echo servers on TCP 80 and 22 in `web` (busybox nc; -ll: keep serving).
    for port in 80 22; do
        ip netns exec sg-web busybox nc -ll -p "$port" -e /bin/cat >/dev/null 2>&1 &
    done
    echo "lab up: sg-web 10.0.0.1 (TCP 80, 22), sg-client 10.0.0.2"
    ;;
down)
    ip netns pids sg-web 2>/dev/null | xargs -r kill
    ip netns del sg-web 2>/dev/null || true
    ip netns del sg-client 2>/dev/null || true
    echo "lab down"
    ;;
*)
    echo "usage: $0 up|down" >&2
    exit 2
    ;;
esac
