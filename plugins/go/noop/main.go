// Command noop is the Go twin of plugins/noop: it does nothing with every event, the baseline
// for measuring what the agent's plugin machinery and Go's runtime cost per event.
package main

import serf "github.com/serf-wasm/serf-wasm/plugin-sdk/go"

// Noop handles every event by returning at once.
type Noop struct{ serf.PluginDefaults }

// Handle ignores the event.
func (Noop) Handle(serf.Event, serf.Host) error { return nil }

func init() { serf.Register(Noop{}) }

// main is never called: -buildmode=c-shared builds a reactor, whose _initialize runs the
// package initialisers above and returns.
func main() {}
