// Package serf writes serf event handlers in Go as sandboxed WebAssembly plugins.
//
// A plugin is a type implementing Plugin, registered once from an init function of package
// main. Built with
//
//	GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -o upcase.wasm .
//
// (Go 1.24 or later) or, untested in CI,
//
//	tinygo build -target=wasip1 -buildmode=c-shared -o upcase.wasm .
//
// (TinyGo 0.34 or later), the package becomes a module that the agent loads from serf.toml:
// this package defines the exports of the plugin ABI (docs/plugin-abi.md), decodes each event
// and calls the plugin's Handle with a Host for answering queries and logging. Built natively,
// nothing is exported and the same code unit-tests against serftest.MockHost.
//
//	package main
//
//	import (
//		"bytes"
//
//		serf "github.com/serf-wasm/serf-wasm/plugin-sdk/go"
//	)
//
//	// Upcase answers upcase queries with the payload in upper case.
//	type Upcase struct{ serf.PluginDefaults }
//
//	func (Upcase) Handle(event serf.Event, host serf.Host) error {
//		if query, ok := event.(serf.Query); ok && query.Name == "upcase" {
//			return host.Respond(bytes.ToUpper(query.Payload))
//		}
//		return nil
//	}
//
//	func init() { serf.Register(Upcase{}) }
//
//	func main() {} // required by -buildmode=c-shared, never called
//
// The agent hands a plugin its events one at a time, in order, on one long-lived instance, so
// the registered value's fields carry state from event to event. It runs every call under a
// fuel budget, a memory cap and a wall-clock deadline. A panic or an exceeded limit traps, and
// the agent throws the instance away and builds a fresh one (package initialisers, Register,
// Init again).
//
// What a Go plugin cannot do, and why: goroutines run only while an export is executing, so
// nothing happens between two events (no background work, no timers that fire later); there
// are no sockets; files exist only under directories the plugin's serf.toml entry grants.
// Jobs and capabilities (sending events or queries, reading the member list) are not part of
// ABI v1 yet. docs/plugin-sdk-go.md is the full guide.
//
// The SDK has no dependencies beyond the standard library, and its msgpack codec
// (DecodeEnvelope, DecodeInitContext and the Encode functions) uses no reflection: it covers
// exactly the ABI's payloads, and plugin-sdk/testdata's golden payloads keep it in step with
// the Rust SDK. Only InitContext.DecodeConfig, which fills a struct from the config table,
// uses reflection.
package serf
