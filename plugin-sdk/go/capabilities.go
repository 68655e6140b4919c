package serf

// Capabilities (ABI v1.1): reading the member list, firing user events and sending queries.
// Each needs a grant in the plugin's serf.toml table (capabilities = ["members", "events",
// "queries"]); without it the call fails with ErrDenied. The types and the codec mirror
// plugin-sdk/src/abi.rs; the golden payloads in ../testdata check that both agree.

import (
	"errors"
	"math"
)

// Capability is a right granted by name in a plugin's serf.toml table.
type Capability string

// The capabilities of ABI v1.1.
const (
	// CapabilityMembers lets a plugin read the member list (Host.Members).
	CapabilityMembers Capability = "members"
	// CapabilityEvents lets a plugin fire user events (Host.FireEvent).
	CapabilityEvents Capability = "events"
	// CapabilityQueries lets a plugin send queries (Host.Query).
	CapabilityQueries Capability = "queries"
	// CapabilityJobs lets a plugin start long jobs (JobRunner.StartJob); checking, killing
	// and reaping its own jobs needs no grant.
	CapabilityJobs Capability = "jobs"
)

// QueryRequest is a query a plugin sends with Host.Query.
type QueryRequest struct {
	// Name is the query name.
	Name string
	// Payload is opaque and may be any bytes.
	Payload []byte
	// FilterNodes, if not empty, are the only nodes that answer.
	FilterNodes []string
	// FilterTags: only nodes whose tag matches each regular expression answer.
	FilterTags map[string]string
	// TimeoutMs is how long to collect answers, in milliseconds; 0 for Serf's default.
	TimeoutMs uint64
}

// QueryResponse is one answer to a query this plugin sent. It is always delivered, whatever
// the plugin's events filter.
type QueryResponse struct {
	// Query is the handle Host.Query returned.
	Query uint32
	// Name is the query name.
	Name string
	// From is the node that answered.
	From string
	// Payload is its answer.
	Payload []byte
}

// EventKind returns "query-response".
func (QueryResponse) EventKind() string { return "query-response" }
func (QueryResponse) isEvent()          {}

// QueryDone says that a query this plugin sent is over: no more QueryResponse follow.
type QueryDone struct {
	// Query is the handle Host.Query returned.
	Query uint32
	// Name is the query name.
	Name string
	// Error is empty when the query ran to its end, otherwise why the agent could not send it.
	Error string
}

// EventKind returns "query-done".
func (QueryDone) EventKind() string { return "query-done" }
func (QueryDone) isEvent()          {}

// EncodeFireEvent encodes the request of the fire_event import, as the Rust SDK does.
func EncodeFireEvent(name string, payload []byte, coalesce bool) []byte {
	w := &writer{}
	w.mapHeader(3)
	w.str("name")
	w.str(name)
	w.str("payload")
	w.bin(payload)
	w.str("coalesce")
	w.bool(coalesce)
	return w.buf
}

// EncodeQueryRequest encodes the request of the query import, as the Rust SDK does.
func EncodeQueryRequest(request QueryRequest) []byte {
	w := &writer{}
	w.mapHeader(5)
	w.str("name")
	w.str(request.Name)
	w.str("payload")
	w.bin(request.Payload)
	w.str("filter_nodes")
	w.arrayHeader(len(request.FilterNodes))
	for _, node := range request.FilterNodes {
		w.str(node)
	}
	w.str("filter_tags")
	tags := request.FilterTags
	if tags == nil {
		tags = map[string]string{}
	}
	w.stringMap(tags)
	w.str("timeout_ms")
	w.uint(request.TimeoutMs)
	return w.buf
}

// DecodeMemberList decodes what the members import writes: {members: [Member...]}.
func DecodeMemberList(payload []byte) ([]Member, error) {
	r := &reader{buf: payload}
	n, err := r.mapLen()
	if err != nil {
		return nil, errors.New("cannot decode member list: " + err.Error())
	}
	fields := required{names: []string{"members"}}
	var members []Member
	for i := 0; i < n; i++ {
		key, err := r.rawString(false, "str key")
		if err != nil {
			return nil, errors.New("cannot decode member list: " + err.Error())
		}
		if string(key) == "members" {
			fields.mark(0)
			members, err = decodeMembers(r)
		} else {
			err = r.skip()
		}
		if err != nil {
			return nil, errors.New("cannot decode member list: " + fieldError(string(key), err).Error())
		}
	}
	if err := fields.check(); err != nil {
		return nil, errors.New("cannot decode member list: " + err.Error())
	}
	return members, nil
}

// EncodeMemberList encodes a member list as the members import writes it.
func EncodeMemberList(members []Member) []byte {
	w := &writer{}
	w.mapHeader(1)
	w.str("members")
	w.members(members)
	return w.buf
}

func (w *writer) members(members []Member) {
	w.arrayHeader(len(members))
	for _, member := range members {
		w.mapHeader(5)
		w.str("name")
		w.str(member.Name)
		w.str("addr")
		w.str(member.Addr)
		w.str("port")
		w.uint(uint64(member.Port))
		w.str("tags")
		w.stringMap(member.Tags)
		w.str("status")
		w.str(member.Status)
	}
}

// queryAnswerEvent encodes a QueryResponse or QueryDone; false for other events.
func (w *writer) queryAnswerEvent(event Event) bool {
	switch e := event.(type) {
	case QueryResponse:
		w.mapHeader(5)
		w.str("kind")
		w.str("query-response")
		w.str("query")
		w.uint(uint64(e.Query))
		w.str("name")
		w.str(e.Name)
		w.str("from")
		w.str(e.From)
		w.str("payload")
		w.bin(e.Payload)
	case QueryDone:
		w.mapHeader(4)
		w.str("kind")
		w.str("query-done")
		w.str("query")
		w.uint(uint64(e.Query))
		w.str("name")
		w.str(e.Name)
		w.str("error")
		w.str(e.Error)
	default:
		return false
	}
	return true
}

// isQueryAnswerKind reports whether kind is one of the capability event kinds.
func isQueryAnswerKind(kind string) bool {
	return kind == "query-response" || kind == "query-done"
}

// decodeQueryAnswer decodes the event map of a query-response or query-done.
func decodeQueryAnswer(r *reader, kind string) (Event, error) {
	n, err := r.mapLen()
	if err != nil {
		return nil, err
	}
	var fields required
	var response QueryResponse
	var done QueryDone
	if kind == "query-response" {
		fields.names = []string{"query", "name", "from", "payload"}
	} else {
		fields.names = []string{"query", "name", "error"}
	}
	for i := 0; i < n; i++ {
		key, err := r.rawString(false, "str key")
		if err != nil {
			return nil, err
		}
		name := string(key)
		index := -1
		switch {
		case name == "query":
			index = 0
			var handle uint64
			handle, err = r.uint(math.MaxUint32)
			response.Query, done.Query = uint32(handle), uint32(handle)
		case name == "name":
			index = 1
			response.Name, err = r.str()
			done.Name = response.Name
		case name == "from" && kind == "query-response":
			index = 2
			response.From, err = r.str()
		case name == "payload" && kind == "query-response":
			index = 3
			response.Payload, err = r.bytes()
		case name == "error" && kind == "query-done":
			index = 2
			done.Error, err = r.str()
		}
		if index < 0 {
			err = r.skip()
		} else {
			fields.mark(index)
		}
		if err != nil {
			return nil, fieldError(name, err)
		}
	}
	r.leave()
	if err := fields.check(); err != nil {
		return nil, err
	}
	if kind == "query-response" {
		return response, nil
	}
	return done, nil
}
