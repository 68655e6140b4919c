// Package serftest runs plugin logic natively under go test: a MockHost and event
// constructors, the Go counterpart of the Rust SDK's testing module.
//
// A plugin's Handle only sees a serf.Event and a serf.Host, so the same code runs on the build
// machine with no wasm runtime involved:
//
//	func TestUpcaseAnswersInUpperCase(t *testing.T) {
//		host := serftest.NewMockHost()
//		if err := host.Deliver(Upcase{}, serftest.Query("upcase", []byte("foo"))); err != nil {
//			t.Fatal(err)
//		}
//		if got, _ := host.Response(); string(got) != "FOO" {
//			t.Fatalf("response %q", got)
//		}
//	}
//
// The constructors fill the fields a test rarely cares about with fixed values (Lamport time
// 1, node test-node, port 7946), so tests stay deterministic. Build the serf structs directly
// when a test needs other values.
package serftest

import (
	"strings"

	serf "github.com/serf-wasm/serf-wasm/plugin-sdk/go"
)

// DefaultMaxResponseBytes is Serf's default limit on an encoded query response, in bytes, and
// MockHost's default cap on a response payload. The agent counts the response header and the
// node name too, so it refuses a little earlier.
const DefaultMaxResponseBytes = 1024

// LogLine is one line a plugin logged.
type LogLine struct {
	// Level is the line's level.
	Level serf.LogLevel
	// Message is the text as the plugin gave it.
	Message string
}

// respondState says whether Respond is allowed right now.
type respondState uint8

const (
	// respondOpen: a query is being handled and has no answer yet.
	respondOpen respondState = iota
	// respondAnswered: the query being handled was answered.
	respondAnswered
	// respondClosed: no query is being handled.
	respondClosed
)

// MockHost is a serf.Host that records what a plugin asked for, with the agent's rules for
// Respond.
//
// Drive a plugin through Init and Deliver: they tell the mock which event is being handled,
// so Respond is refused outside a query and after the first answer, as the agent does.
// Calling plugin.Handle(event, host) directly also works, but then the mock cannot know
// whether a query is in progress and allows one response.
type MockHost struct {
	// Responses are the accepted responses, oldest first (one per query answered).
	Responses [][]byte
	// Logs are the logged lines, oldest first.
	Logs []LogLine
	// MaxResponseBytes: longer responses get serf.ErrTooLarge. NewMockHost sets
	// DefaultMaxResponseBytes.
	MaxResponseBytes int
	respond          respondState

	// Capabilities (ABI v1.1); see capabilities.go.

	// Granted are the capabilities granted, none by default as in the agent: calls that need
	// another one get serf.ErrDenied. See Grant.
	Granted map[serf.Capability]bool
	// MemberList is what Members returns (when CapabilityMembers is granted).
	MemberList []serf.Member
	// Fired are the user events fired through FireEvent, oldest first.
	Fired []FiredEvent
	// Queries are the queries sent through Query, oldest first; the handle of each is its
	// index plus one.
	Queries []serf.QueryRequest

	// Jobs (ABI v1.1); see jobs.go.

	// Jobs are the jobs started through StartJob and not reaped, by id (from 1).
	Jobs map[uint32]*MockJob
	// MaxJobs is how many jobs may not have ended at once, as the agent's max_jobs; 0 forbids
	// jobs. NewMockHost sets DefaultMaxJobs.
	MaxJobs   int
	lastJobID uint32
	inJob     bool

	// Commands (ABI v1.1); see commands.go.

	// Commands are the commands granted, by name, none by default as in the agent: see
	// GrantCommand.
	Commands map[string]*MockCommand
	// Ran are the commands run or started, oldest first (refused calls are not here).
	Ran []RanCommand
}

// NewMockHost is a host with no calls recorded, which allows one response until told
// otherwise.
func NewMockHost() *MockHost {
	return &MockHost{MaxResponseBytes: DefaultMaxResponseBytes, MaxJobs: DefaultMaxJobs}
}

// Init runs plugin.Init(ctx) as serf_init would (no query in progress).
func (h *MockHost) Init(plugin serf.Plugin, ctx *serf.InitContext) error {
	h.respond = respondClosed
	defer h.close()
	return plugin.Init(ctx, h)
}

// Deliver hands event to plugin.Handle as serf_handle would: Respond is allowed once if the
// event is a query, never otherwise.
func (h *MockHost) Deliver(plugin serf.Plugin, event serf.Event) error {
	h.respond = respondClosed
	if _, ok := event.(serf.Query); ok {
		h.respond = respondOpen
	}
	defer h.close()
	return plugin.Handle(event, h)
}

