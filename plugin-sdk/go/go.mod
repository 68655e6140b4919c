module example.invalid/serf-wasm/plugin-sdk/go

go 1.24
