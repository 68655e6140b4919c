//go:build wasip1

package serf

// The capability imports (ABI v1.1) and the wasm Host's methods that call them. Go's linker
// keeps a method, and so its import, only if the plugin calls it, so a plugin that uses no
// capability imports none and still loads on older hosts.

import "unsafe"

//go:wasmimport serf members
func hostMembers(ptr unsafe.Pointer, capacity int32) int32

//go:wasmimport serf fire_event
func hostFireEvent(ptr unsafe.Pointer, length int32) int32

//go:wasmimport serf query
func hostQuery(ptr unsafe.Pointer, length int32) int32

// Members asks with a buffer, and again with a larger one while the host says the list needs
// more room (it may grow between two calls). The host writes only into the buffer it is
// given, and only when the whole list fits.
func (wasmHost) Members() ([]Member, error) {
	buffer := make([]byte, 4096)
	for attempt := 0; attempt < 4; attempt++ {
		n := hostMembers(unsafe.Pointer(unsafe.SliceData(buffer)), clampLength(len(buffer)))
		if err := CheckStatus(n); err != nil {
			return nil, err
		}
		if int(n) <= len(buffer) {
			members, err := DecodeMemberList(buffer[:n])
			if err != nil {
				// A list the SDK cannot read is the host's fault; report it as unavailable.
				return nil, ErrUnavailable
			}
			return members, nil
		}
		buffer = make([]byte, int(n)+int(n)/8)
	}
	return nil, ErrUnavailable
}

func (wasmHost) FireEvent(name string, payload []byte, coalesce bool) error {
	request := EncodeFireEvent(name, payload, coalesce)
	if len(request) > 1<<31-1 {
		return ErrTooLarge
	}
	return CheckStatus(hostFireEvent(unsafe.Pointer(unsafe.SliceData(request)), int32(len(request))))
}

func (wasmHost) Query(request QueryRequest) (uint32, error) {
	encoded := EncodeQueryRequest(request)
	if len(encoded) > 1<<31-1 {
		return 0, ErrTooLarge
	}
	handle := hostQuery(unsafe.Pointer(unsafe.SliceData(encoded)), int32(len(encoded)))
	if err := CheckStatus(handle); err != nil {
		return 0, err
	}
	return uint32(handle), nil
}
