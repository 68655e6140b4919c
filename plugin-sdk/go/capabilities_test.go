package serf

// The capability fixtures (ABI v1.1) of ../testdata, as plugin-sdk/src/fixtures.rs builds
// them: the answers to a plugin's query, the member list the host writes, and the requests the
// SDK encodes, which must be these exact bytes.

import (
	"bytes"
	"errors"
	"reflect"
	"testing"
)

func twoMembers() []Member {
	return []Member{
		{Name: "node-a", Addr: "127.0.0.1", Port: 7946, Tags: map[string]string{"role": "web", "dc": "east"}, Status: "alive"},
		{Name: "node-b", Addr: "::1", Port: 7947, Tags: map[string]string{}, Status: "alive"},
	}
}

func TestFixtureEnvelopeQueryResponse(t *testing.T) {
	checkEnvelope(t, "envelope-query-response.msgpack", Envelope{
		V:     1,
		Seq:   9,
		Event: QueryResponse{Query: 3, Name: "upcase", From: "node-b", Payload: []byte("FOO")},
	})
}

func TestFixtureEnvelopeQueryDone(t *testing.T) {
	checkEnvelope(t, "envelope-query-done.msgpack", Envelope{
		V:     1,
		Seq:   10,
		Event: QueryDone{Query: 3, Name: "upcase"},
	})
}

func TestFixtureMemberList(t *testing.T) {
	data := golden(t, "members.msgpack")
	members, err := DecodeMemberList(data)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(members, twoMembers()) {
		t.Fatalf("members.msgpack decodes to %#v", members)
	}
	if encoded := EncodeMemberList(twoMembers()); !bytes.Equal(encoded, data) {
		t.Fatalf("members.msgpack no longer encodes to the same bytes:\n% x\n% x", encoded, data)
	}
}

func TestFixtureFireEvent(t *testing.T) {
	data := golden(t, "fire-event.msgpack")
	if encoded := EncodeFireEvent("deploy", []byte("v2"), false); !bytes.Equal(encoded, data) {
		t.Fatalf("fire-event.msgpack differs:\n% x\n% x", encoded, data)
	}
}

func TestFixtureQueryRequest(t *testing.T) {
	data := golden(t, "query-request.msgpack")
	encoded := EncodeQueryRequest(QueryRequest{
		Name:        "upcase",
		Payload:     []byte("foo"),
		FilterNodes: []string{"node-b"},
		FilterTags:  map[string]string{"role": "^web$"},
		TimeoutMs:   5000,
	})
	if !bytes.Equal(encoded, data) {
		t.Fatalf("query-request.msgpack differs:\n% x\n% x", encoded, data)
	}
}

func TestDeniedIsAKnownHostError(t *testing.T) {
	err := CheckStatus(-8)
	if !errors.Is(err, ErrDenied) || !ErrDenied.Known() {
		t.Fatal(err)
	}
	if err.Error() != "host call failed: capability not granted: add it to capabilities = [...] in the plugin's [plugins.NAME] table in serf.toml" {
		t.Fatal(err.Error())
	}
}

func TestAQueryAnswerWithoutItsHandleIsAnError(t *testing.T) {
	w := &writer{}
	w.mapHeader(3)
	w.str("v")
	w.uint(1)
	w.str("seq")
	w.uint(1)
	w.str("event")
	w.mapHeader(2)
	w.str("kind")
	w.str("query-done")
	w.str("name")
	w.str("q")
	if _, err := DecodeEnvelope(w.buf); err == nil {
		t.Fatal("decoded a query-done without its query handle")
	}
}

// The guest tests' recorder denies every capability, as an agent without grants does.
func (r *recorder) Members() ([]Member, error)           { return nil, ErrDenied }
func (r *recorder) FireEvent(string, []byte, bool) error { return ErrDenied }
func (r *recorder) Query(QueryRequest) (uint32, error)   { return 0, ErrDenied }
