#!/usr/bin/env bash
# A real Tally cluster on this machine, as separate processes: a three-member etcd and N
# `tally server` nodes (both roles each), on loopback ports, with their data, certificates,
# configs, logs and pid files in one directory. What `tally dev` is to one process, this is to
# a production layout: the same binary, configs and etcd as a real deployment.
#
#   ops/deploy/local-cluster.sh start  [--dir DIR] [--nodes N] [--base-port P]
#   ops/deploy/local-cluster.sh status [--dir DIR]
#   ops/deploy/local-cluster.sh stop   [--dir DIR]
#
# DIR (default ./.tally-local, or $TALLY_LOCAL_DIR) holds:
#   certs/            cluster CA, node and client certificates (`tally certs init`)
#   etcd/m<i>/        etcd member i's data          nodes/<id>/   node <id>'s LogsDB
#   node<id>.toml     node <id>'s config            logs/         every process's output
#   run/*.pid         pids of running processes     env           TALLY_SEED and TALLY_CERTS
#
# Ports (P default 24000, or $TALLY_LOCAL_BASE_PORT): etcd member i serves clients on TCP P+i-1
# and peers on P+10+i-1; node <id> listens on UDP P+20+id and serves its admin HTTP port on
# TCP P+40+id. N is 3 by default (3..=9). `start` on an existing DIR restarts the cluster on
# its data (same settings). The first start creates logs 1..=4 (replication 2).
#
# Binaries: $TALLY_BIN (default: `tally` on PATH, else $CARGO_TARGET_DIR/debug/tally, else
# ~/.cache/tally-target/debug/tally), $ETCD_BIN and $ETCDCTL_BIN (default: etcd, etcdctl;
# `bash ops/setup.sh` installs them).
set -Eeuo pipefail

usage() {
    sed -n '7,9p' "$0" | sed 's/^# *//' >&2
    exit 2
}

[[ $# -ge 1 ]] || usage
COMMAND=$1
shift
DIR=${TALLY_LOCAL_DIR:-./.tally-local}
NODES=${TALLY_LOCAL_NODES:-3}
BASE=${TALLY_LOCAL_BASE_PORT:-24000}
while [[ $# -gt 0 ]]; do
    case $1 in
        --dir) DIR=$2; shift 2 ;;
        --nodes) NODES=$2; shift 2 ;;
        --base-port) BASE=$2; shift 2 ;;
        *) echo "local-cluster: unknown argument $1" >&2; usage ;;
    esac
done
[[ $NODES =~ ^[3-9]$ ]] || { echo "local-cluster: --nodes must be 3..9" >&2; exit 2; }
[[ $BASE =~ ^[0-9]+$ && $BASE -ge 1024 && $BASE -le 65000 ]] ||
    { echo "local-cluster: --base-port must be 1024..65000" >&2; exit 2; }

TALLY=${TALLY_BIN:-$(command -v tally || true)}
if [[ -z $TALLY ]]; then
    TALLY=${CARGO_TARGET_DIR:-$HOME/.cache/tally-target}/debug/tally
fi
ETCD_BIN=${ETCD_BIN:-etcd}
ETCDCTL_BIN=${ETCDCTL_BIN:-etcdctl}
CLUSTER=local
ETCD_MEMBERS=3
# The nodes' configs say everything: no TALLY_* variable may override them.
for var in $(compgen -e | grep '^TALLY_' || true); do unset "$var"; done

mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
# A cluster keeps the node count and ports it was first started with.
if [[ -f $DIR/settings ]]; then
    # shellcheck source=/dev/null
    source "$DIR/settings"
fi

etcd_client_port() { echo $((BASE + $1 - 1)); }
etcd_peer_port() { echo $((BASE + 10 + $1 - 1)); }
node_port() { echo $((BASE + 20 + $1)); }
node_admin_port() { echo $((BASE + 40 + $1)); }

etcd_endpoints() {
    local i out=()
    for ((i = 1; i <= ETCD_MEMBERS; i++)); do out+=("http://127.0.0.1:$(etcd_client_port "$i")"); done
    (IFS=,; echo "${out[*]}")
}

