package main

import (
	"testing"

	serf "github.com/serf-wasm/serf-wasm/plugin-sdk/go"
	"github.com/serf-wasm/serf-wasm/plugin-sdk/go/serftest"
)

func TestEveryEventIsHandledWithoutAnyHostCall(t *testing.T) {
	host := serftest.NewMockHost()
	if err := host.Init(Noop{}, serftest.InitContext(nil)); err != nil {
		t.Fatal(err)
	}
	for _, event := range []serf.Event{
		serftest.UserEvent("deploy", []byte("v1")),
		serftest.Query("upcase", []byte("foo")),
		serftest.MemberJoin(serftest.Member("a", "127.0.0.1")),
		serftest.Dropped(3),
	} {
		if err := host.Deliver(Noop{}, event); err != nil {
			t.Fatal(err)
		}
	}
	if len(host.Responses) != 0 || len(host.Logs) != 0 {
		t.Fatalf("%q %v", host.Responses, host.Logs)
	}
}
