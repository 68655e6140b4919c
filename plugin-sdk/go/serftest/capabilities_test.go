package serftest

import (
	"errors"
	"fmt"
	"testing"

	serf "github.com/serf-wasm/serf-wasm/plugin-sdk/go"
)

// curious uses every capability on each event and logs what each call returned.
type curious struct{ serf.PluginDefaults }

func (curious) Handle(event serf.Event, host serf.Host) error {
	members, membersErr := host.Members()
	firedErr := host.FireEvent("ping", nil, false)
	handle, queryErr := host.Query(serf.QueryRequest{Name: "who"})
	host.Info(fmt.Sprintf("%d %v %v %d %v", len(members), membersErr, firedErr, handle, queryErr))
	return nil
}

func TestCapabilitiesAreDeniedUntilGranted(t *testing.T) {
	host := NewMockHost()
	host.MemberList = []serf.Member{Member("a", "127.0.0.1")}
	if err := host.Deliver(curious{}, UserEvent("e", nil)); err != nil {
		t.Fatal(err)
	}
	denied := serf.ErrDenied.Error()
	if !host.Logged(serf.LogInfo, fmt.Sprintf("0 %s %s 0 %s", denied, denied, denied)) {
		t.Fatal(host.Logs)
	}
	if len(host.Fired) != 0 || len(host.Queries) != 0 {
		t.Fatal(host.Fired, host.Queries)
	}
	host.Grant(serf.CapabilityMembers).Grant(serf.CapabilityEvents).Grant(serf.CapabilityQueries)
	if err := host.Deliver(curious{}, UserEvent("e", nil)); err != nil {
		t.Fatal(err)
	}
	if !host.Logged(serf.LogInfo, "1 <nil> <nil> 1 <nil>") {
		t.Fatal(host.Logs)
	}
	if len(host.Fired) != 1 || host.Fired[0].Name != "ping" || host.Queries[0].Name != "who" {
		t.Fatal(host.Fired, host.Queries)
	}
}

func TestOversizedEventsAndQueriesAreRefused(t *testing.T) {
	host := NewMockHost().Grant(serf.CapabilityEvents).Grant(serf.CapabilityQueries)
	big := make([]byte, DefaultMaxQueryBytes)
	if err := host.FireEvent("e", big, false); !errors.Is(err, serf.ErrTooLarge) {
		t.Fatal(err)
	}
	if _, err := host.Query(serf.QueryRequest{Name: "q", Payload: big}); !errors.Is(err, serf.ErrTooLarge) {
		t.Fatal(err)
	}
}

func TestQueryAnswerConstructors(t *testing.T) {
	response := QueryResponse(3, "upcase", "node-b", []byte("FOO"))
	if response.EventKind() != "query-response" || response.From != "node-b" {
		t.Fatal(response)
	}
	if done := QueryDone(3, "upcase"); done.EventKind() != "query-done" || done.Error != "" {
		t.Fatal(done)
	}
}
