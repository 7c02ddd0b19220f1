#!/usr/bin/env bash
# A real Ray cluster on this host, for trying the cluster path (`raygen submit`) on a laptop:
# one head (GCS, dashboard + job API, token auth on, bound to 127.0.0.1) and N worker nodes.
#
#   cluster/local.sh up [--workers N] [--cpus N]   start it (prints the job API address)
#   cluster/local.sh env                           print `export ...` lines for raygen submit
#   cluster/local.sh status                        is it up? which nodes?
#   cluster/local.sh down                          stop exactly the processes `up` started
#
# Other Ray instances on the same host are never touched: every node gets free ports, the
# cluster lives in its own --temp-dir, and `down` stops only the process groups it recorded
# (never `ray stop`, which would kill every Ray on the machine).
#
# Environment:
#   RAYGEN_LOCAL_CLUSTER_DIR  state dir (default /tmp/raygen-local-$UID); one cluster per dir
#   RAY_BIN                   the `ray` to use (default: `ray` on PATH, else .venv/bin/ray);
#                             its directory goes first on the nodes' PATH, so jobs find `raygen`
#   RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH / ~/.ray/auth_token
#                             the cluster's token, the same sources Ray reads; when none is set,
#                             `ray get-auth-token --generate` creates ~/.ray/auth_token
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STATE=${RAYGEN_LOCAL_CLUSTER_DIR:-/tmp/raygen-local-$(id -u)}
STATE_FILE=$STATE/cluster.env  # written by `up`: ports, pids, address (sourced by the other commands)

die() { echo "local.sh: $*" >&2; exit 1; }

usage() {
    sed -n '2,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    exit "${1:-0}"
}

find_ray() {
    if [[ -n ${RAY_BIN:-} ]]; then
        [[ -x $RAY_BIN ]] || die "RAY_BIN=$RAY_BIN is not an executable; point it at a ray binary"
    elif command -v ray >/dev/null 2>&1; then
        RAY_BIN=$(command -v ray)
    elif [[ -x $ROOT/.venv/bin/ray ]]; then
        RAY_BIN=$ROOT/.venv/bin/ray
    else
        die "no 'ray' found; activate the project's virtualenv (source .venv/bin/activate) or set RAY_BIN"
    fi
    BIN_DIR=$(cd "$(dirname "$RAY_BIN")" && pwd)
    PYTHON=$BIN_DIR/python
    [[ -x $PYTHON ]] || die "no python next to $RAY_BIN; set RAY_BIN to the ray inside a virtualenv"
}

# The token the nodes use, from the standard sources (so `raygen submit` finds the same one).
setup_token() {
    if [[ -n ${RAY_AUTH_TOKEN:-} ]]; then
        TOKEN_SOURCE="RAY_AUTH_TOKEN"
        TOKEN_PATH=""
    elif [[ -n ${RAY_AUTH_TOKEN_PATH:-} ]]; then
        [[ -s $RAY_AUTH_TOKEN_PATH ]] || die "RAY_AUTH_TOKEN_PATH=$RAY_AUTH_TOKEN_PATH is missing or empty; write a token there or unset it"
        TOKEN_PATH=$(cd "$(dirname "$RAY_AUTH_TOKEN_PATH")" && pwd)/$(basename "$RAY_AUTH_TOKEN_PATH")
        TOKEN_SOURCE="RAY_AUTH_TOKEN_PATH=$TOKEN_PATH"
    else
        if [[ ! -s $HOME/.ray/auth_token ]]; then
            "$RAY_BIN" get-auth-token --generate >/dev/null 2>&1 \
                || die "could not generate a token with 'ray get-auth-token --generate'"
        fi
        TOKEN_SOURCE="$HOME/.ray/auth_token"
        TOKEN_PATH=""
    fi
}

token_value() {
    if [[ -n ${RAY_AUTH_TOKEN:-} ]]; then printf '%s' "$RAY_AUTH_TOKEN"
    elif [[ -n ${TOKEN_PATH:-} ]]; then tr -d '[:space:]' <"$TOKEN_PATH"
    elif [[ -n ${RAY_AUTH_TOKEN_PATH:-} ]]; then tr -d '[:space:]' <"$RAY_AUTH_TOKEN_PATH"
    else tr -d '[:space:]' <"$HOME/.ray/auth_token"; fi
}

