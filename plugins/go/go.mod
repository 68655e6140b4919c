module github.com/serf-wasm/serf-wasm/plugins/go

go 1.24

require github.com/serf-wasm/serf-wasm/plugin-sdk/go v0.0.0
