package serftest

// MockHost's capability calls (ABI v1.1), with the agent's rules: denied until granted, and
// Serf's default size limits.

import serf "github.com/serf-wasm/serf-wasm/plugin-sdk/go"

// DefaultMaxEventBytes is Serf's default limit on a user event's name and payload together,
// in bytes, which FireEvent applies as the agent does.
const DefaultMaxEventBytes = 512

// DefaultMaxQueryBytes is Serf's default limit on an encoded query, in bytes; Query caps a
// query's name and payload together at this (the agent also counts the header, so it refuses
// a little earlier).
const DefaultMaxQueryBytes = 1024

// FiredEvent is one user event a plugin fired.
type FiredEvent struct {
	// Name is the event name.
	Name string
	// Payload is its payload.
	Payload []byte
	// Coalesce is whether receivers may coalesce it.
	Coalesce bool
}

// Grant grants capability, as capabilities = ["..."] in serf.toml does; it returns h so grants
// chain.
func (h *MockHost) Grant(capability serf.Capability) *MockHost {
	if h.Granted == nil {
		h.Granted = map[serf.Capability]bool{}
	}
	h.Granted[capability] = true
	return h
}

func (h *MockHost) check(capability serf.Capability) error {
	if !h.Granted[capability] {
		return serf.ErrDenied
	}
	return nil
}

// Members returns MemberList if CapabilityMembers is granted.
func (h *MockHost) Members() ([]serf.Member, error) {
	if err := h.check(serf.CapabilityMembers); err != nil {
		return nil, err
	}
	return append([]serf.Member{}, h.MemberList...), nil
}

// FireEvent records the event if CapabilityEvents is granted and it fits
// DefaultMaxEventBytes.
func (h *MockHost) FireEvent(name string, payload []byte, coalesce bool) error {
	if err := h.check(serf.CapabilityEvents); err != nil {
		return err
	}
	if len(name)+len(payload) > DefaultMaxEventBytes {
		return serf.ErrTooLarge
	}
	h.Fired = append(h.Fired, FiredEvent{Name: name, Payload: append([]byte{}, payload...), Coalesce: coalesce})
	return nil
}

// Query records the request if CapabilityQueries is granted and it fits
// DefaultMaxQueryBytes; the handle is its position in Queries plus one.
func (h *MockHost) Query(request serf.QueryRequest) (uint32, error) {
	if err := h.check(serf.CapabilityQueries); err != nil {
		return 0, err
	}
	if len(request.Name)+len(request.Payload) > DefaultMaxQueryBytes {
		return 0, serf.ErrTooLarge
	}
	h.Queries = append(h.Queries, request)
	return uint32(len(h.Queries)), nil
}

// QueryResponse is from's answer payload to the query with handle query, named name.
func QueryResponse(query uint32, name, from string, payload []byte) serf.QueryResponse {
	return serf.QueryResponse{Query: query, Name: name, From: from, Payload: payload}
}

// QueryDone is the end of the query with handle query, named name, which ran its course.
func QueryDone(query uint32, name string) serf.QueryDone {
	return serf.QueryDone{Query: query, Name: name}
}
