module github.com/serf-wasm/serf-wasm/plugin-sdk/go

go 1.24
