package serftest_test

import (
	"errors"
	"testing"

	serf "github.com/serf-wasm/serf-wasm/plugin-sdk/go"
	"github.com/serf-wasm/serf-wasm/plugin-sdk/go/serftest"
)

// greedy answers every event twice and logs the outcome of each attempt.
type greedy struct{ serf.PluginDefaults }

func (greedy) Handle(event serf.Event, host serf.Host) error {
	first := host.Respond([]byte("one"))
	second := host.Respond([]byte("two"))
	host.Info(event.EventKind() + " " + outcome(first) + " " + outcome(second))
	return nil
}

func outcome(err error) string {
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, serf.ErrNotAllowed):
		return "not-allowed"
	case errors.Is(err, serf.ErrTooLarge):
		return "too-large"
	}
	return err.Error()
}

func TestAQueryGetsOneResponse(t *testing.T) {
	host := serftest.NewMockHost()
	if err := host.Deliver(greedy{}, serftest.Query("q", nil)); err != nil {
		t.Fatal(err)
	}
	if len(host.Responses) != 1 || string(host.Responses[0]) != "one" {
		t.Fatalf("%q", host.Responses)
	}
	if !host.Logged(serf.LogInfo, "query ok not-allowed") {
		t.Fatalf("%v", host.Logs)
	}
}

func TestEveryQueryMayBeAnsweredOnce(t *testing.T) {
	host := serftest.NewMockHost()
	host.Deliver(greedy{}, serftest.Query("q", nil))
	host.Deliver(greedy{}, serftest.Query("q", nil))
	if len(host.Responses) != 2 {
		t.Fatalf("%q", host.Responses)
	}
}

func TestRespondingOutsideAQueryIsNotAllowed(t *testing.T) {
	host := serftest.NewMockHost()
	host.Deliver(greedy{}, serftest.UserEvent("e", nil))
	host.Deliver(greedy{}, serftest.MemberJoin(serftest.Member("a", "127.0.0.1")))
	if len(host.Responses) != 0 {
		t.Fatalf("%q", host.Responses)
	}
	if !host.Logged(serf.LogInfo, "user not-allowed not-allowed") || !host.Logged(serf.LogInfo, "member-join not-allowed") {
		t.Fatalf("%v", host.Logs)
	}
	if err := host.Init(greedy{}, serftest.InitContext(nil)); err != nil {
		t.Fatal(err)
	}
	if err := host.Respond([]byte("x")); !errors.Is(err, serf.ErrNotAllowed) {
		t.Fatalf("respond after init: %v", err)
	}
}

func TestOversizedResponsesAreRefusedAndNotRecorded(t *testing.T) {
	host := serftest.NewMockHost()
	host.MaxResponseBytes = 2
	host.Deliver(greedy{}, serftest.Query("q", nil))
	if len(host.Responses) != 0 || !host.Logged(serf.LogInfo, "too-large too-large") {
		t.Fatalf("%q %v", host.Responses, host.Logs)
	}
	if _, ok := host.Response(); ok {
		t.Fatal("a response was recorded")
	}
}

func TestANewHostAllowsOneResponse(t *testing.T) {
	host := serftest.NewMockHost()
	if err := (greedy{}).Handle(serftest.Query("q", nil), host); err != nil {
		t.Fatal(err)
	}
	if got, ok := host.Response(); !ok || string(got) != "one" {
		t.Fatalf("%q", got)
	}
}

func TestInitContextCarriesConfigWithDecodedTypes(t *testing.T) {
	ctx := serftest.InitContext(map[string]any{
		"mode":  "loop",
		"n":     3,
		"names": []string{"a", "b"},
		"ratio": float32(0.5),
	})
	if ctx.ABI != serf.ABIVersion || ctx.Plugin != "test-plugin" || ctx.Node != "test-node" {
		t.Fatalf("%#v", ctx)
	}
	if mode, ok := ctx.ConfigString("mode"); !ok || mode != "loop" {
		t.Errorf("mode %q", mode)
	}
	if n, ok := ctx.ConfigInt64("n"); !ok || n != 3 {
		t.Errorf("n %d", n)
	}
	if names, ok := ctx.ConfigStrings("names"); !ok || len(names) != 2 || names[1] != "b" {
		t.Errorf("names %q", names)
	}
	if ratio, ok := ctx.ConfigFloat64("ratio"); !ok || ratio != 0.5 {
		t.Errorf("ratio %v", ratio)
	}
	if len(serftest.InitContext(nil).Config) != 0 {
		t.Error("nil config is not empty")
	}
}

func TestConstructorsFillFixedValues(t *testing.T) {
	query := serftest.Query("upcase", []byte("foo"))
	if query.ID != 1 || query.SourceNode != "test-node" || query.DeadlineMs != 4_102_444_800_000 {
		t.Errorf("%#v", query)
	}
	member := serftest.Member("a", "::1")
	if member.Port != 7946 || member.Status != "alive" || member.Tags == nil {
		t.Errorf("%#v", member)
	}
	for kind, event := range map[serf.MemberEventKind]serf.MemberEvent{
		serf.MemberJoin:   serftest.MemberJoin(member),
		serf.MemberLeave:  serftest.MemberLeave(member),
		serf.MemberFailed: serftest.MemberFailed(member),
		serf.MemberUpdate: serftest.MemberUpdate(member),
		serf.MemberReap:   serftest.MemberReap(member),
	} {
		if event.EventKind() != string(kind) || len(event.Members) != 1 {
			t.Errorf("%#v", event)
		}
	}
	if serftest.Dropped(3).EventKind() != "dropped" || serftest.UserEvent("e", nil).EventKind() != "user" {
		t.Error("kinds")
	}
	// Every constructor's event survives the wire.
	for _, event := range []serf.Event{query, serftest.UserEvent("e", []byte{0}), serftest.MemberJoin(member), serftest.Dropped(3)} {
		envelope, err := serf.DecodeEnvelope(serf.EncodeEnvelope(serf.Envelope{V: 1, Seq: 1, Event: event}))
		if err != nil || envelope.Event.EventKind() != event.EventKind() {
			t.Errorf("%#v: %v", event, err)
		}
	}
}
