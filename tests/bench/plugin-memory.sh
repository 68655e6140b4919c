#!/usr/bin/env bash
# RSS of an idle agent with 0, 1, 4 and 16 Rust plugins and 4 Go plugins, from a warm compiled-
# plugin cache and right after a cold compile, beside Serf 0.9.4 with as many shell handlers.
#
#   bash tests/bench/plugin-memory.sh [SERF_BIN] [REPS]
#
# SERF_BIN defaults to target/release/serf (cargo build --release -p serf-host); REPS to 3.
# Needs the example plugins (cargo build --profile plugin --target wasm32-wasip1 -p upcase -p
# memresponse -p hello -p longjob, the last in a run of its own) and the Go ones
# (bash plugin-sdk/go/build.sh), and /usr/bin/serf. Each agent runs alone on 127.77.0.1, with
# its plugins as the example serf.toml configures them; RSS is VmRSS from /proc/PID/status
# once every plugin is running and the agent has been idle for 3 s. Prints one Markdown row
# per case: the median and the runs.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
SERF=${1:-target/release/serf}
REPS=${2:-3}
[[ $SERF = /* ]] || SERF=$ROOT/$SERF
RUST=target/wasm32-wasip1/plugin
GO=target/wasm32-wasip1/go
ADDR=127.77.0.1
WORK=$(mktemp -d)
AGENT=""
cleanup() {
    if [ -n "$AGENT" ]; then kill "$AGENT" 2>/dev/null || true; wait "$AGENT" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
median() { tr ' ' '\n' | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

# The plugin table of one example plugin, named NAME, as serf.toml configures it.
table() { # KIND NAME
    case $1 in
        upcase) printf '[plugins.%s]\nevents = "query:upcase"\n' "$2" ;;
        memresponse) printf '[plugins.%s]\nevents = "user:memresponse"\ndirs = { "/data" = "data" }\nconfig = { file = "/data/mem.txt" }\n' "$2" ;;
        hello) printf '[plugins.%s]\nevents = "member-join,member-leave,member-failed,member-update,user"\n' "$2" ;;
        longjob) printf '[plugins.%s]\nevents = "query:longjob"\ncapabilities = ["jobs"]\n' "$2" ;;
        noop) printf '[plugins.%s]\nevents = "user"\n' "$2" ;;
    esac
}

# Writes $WORK/agent/serf.toml and plugins/ for COUNT plugins of LANG (rust or go).
setup() { # LANG COUNT
    rm -rf "$WORK/agent"
    mkdir -p "$WORK/agent/plugins" "$WORK/agent/data"
    local kinds dir
    if [ "$1" = go ]; then kinds=(upcase memresponse hello noop); dir=$GO; else kinds=(upcase memresponse hello longjob); dir=$RUST; fi
    {
        printf 'node_name = "bench"\nbind = "%s:7946"\nrpc_addr = "%s:7373"\nlog_level = "warn"\n' "$ADDR" "$ADDR"
        printf 'data_dir = "state"\nplugin_dir = "plugins"\n'
        for ((i = 0; i < $2; i++)); do
            local kind=${kinds[$((i % 4))]} name="${kinds[$((i % 4))]}$i"
            cp "$dir/$kind.wasm" "$WORK/agent/plugins/$name.wasm"
            table "$kind" "$name"
        done
    } >"$WORK/agent/serf.toml"
}

# Starts our agent in $WORK/agent; prints its RSS in KiB once its COUNT plugins run.
measure_ours() { # COUNT
    (cd "$WORK/agent" && exec "$SERF" agent -config-file serf.toml >agent.log 2>&1) &
    AGENT=$!
    local running=0
    for _ in $(seq 600); do
        running=$("$SERF" info -rpc-addr="$ADDR:7373" -format=json 2>/dev/null | grep -o '"state": *"running"' | wc -l || true)
        [ "$running" -ge "$1" ] && break
        sleep 0.1
    done
    # This runs in a command substitution: stop the agent here, the EXIT trap cannot see it.
    [ "$running" -ge "$1" ] || { echo "plugins did not start: $(cat "$WORK/agent/agent.log")" >&2; kill "$AGENT"; exit 1; }
    sleep 3
    rss_kib "$AGENT"
    kill "$AGENT"; wait "$AGENT" 2>/dev/null || true; AGENT=""
}

measure_serf() { # HANDLERS
    local args=()
    for ((i = 0; i < $1; i++)); do args+=(-event-handler "user:h$i=/bin/true"); done
    /usr/bin/serf agent -node=bench -bind="$ADDR:7946" -rpc-addr="$ADDR:7373" -log-level=warn "${args[@]}" >"$WORK/serf.log" 2>&1 &
    AGENT=$!
    for _ in $(seq 100); do /usr/bin/serf info -rpc-addr="$ADDR:7373" >/dev/null 2>&1 && break; sleep 0.1; done
    sleep 3
    rss_kib "$AGENT"
    kill "$AGENT"; wait "$AGENT" 2>/dev/null || true; AGENT=""
}

row() { # LABEL VALUES...
    local label=$1; shift
    local runs="" v
    for v in "$@"; do runs="$runs $(mib "$v")"; done
    printf '| %s | %s MiB | %s |\n' "$label" "$(mib "$(printf '%s ' "$@" | median)")" "${runs# }"
}

echo "| agent | median RSS | runs (MiB) |"
echo "|---|---:|---|"
for case in "rust 0" "rust 1" "rust 4" "rust 16" "go 4"; do
    set -- $case
    warm=() cold=()
    for ((r = 0; r < REPS; r++)); do
        setup "$1" "$2"
        cold+=("$(measure_ours "$2")")    # empty cache: every plugin compiles
        warm+=("$(measure_ours "$2")")    # the cache the first start wrote
    done
    row "this agent, $2 $1 plugins, warm cache" "${warm[@]}"
    [ "$2" -eq 0 ] || row "this agent, $2 $1 plugins, cold compile" "${cold[@]}"
done
for n in 0 1 4 16; do
    serf=()
    for ((r = 0; r < REPS; r++)); do serf+=("$(measure_serf "$n")"); done
    row "Serf 0.9.4, $n shell handlers" "${serf[@]}"
done
