package serf

import "strconv"

// ABIVersion is the plugin ABI version this SDK speaks: the v of every Envelope and the abi of
// the InitContext.
const ABIVersion = 1

// The export and import names of ABI v1, as in plugin-sdk/src/abi.rs. The SDK defines the
// exports itself (guest_wasip1.go); these are for tools and tests.
const (
	// ExportMarker marks a module as a v1 plugin. It is never called.
	ExportMarker = "serf_plugin_abi_v1"
	// ExportInputBuffer is (size i32) -> i32: a pointer to at least size writable bytes.
	ExportInputBuffer = "serf_input_buffer"
	// ExportInit is (ptr i32, len i32) -> i32: called once per instance with an InitContext.
	ExportInit = "serf_init"
	// ExportHandle is (ptr i32, len i32) -> i32: called once per event with an Envelope.
	ExportHandle = "serf_handle"
	// ExportShutdown is () -> (): best effort, before the instance is dropped.
	ExportShutdown = "serf_shutdown"
	// ImportModule is the wasm import module of every host call.
	ImportModule = "serf"
	// ImportLog is (level i32, ptr i32, len i32) -> i32.
	ImportLog = "log"
	// ImportSetError is (ptr i32, len i32) -> i32.
	ImportSetError = "set_error"
	// ImportRespond is (ptr i32, len i32) -> i32.
	ImportRespond = "respond"

	// Capability imports (ABI v1.1); each needs its capability granted in serf.toml.

	// ImportMembers is (outPtr i32, outCap i32) -> i32: writes the member list if it fits,
	// returns its length either way. Needs CapabilityMembers.
	ImportMembers = "members"
	// ImportFireEvent is (ptr i32, len i32) -> i32. Needs CapabilityEvents.
	ImportFireEvent = "fire_event"
	// ImportQuery is (ptr i32, len i32) -> i32: a query handle >= 1. Needs CapabilityQueries.
	ImportQuery = "query"
)

// Status is what a host call returns: 0 or more is success, a negative value one of the
// constants below.
type Status int32

// The status codes of ABI v1 (docs/plugin-abi.md, section 3.1).
const (
	// StatusOK means the call did what it was asked.
	StatusOK Status = 0
	// StatusBadArgument means an argument is out of range, such as an unknown log level.
	StatusBadArgument Status = -1
	// StatusInvalidMemory means a pointer and length do not lie inside the guest's memory.
	StatusInvalidMemory Status = -2
	// StatusNotAllowed means not here: respond outside a query, a second time, or to a query
	// another plugin on this node answered first.
	StatusNotAllowed Status = -3
	// StatusTooLarge means the payload is over its limit (Serf's query response limit).
	StatusTooLarge Status = -4
	// StatusRateLimited means too many calls too quickly; the call had no effect.
	StatusRateLimited Status = -5
	// StatusNotFound means the thing named does not exist (reserved for later imports).
	StatusNotFound Status = -6
	// StatusUnavailable means the host cannot take it now, for example while shutting down.
	StatusUnavailable Status = -7
	// StatusDenied means the plugin's serf.toml table does not grant the capability the call
	// needs (ABI v1.1).
	StatusDenied Status = -8
)

// HostError is a host call's refusal: the negative Status code it returned.
//
// None of these change host state: a refused Respond sends nothing and may be retried (with a
// smaller payload, say) while the query is still being handled. Compare with the Err*
// constants (err == serf.ErrTooLarge, or errors.Is); codes from a newer host that this SDK
// does not know keep their value.
type HostError int32

// The host errors of ABI v1, one per negative Status.
const (
	// ErrBadArgument: an argument is out of range, such as an unknown log level.
	ErrBadArgument = HostError(StatusBadArgument)
	// ErrInvalidMemory: a pointer and length do not lie inside the guest's memory.
	ErrInvalidMemory = HostError(StatusInvalidMemory)
	// ErrNotAllowed: Respond outside a query, a second time for one query, or to a query
	// another plugin on this node answered first (a node sends one answer per query).
	ErrNotAllowed = HostError(StatusNotAllowed)
	// ErrTooLarge: the payload is over its limit (Serf's query response limit).
	ErrTooLarge = HostError(StatusTooLarge)
	// ErrRateLimited: too many calls in too short a time.
	ErrRateLimited = HostError(StatusRateLimited)
	// ErrNotFound: the thing named does not exist.
	ErrNotFound = HostError(StatusNotFound)
	// ErrUnavailable: the host cannot take it now (shutting down, a queue is full).
	ErrUnavailable = HostError(StatusUnavailable)
	// ErrDenied: the plugin's serf.toml table does not grant the capability the call needs
	// (capabilities = ["members", "events", "queries"]).
	ErrDenied = HostError(StatusDenied)
)

// CheckStatus returns nil for a success code (>= 0) and the HostError otherwise.
func CheckStatus(code int32) error {
	if code >= 0 {
		return nil
	}
	return HostError(code)
}

// Code is the raw (negative) code that crossed the boundary.
func (e HostError) Code() int32 {
	return int32(e)
}

// Known reports whether the code is one of ABI v1's statuses.
func (e HostError) Known() bool {
	return e >= ErrDenied && e <= ErrBadArgument
}

// Error says which call failed and why, in the words the Rust SDK uses for the same code,
// so the agent logs the same text whichever SDK a plugin was written with.
func (e HostError) Error() string {
	return "host call failed: " + e.reason()
}

func (e HostError) reason() string {
	switch e {
	case ErrBadArgument:
		return "bad argument"
	case ErrInvalidMemory:
		return "pointer outside guest memory"
	case ErrNotAllowed:
		return "not allowed here"
	case ErrTooLarge:
		return "payload too large"
	case ErrRateLimited:
		return "rate limited"
	case ErrNotFound:
		return "not found"
	case ErrUnavailable:
		return "host unavailable"
	case ErrDenied:
		return "capability not granted: add it to capabilities = [...] in the plugin's [plugins.NAME] table in serf.toml"
	}
	return "unknown host status " + strconv.Itoa(int(e))
}

// LogLevel is a level accepted by the log import.
type LogLevel int32

// The log levels of ABI v1.
const (
	// LogTrace is very fine detail.
	LogTrace LogLevel = 0
	// LogDebug is detail for debugging.
	LogDebug LogLevel = 1
	// LogInfo is normal operation.
	LogInfo LogLevel = 2
	// LogWarn means something is off but the plugin goes on.
	LogWarn LogLevel = 3
	// LogError means the plugin could not do its job.
	LogError LogLevel = 4
)

// String is the level's lowercase name: trace, debug, info, warn, error.
func (l LogLevel) String() string {
	switch l {
	case LogTrace:
		return "trace"
	case LogDebug:
		return "debug"
	case LogInfo:
		return "info"
	case LogWarn:
		return "warn"
	case LogError:
		return "error"
	}
	return "level(" + strconv.Itoa(int(l)) + ")"
}
