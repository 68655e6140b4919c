package serf

// The bodies of the ABI's exports, without the wasm plumbing: guest_wasip1.go declares the
// exports and imports and calls these; native tests call them directly. This file owns the
// instance's state (the registered plugin, whether serf_init accepted it, the input buffer)
// and decides nothing about events beyond decoding them and handing them to the plugin.

// failed is what serf_init and serf_handle return for a refusal or a failed event (the ABI
// only says "non-zero"); the reason has gone to set_error first.
const failed int32 = 1

// minInputBytes is the input buffer's first size, so that small events never reallocate.
const minInputBytes = 4096

// guest is one instance's SDK state. An instance is single-threaded and the host calls one
// export at a time, so nothing here needs a lock.
type guest struct {
	plugin Plugin
	// active is true from a successful serf_init until serf_shutdown.
	active bool
	// input is the one buffer the host writes payloads into: grown as needed, never shrunk,
	// always reachable from this global so the garbage collector keeps it where the host
	// expects it (Go's collector does not move objects).
	input []byte
}

// instance is the module's SDK state.
var instance guest

// inputBuffer is serf_input_buffer's body: at least size bytes, or nil for a negative size.
func (g *guest) inputBuffer(size int32) []byte {
	if size < 0 {
		return nil
	}
	if int(size) > cap(g.input) || cap(g.input) == 0 {
		grown := max(int(size), 2*cap(g.input), minInputBytes)
		// The old buffer becomes garbage; the host never uses a pointer past the next call.
		g.input = make([]byte, grown)
	}
	g.input = g.input[:cap(g.input)]
	return g.input
}

// payload is the input the host wrote at offset start (relative to the buffer) for length
// bytes, or ok=false if that is not inside the buffer.
func (g *guest) payload(start uint64, length int32) ([]byte, bool) {
	if len(g.input) == 0 || start != 0 || length < 0 || int(length) > len(g.input) {
		return nil, false
	}
	return g.input[:length], true
}

// init is serf_init's body: the status to return and, if it is not 0, the error text.
func (g *guest) init(payload []byte, host Host) (int32, string) {
	ctx, err := DecodeInitContext(payload)
	if err != nil {
		return failed, err.Error()
	}
	if g.plugin == nil {
		return failed, "no plugin registered: call serf.Register from an init function of package main"
	}
	g.active = false
	defer recoverAndLog(host)
	if err := g.plugin.Init(ctx, host); err != nil {
		return failed, errorText(err)
	}
	g.active = true
	return 0, ""
}

// handle is serf_handle's body: the status to return and, if it is not 0, the error text.
func (g *guest) handle(payload []byte, host Host) (int32, string) {
	envelope, err := DecodeEnvelope(payload)
	if unknown, ok := err.(*UnknownKindError); ok {
		// New kinds may appear within v1; a plugin cannot know them, so it skips them.
		host.Debug(unknown.Error())
		return 0, ""
	}
	if err != nil {
		return failed, err.Error()
	}
	if !g.active {
		return failed, "serf_handle called before a successful serf_init"
	}
	defer recoverAndLog(host)
	if err := g.plugin.Handle(envelope.Event, host); err != nil {
		return failed, errorText(err)
	}
	return 0, ""
}

// shutdown is serf_shutdown's body.
func (g *guest) shutdown(host Host) {
	if !g.active {
		return
	}
	g.active = false
	defer recoverAndLog(host)
	g.plugin.Shutdown(host)
}

// errorText is err's message; the host needs some text even for an error that has none.
func errorText(err error) string {
	if text := err.Error(); text != "" {
		return text
	}
	return "plugin returned an error without a message"
}

// recoverAndLog sends a panic's message to the agent's log at error level, the way the Rust
// SDK's panic hook does, then panics on: the runtime prints the stack to stderr (which the
// agent also logs) and the instance traps, so the agent replaces it.
func recoverAndLog(host Host) {
	if r := recover(); r != nil {
		host.Error("plugin panicked: " + panicText(r))
		panic(r)
	}
}

func panicText(r any) string {
	switch r := r.(type) {
	case error:
		return r.Error()
	case string:
		return r
	case interface{ String() string }:
		return r.String()
	}
	return "non-string panic payload"
}
