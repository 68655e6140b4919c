package serf

// The golden ABI payloads in ../testdata: the bytes a v1 host sends, shared with the Rust SDK
// (plugin-sdk/src/fixtures.rs builds the same values). Each file must decode to exactly the
// value built here, and encoding that value must give back the same bytes. After a deliberate
// ABI change the Rust test rewrites the files (SERF_UPDATE_FIXTURES=1); then update these
// values in the same change.

import (
	"bytes"
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

func readFixture(name string) ([]byte, error) {
	return os.ReadFile(filepath.Join("..", "testdata", name))
}

func golden(t *testing.T, name string) []byte {
	t.Helper()
	data, err := readFixture(name)
	if err != nil {
		t.Fatalf("cannot read testdata/%s: %v", name, err)
	}
	return data
}

func checkEnvelope(t *testing.T, name string, expected Envelope) {
	t.Helper()
	data := golden(t, name)
	decoded, err := DecodeEnvelope(data)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	if !reflect.DeepEqual(decoded, expected) {
		t.Fatalf("%s decodes to\n%#v\nexpected\n%#v", name, decoded, expected)
	}
	if encoded := EncodeEnvelope(expected); !bytes.Equal(encoded, data) {
		t.Fatalf("%s no longer encodes to the same bytes:\n% x\n% x", name, encoded, data)
	}
}

func TestFixtureEnvelopeUser(t *testing.T) {
	checkEnvelope(t, "envelope-user.msgpack", Envelope{
		V:   1,
		Seq: 7,
		Event: UserEvent{
			Name:     "deploy",
			Payload:  []byte("v1\x00\xff"),
			LTime:    42,
			Coalesce: true,
		},
	})
}

func TestFixtureEnvelopeQuery(t *testing.T) {
	checkEnvelope(t, "envelope-query.msgpack", Envelope{
		V:   1,
		Seq: 8,
		Event: Query{
			ID:         1_234_567,
			Name:       "upcase",
			Payload:    []byte("foo"),
			LTime:      43,
			SourceNode: "node-b",
			DeadlineMs: 1_767_225_600_000,
		},
	})
}

func TestFixtureEnvelopeMemberJoin(t *testing.T) {
	checkEnvelope(t, "envelope-member-join.msgpack", Envelope{
		V:   1,
		Seq: 1,
		Event: MemberEvent{
			Kind: MemberJoin,
			Members: []Member{
				{
					Name:   "node-a",
					Addr:   "127.0.0.1",
					Port:   7946,
					Tags:   map[string]string{"role": "web", "dc": "east"},
					Status: "alive",
				},
				{
					Name:   "node-b",
					Addr:   "::1",
					Port:   7947,
					Tags:   map[string]string{},
					Status: "alive",
				},
			},
		},
	})
}

func TestFixtureEnvelopeDropped(t *testing.T) {
	// The host sends this notice with seq 0: it is not one of the offered events.
	checkEnvelope(t, "envelope-dropped.msgpack", Envelope{V: 1, Seq: 0, Event: Dropped{Count: 3}})
	// The annotated example of testdata/README.md.
	documented := []byte("\x83\xa1v\x01\xa3seq\x00\xa5event\x82\xa4kind\xa7dropped\xa5count\x03")
	if data := golden(t, "envelope-dropped.msgpack"); !bytes.Equal(data, documented) {
		t.Fatalf("envelope-dropped.msgpack is % x", data)
	}
}

func TestFixtureInitContext(t *testing.T) {
	expected := &InitContext{
		ABI:    1,
		Host:   "serf/0.1.0",
		Node:   "node-a",
		Plugin: "memresponse",
		Config: map[string]any{
			"file":    "/data/mem.txt",
			"limit":   int64(300),
			"nested":  map[string]any{"a": "b"},
			"ratio":   0.5,
			"retries": int64(-2),
			"sizes":   []any{int64(1), int64(2)},
			"verbose": true,
		},
	}
	data := golden(t, "init-context.msgpack")
	decoded, err := DecodeInitContext(data)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(decoded, expected) {
		t.Fatalf("init-context.msgpack decodes to\n%#v\nexpected\n%#v", decoded, expected)
	}
	if encoded := EncodeInitContext(expected); !bytes.Equal(encoded, data) {
		t.Fatalf("init-context.msgpack no longer encodes to the same bytes:\n% x\n% x", encoded, data)
	}
	// The typed getters see the same values.
	if file, ok := decoded.ConfigString("file"); !ok || file != "/data/mem.txt" {
		t.Errorf("ConfigString(file) = %q, %v", file, ok)
	}
	if limit, ok := decoded.ConfigInt64("limit"); !ok || limit != 300 {
		t.Errorf("ConfigInt64(limit) = %d, %v", limit, ok)
	}
	if retries, ok := decoded.ConfigInt64("retries"); !ok || retries != -2 {
		t.Errorf("ConfigInt64(retries) = %d, %v", retries, ok)
	}
	if ratio, ok := decoded.ConfigFloat64("ratio"); !ok || ratio != 0.5 {
		t.Errorf("ConfigFloat64(ratio) = %v, %v", ratio, ok)
	}
	if verbose, ok := decoded.ConfigBool("verbose"); !ok || !verbose {
		t.Errorf("ConfigBool(verbose) = %v, %v", verbose, ok)
	}
	if nested, ok := decoded.ConfigTable("nested"); !ok || nested["a"] != "b" {
		t.Errorf("ConfigTable(nested) = %v, %v", nested, ok)
	}
}

// Every fixture is listed here, so a new file in testdata cannot go untested.
func TestEveryFixtureIsChecked(t *testing.T) {
	checked := map[string]bool{
		"envelope-user.msgpack":        true,
		"envelope-query.msgpack":       true,
		"envelope-member-join.msgpack": true,
		"envelope-dropped.msgpack":     true,
		"init-context.msgpack":         true,
		// Capabilities (ABI v1.1), in capabilities_test.go.
		"envelope-query-response.msgpack": true,
		"envelope-query-done.msgpack":     true,
		"members.msgpack":                 true,
		"fire-event.msgpack":              true,
		"query-request.msgpack":           true,
		// Jobs (ABI v1.1), in jobs_test.go.
		"envelope-job-done.msgpack": true,
		"job.msgpack":               true,
		"job-info.msgpack":          true,
		"job-start.msgpack":         true,
	}
	files, err := filepath.Glob(filepath.Join("..", "testdata", "*.msgpack"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != len(checked) {
		t.Errorf("testdata has %d fixtures, the Go SDK checks %d", len(files), len(checked))
	}
	for _, file := range files {
		if !checked[filepath.Base(file)] {
			t.Errorf("testdata/%s has no Go test", filepath.Base(file))
		}
	}
}