seeds() {
    local id out=()
    for ((id = 1; id <= NODES; id++)); do out+=("127.0.0.1:$(node_port "$id")"); done
    (IFS=,; echo "${out[*]}")
}

alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

# Waits (polling, bounded) until "$@" succeeds; fails naming $what and showing $log.
wait_until() {
    local what=$1 deadline=$2 log=$3 pidfile=$4
    shift 4
    local end=$((SECONDS + deadline))
    until "$@" >/dev/null 2>&1; do
        if ! alive "$pidfile"; then
            echo "local-cluster: $what exited during start; $log:" >&2
            tail -n 30 "$log" >&2 || true
            return 1
        fi
        if ((SECONDS >= end)); then
            echo "local-cluster: $what not ready within ${deadline}s; $log:" >&2
            tail -n 30 "$log" >&2 || true
            return 1
        fi
        sleep 0.1
    done
}

start_etcd() {
    local i members=() initial cp pp
    for ((i = 1; i <= ETCD_MEMBERS; i++)); do
        members+=("m$i=http://127.0.0.1:$(etcd_peer_port "$i")")
    done
    initial=$(IFS=,; echo "${members[*]}")
    for ((i = 1; i <= ETCD_MEMBERS; i++)); do
        cp=$(etcd_client_port "$i")
        pp=$(etcd_peer_port "$i")
        mkdir -p "$DIR/etcd/m$i"
        # --initial-* flags only matter on the first start; later starts use the data.
        nohup "$ETCD_BIN" --name "m$i" --data-dir "$DIR/etcd/m$i" \
            --listen-client-urls "http://127.0.0.1:$cp" --advertise-client-urls "http://127.0.0.1:$cp" \
            --listen-peer-urls "http://127.0.0.1:$pp" --initial-advertise-peer-urls "http://127.0.0.1:$pp" \
            --initial-cluster "$initial" --initial-cluster-state new \
            --initial-cluster-token "tally-$CLUSTER" \
            </dev/null >"$DIR/logs/etcd$i.log" 2>&1 &
        echo $! >"$DIR/run/etcd$i.pid"
    done
    for ((i = 1; i <= ETCD_MEMBERS; i++)); do
        wait_until "etcd member m$i" 60 "$DIR/logs/etcd$i.log" "$DIR/run/etcd$i.pid" \
            env ETCDCTL_API=3 "$ETCDCTL_BIN" --endpoints "http://127.0.0.1:$(etcd_client_port "$i")" \
            --dial-timeout 1s --command-timeout 2s endpoint health
    done
}

write_config() {
    local id=$1 port admin_port config ETCD_ENDPOINTS_TOML
    port=$(node_port "$id")
    admin_port=$(node_admin_port "$id")
    config=$DIR/node$id.toml
    ETCD_ENDPOINTS_TOML=$(etcd_endpoints | sed 's/[^,]*/"&"/g; s/,/, /g')
    cat >"$config" <<EOF
# Written by ops/deploy/local-cluster.sh (rewritten on every start).
cluster = "$CLUSTER"
node_id = $id
listen = "127.0.0.1:$port"
admin_listen = "127.0.0.1:$admin_port"
roles = ["sequencer", "storage"]
data_dir = "$DIR/nodes/$id"
certs_dir = "$DIR/certs"

[epoch_store]
etcd = [$ETCD_ENDPOINTS_TOML]
EOF
}

node_ready() { grep -q "^tally server: node $1 ready on " "$DIR/logs/node$1.out"; }

start_nodes() {
    local id
    for ((id = 1; id <= NODES; id++)); do
        write_config "$id"
        NO_COLOR=1 nohup "$TALLY" server --config "$DIR/node$id.toml" \
            </dev/null >"$DIR/logs/node$id.out" 2>"$DIR/logs/node$id.log" &
        echo $! >"$DIR/run/node$id.pid"
    done
    for ((id = 1; id <= NODES; id++)); do
        wait_until "node $id" 120 "$DIR/logs/node$id.log" "$DIR/run/node$id.pid" node_ready "$id"
    done
}

