package main

import (
	"reflect"
	"testing"

	serf "github.com/serf-wasm/serf-wasm/plugin-sdk/go"
	"github.com/serf-wasm/serf-wasm/plugin-sdk/go/serftest"
)

func logsOf(t *testing.T, event serf.Event) []serftest.LogLine {
	t.Helper()
	host := serftest.NewMockHost()
	if err := host.Deliver(Hello{}, event); err != nil {
		t.Fatal(err)
	}
	if len(host.Responses) != 0 {
		t.Fatalf("%q", host.Responses)
	}
	return host.Logs
}

func expectLogs(t *testing.T, event serf.Event, want ...serftest.LogLine) {
	t.Helper()
	if got := logsOf(t, event); !reflect.DeepEqual(got, want) && !(len(got) == 0 && len(want) == 0) {
		t.Fatalf("logs %q, want %q", got, want)
	}
}

func TestUserEventsAreLoggedWithNameAndPayload(t *testing.T) {
	expectLogs(t, serftest.UserEvent("deploy", []byte("v1")),
		serftest.LogLine{Level: serf.LogInfo, Message: `user event deploy payload="v1"`})
}

func TestBinaryPayloadsAreLoggedLossilyAndEscaped(t *testing.T) {
	expectLogs(t, serftest.UserEvent("bin", []byte("a\n\xff")),
		serftest.LogLine{Level: serf.LogInfo, Message: "user event bin payload=\"a\\n\uFFFD\""})
}

func TestMemberEventsListNamesAndAddresses(t *testing.T) {
	v6 := serftest.Member("node-b", "::1")
	v6.Port = 7947
	expectLogs(t, serftest.MemberJoin(serftest.Member("node-a", "127.0.0.1"), v6),
		serftest.LogLine{Level: serf.LogInfo, Message: "member-join: node-a 127.0.0.1:7946, node-b [::1]:7947"})
	expectLogs(t, serftest.MemberFailed(serftest.Member("node-c", "not-an-ip")),
		serftest.LogLine{Level: serf.LogInfo, Message: "member-failed: node-c not-an-ip:7946"})
}

func TestDroppedEventsAreAWarning(t *testing.T) {
	expectLogs(t, serftest.Dropped(3), serftest.LogLine{Level: serf.LogWarn, Message: "missed 3 events"})
}

func TestQueriesAreNeitherLoggedNorAnswered(t *testing.T) {
	expectLogs(t, serftest.Query("upcase", []byte("foo")))
}
