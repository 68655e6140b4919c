//go:build wasip1

package serf

// The command imports (ABI v1.1) and the wasm Host's methods that call them. Go's linker keeps
// a method, and so its import, only if the plugin calls it.

import "unsafe"

//go:wasmimport serf command_run
func hostCommandRun(ptr unsafe.Pointer, length int32, out unsafe.Pointer, capacity int32) int32

//go:wasmimport serf command_result
func hostCommandResult(out unsafe.Pointer, capacity int32) int32

//go:wasmimport serf command_start
func hostCommandStart(ptr unsafe.Pointer, length int32) int32

// RunCommand runs with a 16 KiB buffer, and fetches a larger result with command_result (the
// command does not run again).
func (wasmHost) RunCommand(name string, args []string, stdin []byte) (CommandResult, error) {
	request := EncodeCommandRequest(name, args, stdin)
	if len(request) > 1<<31-1 {
		return CommandResult{}, ErrTooLarge
	}
	buffer := make([]byte, 16<<10)
	n := hostCommandRun(unsafe.Pointer(unsafe.SliceData(request)), int32(len(request)),
		unsafe.Pointer(unsafe.SliceData(buffer)), clampLength(len(buffer)))
	if err := CheckStatus(n); err != nil {
		return CommandResult{}, err
	}
	if int(n) > len(buffer) {
		buffer = make([]byte, n)
		n = hostCommandResult(unsafe.Pointer(unsafe.SliceData(buffer)), clampLength(len(buffer)))
		if err := CheckStatus(n); err != nil {
			return CommandResult{}, err
		}
		if int(n) > len(buffer) {
			return CommandResult{}, ErrUnavailable
		}
	}
	result, err := DecodeCommandResult(buffer[:n])
	if err != nil {
		// A result the SDK cannot read is the host's fault; report it as unavailable.
		return CommandResult{}, ErrUnavailable
	}
	return result, nil
}

func (wasmHost) StartCommand(name string, args []string, stdin []byte) (uint32, error) {
	request := EncodeCommandRequest(name, args, stdin)
	if len(request) > 1<<31-1 {
		return 0, ErrTooLarge
	}
	id := hostCommandStart(unsafe.Pointer(unsafe.SliceData(request)), int32(len(request)))
	if err := CheckStatus(id); err != nil {
		return 0, err
	}
	return uint32(id), nil
}