cmd_start() {
    local f
    for f in "$DIR"/run/*.pid; do
        if alive "$f"; then
            echo "local-cluster: already running in $DIR ($(basename "$f" .pid) is up); stop it first" >&2
            exit 1
        fi
    done
    [[ -x $TALLY ]] || { echo "local-cluster: no tally binary at $TALLY (set TALLY_BIN)" >&2; exit 1; }
    command -v "$ETCD_BIN" >/dev/null || { echo "local-cluster: no $ETCD_BIN (run ops/setup.sh)" >&2; exit 1; }
    mkdir -p "$DIR/logs" "$DIR/run" "$DIR/nodes"
    if [[ ! -f $DIR/settings ]]; then
        printf 'NODES=%s\nBASE=%s\n' "$NODES" "$BASE" >"$DIR/settings"
    fi
    if [[ ! -f $DIR/certs/ca.pem ]]; then
        "$TALLY" certs init --dir "$DIR/certs" --cluster "$CLUSTER" --host 127.0.0.1 --host localhost >/dev/null
    fi
    trap 'echo "local-cluster: start failed; stopping what started" >&2; cmd_stop >/dev/null 2>&1 || true' ERR
    start_etcd
    start_nodes
    local seed
    seed=$(seeds)
    if [[ ! -f $DIR/logs-created ]]; then
        local log
        for log in 1 2 3 4; do
            "$TALLY" log create --seed "$seed" --certs "$DIR/certs" --log "$log" --replication 2 >/dev/null
        done
        touch "$DIR/logs-created"
    fi
    trap - ERR
    printf 'export TALLY_SEED=%s\nexport TALLY_CERTS=%s\n' "$seed" "$DIR/certs" >"$DIR/env"
    echo "local-cluster: ready: $NODES nodes and a $ETCD_MEMBERS-member etcd (cluster \"$CLUSTER\") in $DIR"
    echo "  etcd:  $(etcd_endpoints)"
    echo "  seed:  $seed"
    echo "  certs: $DIR/certs"
    echo "Then: source $DIR/env && tally append --log 1 hello && tally read --log 1"
}

# SIGTERM, then waits up to $2 seconds for the exit; SIGKILL after that. Fails if it had to.
stop_pid() {
    local pidfile=$1 grace=$2 pid
    [[ -f $pidfile ]] || return 0
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        local end=$((SECONDS + grace))
        while kill -0 "$pid" 2>/dev/null; do
            if ((SECONDS >= end)); then
                echo "local-cluster: $(basename "$pidfile" .pid) (pid $pid) did not stop within ${grace}s; killing it" >&2
                kill -KILL "$pid" 2>/dev/null || true
                rm -f "$pidfile"
                return 1
            fi
            sleep 0.1
        done
    fi
    rm -f "$pidfile"
}

cmd_stop() {
    local f ok=0
    # Nodes first (they drain and leave membership through etcd), then etcd.
    for f in "$DIR"/run/node*.pid; do
        [[ -e $f ]] || continue
        kill -TERM "$(cat "$f")" 2>/dev/null || true
    done
    for f in "$DIR"/run/node*.pid; do
        [[ -e $f ]] || continue
        stop_pid "$f" 60 || ok=1
    done
    for f in "$DIR"/run/etcd*.pid; do
        [[ -e $f ]] || continue
        stop_pid "$f" 30 || ok=1
    done
    echo "local-cluster: stopped ($DIR kept; delete it to start afresh)"
    return $ok
}

cmd_status() {
    local f name up=0 down=0
    for f in "$DIR"/run/etcd*.pid "$DIR"/run/node*.pid; do
        [[ -e $f ]] || continue
        name=$(basename "$f" .pid)
        if alive "$f"; then
            echo "$name: running (pid $(cat "$f"))"
            up=$((up + 1))
        else
            echo "$name: not running"
            down=$((down + 1))
        fi
    done
    if ((up == 0)); then
        echo "local-cluster: stopped"
        return 3
    fi
    ETCDCTL_API=3 "$ETCDCTL_BIN" --endpoints "$(etcd_endpoints)" --dial-timeout 1s \
        --command-timeout 2s endpoint health 2>&1 || down=$((down + 1))
    if ((down > 0)); then
        echo "local-cluster: degraded"
        return 1
    fi
    echo "local-cluster: running; seed $(seeds)"
}

case $COMMAND in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *) usage ;;
esac