# n distinct free TCP ports on 127.0.0.1 (held open together so they differ from each other).
free_ports() {
    "$PYTHON" - "$1" <<'EOF'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

# pids of processes that belong to this cluster: their process group is one we started, or
# their command line names our temp dir (Ray workers re-parent and may leave the group).
cluster_pids() {
    local pgid pid
    for pgid in ${PGIDS:-}; do
        pgrep -g "$pgid" 2>/dev/null || true
    done
    for pid in $(pgrep -u "$(id -u)" 2>/dev/null); do
        if tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -qF -- "$STATE/ray"; then
            echo "$pid"
        fi
    done
}

alive() { [[ -n ${HEAD_PGID:-} ]] && kill -0 "$HEAD_PGID" 2>/dev/null; }

job_api_ok() {
    curl -sf -o /dev/null --max-time 5 -H "Authorization: Bearer $(token_value)" "$ADDRESS/api/version"
}

start_node() {  # name, then `ray start` arguments; runs it in its own session, records its pgid
    local name=$1; shift
    # setsid: a new process group per node, so `down` can stop exactly this node and its children.
    # --block keeps `ray start` in the foreground; it tears its node down when it gets SIGTERM.
    PATH="$BIN_DIR:$PATH" RAY_AUTH_MODE=token RAY_USAGE_STATS_ENABLED=0 \
        setsid "$RAY_BIN" start --block --disable-usage-stats \
        --temp-dir "$STATE/ray" --min-worker-port 0 --max-worker-port 0 "$@" \
        >"$STATE/$name.log" 2>&1 </dev/null &
    PGIDS="${PGIDS:-} $!"
}

write_state() {
    cat >"$STATE_FILE" <<EOF
ADDRESS=$ADDRESS
GCS_ADDRESS=$GCS_ADDRESS
HEAD_PGID=$HEAD_PGID
PGIDS="$PGIDS"
TOKEN_SOURCE="$TOKEN_SOURCE"
TOKEN_PATH="$TOKEN_PATH"
EOF
}

cmd_up() {
    local workers=1 cpus=2
    while [[ $# -gt 0 ]]; do
        case $1 in
            --workers) [[ ${2:-} =~ ^[0-9]+$ ]] || die "--workers needs a number, e.g. --workers 1"; workers=$2; shift 2 ;;
            --cpus) [[ ${2:-} =~ ^[1-9][0-9]*$ ]] || die "--cpus needs a positive number (CPUs per node)"; cpus=$2; shift 2 ;;
            -h|--help) usage ;;
            *) die "unknown option '$1' for up; usage: local.sh up [--workers N] [--cpus N]" ;;
        esac
    done
    if [[ -f $STATE_FILE ]]; then
        # shellcheck disable=SC1090
        source "$STATE_FILE"
        alive && die "a cluster from $STATE is already up at $ADDRESS; run 'cluster/local.sh down' first"
        rm -f "$STATE_FILE"
    fi
    find_ray
    setup_token
    mkdir -p "$STATE"
    local gcs dash client agent
    read -r gcs dash client agent <<<"$(free_ports 4)"
    ADDRESS=http://127.0.0.1:$dash
    PGIDS=""
    start_node head --head --port "$gcs" --include-dashboard true --dashboard-host 127.0.0.1 \
        --dashboard-port "$dash" --ray-client-server-port "$client" --dashboard-agent-listen-port "$agent" \
        --num-cpus "$cpus" --object-store-memory 200000000
    HEAD_PGID=${PGIDS# }
    GCS_ADDRESS=127.0.0.1:$gcs
    write_state
    local i
    for i in $(seq 1 120); do
        job_api_ok && break
        kill -0 "$HEAD_PGID" 2>/dev/null || { tail -n 20 "$STATE/head.log" >&2; die "the head failed to start (log: $STATE/head.log)"; }
        sleep 1
    done
    job_api_ok || { cmd_down >/dev/null; die "the head's job API did not come up in 120 s (log: $STATE/head.log)"; }
    for i in $(seq 1 "$workers"); do
        read -r agent <<<"$(free_ports 1)"
        start_node "worker$i" --address "127.0.0.1:$gcs" --num-cpus "$cpus" \
            --dashboard-agent-listen-port "$agent" --object-store-memory 200000000
    done
    write_state
    # Wait until every node has registered, so the first job sees the whole cluster.
    local want=$((workers + 1)) have=0
    for i in $(seq 1 120); do
        have=$(node_count)
        [[ $have -ge $want ]] && break
        sleep 1
    done
    [[ $have -ge $want ]] || { cmd_down >/dev/null; die "only $have of $want nodes came up in 120 s (logs: $STATE/*.log)"; }
    echo "Ray cluster up: $want node(s), job API at $ADDRESS (token from $TOKEN_SOURCE)"
    echo "  eval \"\$(cluster/local.sh env)\"   # sets RAY_API_SERVER_ADDRESS for raygen submit / raygen jobs"
    echo "  cluster/local.sh down              # stops it"
}

