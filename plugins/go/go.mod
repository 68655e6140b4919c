module example.invalid/serf-wasm/plugins/go

go 1.24

require example.invalid/serf-wasm/plugin-sdk/go v0.0.0

replace example.invalid/serf-wasm/plugin-sdk/go => ../../plugin-sdk/go
