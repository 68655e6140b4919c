//go:build wasip1

package serf

// The job imports and export (ABI v1.1) and the wasm Host's methods that call them. Go's
// linker keeps a method, and so its import, only if the plugin calls it, so a plugin that
// starts no jobs imports none of these. The serf_job export is always there; the agent only
// calls it for a job the plugin started.

import "unsafe"

//go:wasmimport serf job_start
func hostJobStart(ptr unsafe.Pointer, length int32) int32

//go:wasmimport serf job_status
func hostJobStatus(id int32, ptr unsafe.Pointer, capacity int32) int32

//go:wasmimport serf job_kill
func hostJobKill(id int32) int32

//go:wasmimport serf job_reap
func hostJobReap(id int32) int32

//go:wasmexport serf_job
func serfJob(ptr, length int32) int32 {
	payload, message := input(ptr, length)
	if payload == nil {
		return fail(message)
	}
	status, message := instance.job(payload, wasmHost{})
	if message != "" {
		// A refused error text has nowhere better to go.
		_ = hostSetError(stringData(message), clampLength(len(message)))
	}
	return status
}

func (wasmHost) StartJob(name string, arg []byte) (uint32, error) {
	request := EncodeJobStart(name, arg)
	if len(request) > 1<<31-1 {
		return 0, ErrTooLarge
	}
	id := hostJobStart(unsafe.Pointer(unsafe.SliceData(request)), int32(len(request)))
	if err := CheckStatus(id); err != nil {
		return 0, err
	}
	return uint32(id), nil
}

// JobStatus asks with a buffer, and again with a larger one while the host says the status
// needs more room (its output tail may grow in between).
func (wasmHost) JobStatus(id uint32) (JobInfo, error) {
	if id > 1<<31-1 {
		return JobInfo{}, ErrNotFound
	}
	buffer := make([]byte, 4096)
	for attempt := 0; attempt < 4; attempt++ {
		n := hostJobStatus(int32(id), unsafe.Pointer(unsafe.SliceData(buffer)), clampLength(len(buffer)))
		if err := CheckStatus(n); err != nil {
			return JobInfo{}, err
		}
		if int(n) <= len(buffer) {
			info, err := DecodeJobInfo(buffer[:n])
			if err != nil {
				// A status the SDK cannot read is the host's fault; report it as unavailable.
				return JobInfo{}, ErrUnavailable
			}
			return info, nil
		}
		buffer = make([]byte, int(n)+int(n)/8)
	}
	return JobInfo{}, ErrUnavailable
}

func (wasmHost) KillJob(id uint32) error {
	if id > 1<<31-1 {
		return ErrNotFound
	}
	return CheckStatus(hostJobKill(int32(id)))
}

func (wasmHost) ReapJob(id uint32) error {
	if id > 1<<31-1 {
		return ErrNotFound
	}
	return CheckStatus(hostJobReap(int32(id)))
}
