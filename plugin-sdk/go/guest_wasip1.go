//go:build wasip1

package serf

// The wasm side of the ABI: the module's exports and the serf.* imports. All of the SDK's
// unsafe code is in this file. It only moves pointers and lengths between the host and
// guest.go, which does the work. Go (1.24+) and TinyGo (0.34+) both read these directives;
// //go:wasmexport takes only 32- and 64-bit integer, float and unsafe.Pointer parameters,
// hence the int32s.

import (
	"strconv"
	"unsafe"
)

// The raw host calls of ABI v1. Pointers are guest memory offsets and lengths byte counts;
// the result is >= 0 on success or a negative Status code. The host only reads the memory
// range it is given, after checking it lies inside the module's memory, so no argument can
// corrupt the guest.

//go:wasmimport serf log
func hostLog(level int32, ptr unsafe.Pointer, length int32) int32

//go:wasmimport serf set_error
func hostSetError(ptr unsafe.Pointer, length int32) int32

//go:wasmimport serf respond
func hostRespond(ptr unsafe.Pointer, length int32) int32

//go:wasmexport serf_plugin_abi_v1
func serfPluginABIv1() {}

//go:wasmexport serf_input_buffer
func serfInputBuffer(size int32) int32 {
	buffer := instance.inputBuffer(size)
	if len(buffer) == 0 {
		return 0
	}
	// wasm32 addresses fit 32 bits; the ABI carries them as i32 bit patterns.
	return int32(uint32(uintptr(unsafe.Pointer(unsafe.SliceData(buffer)))))
}

//go:wasmexport serf_init
func serfInit(ptr, length int32) int32 {
	payload, message := input(ptr, length)
	if payload == nil {
		return fail(message)
	}
	status, message := instance.init(payload, wasmHost{})
	if status != 0 {
		return fail(message)
	}
	return 0
}

//go:wasmexport serf_handle
func serfHandle(ptr, length int32) int32 {
	payload, message := input(ptr, length)
	if payload == nil {
		return fail(message)
	}
	status, message := instance.handle(payload, wasmHost{})
	if status != 0 {
		return fail(message)
	}
	return 0
}

//go:wasmexport serf_shutdown
func serfShutdown() {
	instance.shutdown(wasmHost{})
}

// input is the payload the host wrote at ptr, which must be the start of the input buffer
// (the only memory the host was handed), or nil and the reason.
func input(ptr, length int32) ([]byte, string) {
	base := uint32(0)
	if len(instance.input) > 0 {
		base = uint32(uintptr(unsafe.Pointer(unsafe.SliceData(instance.input))))
	}
	payload, ok := instance.payload(uint64(uint32(ptr))-uint64(base), length)
	if !ok {
		return nil, "input 0x" + strconv.FormatUint(uint64(uint32(ptr)), 16) + "+" + strconv.Itoa(int(length)) +
			" is not inside the input buffer (0x" + strconv.FormatUint(uint64(base), 16) + "+" + strconv.Itoa(len(instance.input)) + ")"
	}
	if payload == nil {
		payload = []byte{}
	}
	return payload, ""
}

// fail hands message to set_error and returns the failure status for the export.
func fail(message string) int32 {
	// A refused error text has nowhere better to go.
	_ = hostSetError(stringData(message), clampLength(len(message)))
	return failed
}

// stringData points at the string's bytes (nil for ""; the host accepts (0, 0)).
func stringData(s string) unsafe.Pointer {
	return unsafe.Pointer(unsafe.StringData(s))
}

func clampLength(n int) int32 {
	if n > 1<<31-1 {
		return 1<<31 - 1
	}
	return int32(n)
}

// wasmHost is the Host of a wasm build: each method is one import call.
type wasmHost struct{}

func (wasmHost) Respond(payload []byte) error {
	if len(payload) > 1<<31-1 {
		return ErrTooLarge
	}
	return CheckStatus(hostRespond(unsafe.Pointer(unsafe.SliceData(payload)), int32(len(payload))))
}

func (wasmHost) Log(level LogLevel, message string) {
	// A refused log line has nowhere better to go.
	_ = hostLog(int32(level), stringData(message), clampLength(len(message)))
}

func (h wasmHost) Trace(message string) { h.Log(LogTrace, message) }
func (h wasmHost) Debug(message string) { h.Log(LogDebug, message) }
func (h wasmHost) Info(message string)  { h.Log(LogInfo, message) }
func (h wasmHost) Warn(message string)  { h.Log(LogWarn, message) }
func (h wasmHost) Error(message string) { h.Log(LogError, message) }