// Shutdown runs plugin.Shutdown as serf_shutdown would.
func (h *MockHost) Shutdown(plugin serf.Plugin) {
	h.respond = respondClosed
	plugin.Shutdown(h)
}

func (h *MockHost) close() { h.respond = respondClosed }

// Response is the most recent accepted response, if any.
func (h *MockHost) Response() ([]byte, bool) {
	if len(h.Responses) == 0 {
		return nil, false
	}
	return h.Responses[len(h.Responses)-1], true
}

// Logged reports whether a line at level containing needle was logged.
func (h *MockHost) Logged(level serf.LogLevel, needle string) bool {
	for _, line := range h.Logs {
		if line.Level == level && strings.Contains(line.Message, needle) {
			return true
		}
	}
	return false
}

// Respond records payload under the agent's rules: once per query, only during a query, at
// most MaxResponseBytes.
func (h *MockHost) Respond(payload []byte) error {
	if h.respond != respondOpen {
		return serf.ErrNotAllowed
	}
	if len(payload) > h.MaxResponseBytes {
		return serf.ErrTooLarge
	}
	h.respond = respondAnswered
	h.Responses = append(h.Responses, append([]byte{}, payload...))
	return nil
}

// Log records the line.
func (h *MockHost) Log(level serf.LogLevel, message string) {
	h.Logs = append(h.Logs, LogLine{Level: level, Message: message})
}

// Trace records a line at serf.LogTrace.
func (h *MockHost) Trace(message string) { h.Log(serf.LogTrace, message) }

// Debug records a line at serf.LogDebug.
func (h *MockHost) Debug(message string) { h.Log(serf.LogDebug, message) }

// Info records a line at serf.LogInfo.
func (h *MockHost) Info(message string) { h.Log(serf.LogInfo, message) }

// Warn records a line at serf.LogWarn.
func (h *MockHost) Warn(message string) { h.Log(serf.LogWarn, message) }

// Error records a line at serf.LogError.
func (h *MockHost) Error(message string) { h.Log(serf.LogError, message) }

// UserEvent is a user event name with payload (Lamport time 1, no coalescing).
func UserEvent(name string, payload []byte) serf.UserEvent {
	return serf.UserEvent{Name: name, Payload: payload, LTime: 1}
}

// Query is a query name with payload from test-node (id 1, Lamport time 1, a deadline in
// 2100).
func Query(name string, payload []byte) serf.Query {
	return serf.Query{
		ID:         1,
		Name:       name,
		Payload:    payload,
		LTime:      1,
		SourceNode: "test-node",
		DeadlineMs: 4_102_444_800_000,
	}
}

// Member is an alive member name at addr, port 7946, without tags.
func Member(name, addr string) serf.Member {
	return serf.Member{Name: name, Addr: addr, Port: 7946, Tags: map[string]string{}, Status: "alive"}
}

// MemberJoin is a member-join event.
func MemberJoin(members ...serf.Member) serf.MemberEvent {
	return serf.MemberEvent{Kind: serf.MemberJoin, Members: members}
}

// MemberLeave is a member-leave event.
func MemberLeave(members ...serf.Member) serf.MemberEvent {
	return serf.MemberEvent{Kind: serf.MemberLeave, Members: members}
}

// MemberFailed is a member-failed event.
func MemberFailed(members ...serf.Member) serf.MemberEvent {
	return serf.MemberEvent{Kind: serf.MemberFailed, Members: members}
}

// MemberUpdate is a member-update event.
func MemberUpdate(members ...serf.Member) serf.MemberEvent {
	return serf.MemberEvent{Kind: serf.MemberUpdate, Members: members}
}

// MemberReap is a member-reap event.
func MemberReap(members ...serf.Member) serf.MemberEvent {
	return serf.MemberEvent{Kind: serf.MemberReap, Members: members}
}

// Dropped is the event the host sends after it had to drop count events for this plugin.
func Dropped(count uint64) serf.Dropped {
	return serf.Dropped{Count: count}
}

// InitContext is the init context of plugin test-plugin on node test-node with this config
// (nil for none).
//
// The context goes through the SDK's encoder and decoder, as it would between the agent and
// a plugin, so config values arrive with the types a plugin really sees: an int becomes an
// int64, a []string a []any, and a type msgpack cannot carry becomes nil.
func InitContext(config map[string]any) *serf.InitContext {
	ctx := &serf.InitContext{
		ABI:    serf.ABIVersion,
		Host:   "serf/test",
		Node:   "test-node",
		Plugin: "test-plugin",
		Config: config,
	}
	decoded, err := serf.DecodeInitContext(serf.EncodeInitContext(ctx))
	if err != nil {
		// The SDK decodes everything its encoder writes; the fixture tests check it.
		panic("serftest: init context does not round-trip: " + err.Error())
	}
	return decoded
}