node_count() {  # alive nodes, as the job API's dashboard reports them
    curl -sf --max-time 5 -H "Authorization: Bearer $(token_value)" "$ADDRESS/api/v0/nodes?limit=10000" 2>/dev/null \
        | "$PYTHON" -c 'import json, sys
nodes = json.load(sys.stdin)["data"]["result"]["result"]
print(sum(1 for n in nodes if n["state"] == "ALIVE"))' 2>/dev/null || echo 0
}

load_state() {
    [[ -f $STATE_FILE ]] || { echo "no local cluster in $STATE (start one with 'cluster/local.sh up')"; return 1; }
    # shellcheck disable=SC1090
    source "$STATE_FILE"
}

# the pids given on stdin that are still running (a zombie is gone for every purpose here)
running() {
    local pid state
    while read -r pid; do
        state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) || continue
        [[ -n $state && $state != Z ]] && echo "$pid"
    done
    return 0
}

cmd_down() {
    load_state || return 0
    local pids pid
    pids=$(cluster_pids | sort -u)
    for pgid in $PGIDS; do kill -TERM -- "-$pgid" 2>/dev/null || true; done
    for _ in $(seq 1 20); do
        # `|| true`: under set -e a dead last pid made this loop, and so `down`, exit 1 silently
        pids=$( (for pid in $pids; do echo "$pid"; done; cluster_pids) | sort -u | running || true)
        [[ -z $pids ]] && break
        sleep 0.5
    done
    # What ignored SIGTERM is killed, and so is anything the raylets started meanwhile; a killed
    # process lingers until the kernel has torn it down, so wait for it rather than return early.
    for _ in $(seq 1 40); do
        [[ -z $pids ]] && break
        for pid in $pids; do kill -KILL "$pid" 2>/dev/null || true; done
        sleep 0.25
        pids=$( (for pid in $pids; do echo "$pid"; done; cluster_pids) | sort -u | running || true)
    done
    [[ -z $pids ]] || die "processes of the cluster in $STATE survived SIGKILL: $(echo $pids)"
    rm -f "$STATE_FILE"
    echo "Ray cluster at $ADDRESS stopped"
}

cmd_status() {
    load_state || exit 1
    find_ray
    if ! alive; then
        echo "local cluster in $STATE is down (stale state; 'cluster/local.sh down' cleans up)"
        exit 1
    fi
    if job_api_ok; then
        echo "up: $(node_count) node(s), job API at $ADDRESS (token from $TOKEN_SOURCE)"
    else
        echo "starting or unhealthy: head running but job API at $ADDRESS not answering (log: $STATE/head.log)"
        exit 1
    fi
}

cmd_env() {
    load_state >&2 || exit 1
    echo "export RAY_API_SERVER_ADDRESS=$ADDRESS"
    if [[ -n $TOKEN_PATH ]]; then echo "export RAY_AUTH_TOKEN_PATH=$TOKEN_PATH"; fi
    # Every node of this cluster runs on this host, so every local path is shared by all of them.
    echo "export RAYGEN_SHARED_STORAGE=/"
}

case ${1:-} in
    up) shift; cmd_up "$@" ;;
    down) cmd_down ;;
    status) cmd_status ;;
    env) cmd_env ;;
    -h|--help|help) usage ;;
    *) echo "usage: cluster/local.sh up [--workers N] [--cpus N] | env | status | down" >&2; exit 2 ;;
esac
