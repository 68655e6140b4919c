// Command {{plugin}} is a serf plugin, written by `serf plugin new {{plugin}} --lang go`: it
// greets new members in the log, answers the ping query with pong and counts deploy user
// events. Replace each part with your own handling.
//
// The agent calls Init once per instance with the plugin's serf.toml table, then Handle once
// per event, one at a time, in order. Everything runs in a sandbox with a CPU (fuel) budget,
// a memory cap and a deadline per event; a panic only costs this instance, which the agent
// replaces (and the state starts again from the value given to serf.Register).
//
//	GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -o {{plugin}}.wasm .
package main

import (
	"strconv"

	serf "{{sdk_module}}"
)

// Config is the plugin's serf.toml table: config = { greeting = "hi" }.
type Config struct {
	Greeting string `serf:"greeting"`
}

// Plugin is the plugin's state: one value per instance, kept from event to event.
type Plugin struct {
	serf.PluginDefaults
	config  Config
	deploys uint64
}

// Init reads the config. Return an error to refuse it: the agent logs the message and
// retries later, so say what is wrong and with which value.
func (p *Plugin) Init(ctx *serf.InitContext, host serf.Host) error {
	p.config = Config{Greeting: "welcome"}
	if err := ctx.DecodeConfig(&p.config); err != nil {
		return err
	}
	host.Debug("plugin " + ctx.Plugin + " started on " + ctx.Node)
	return nil
}

// Handle handles one event. Return nil for events you do not care about: new kinds may
// appear, and the events filter in serf.toml decides what arrives at all.
func (p *Plugin) Handle(event serf.Event, host serf.Host) error {
	switch e := event.(type) {
	case serf.MemberEvent:
		if e.EventKind() == "member-join" {
			for _, member := range e.Members {
				host.Info(p.config.Greeting + " " + member.Name)
			}
		}
	case serf.UserEvent:
		if e.Name == "deploy" {
			p.deploys++
			host.Info("deploy " + strconv.FormatUint(p.deploys, 10) + " of " + string(e.Payload))
		}
	case serf.Query:
		if e.Name == "ping" {
			// At most one answer per query, well under 1 KiB.
			return host.Respond([]byte("pong"))
		}
	}
	return nil
}

func init() { serf.Register(&Plugin{}) }

// main is never called: -buildmode=c-shared builds a reactor, whose _initialize runs the
// package initialisers above and returns.
func main() {}
