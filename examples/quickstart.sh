#!/usr/bin/env bash
# Builds the agent and the example plugins, then starts an agent with serf.toml:
#
#   ./examples/quickstart.sh            (extra arguments go to `serf agent`)
#
# The agent listens for gossip on 127.0.0.1:7946 and for RPC on 127.0.0.1:7373, loads
# plugins/{upcase,memresponse,hello,longjob,lbsync}.wasm and writes its state under ./data.
set -euo pipefail
cd "$(dirname "$0")/.."

if command -v rustup >/dev/null; then
    rustup target add wasm32-wasip1 >/dev/null
fi
cargo build --release --locked -p serf-host
cargo build --locked --profile plugin --target wasm32-wasip1 -p upcase -p memresponse -p hello
# On its own: cargo would turn the SDK's jobs feature on for every plugin of one run.
cargo build --locked --profile plugin --target wasm32-wasip1 -p longjob
# The same for the commands feature.
cargo build --locked --profile plugin --target wasm32-wasip1 -p lbsync
cp target/wasm32-wasip1/plugin/{upcase,memresponse,hello,longjob,lbsync}.wasm plugins/
exec target/release/serf agent -config-file=serf.toml "$@"
