package main

import (
	"strings"
	"testing"

	serf "{{sdk_module}}"
	"{{sdk_module}}/serftest"
)

func started(t *testing.T) (*Plugin, *serftest.MockHost) {
	t.Helper()
	plugin := &Plugin{}
	host := serftest.NewMockHost()
	if err := host.Init(plugin, serftest.InitContext(map[string]any{"greeting": "hello"})); err != nil {
		t.Fatal(err)
	}
	return plugin, host
}

func TestNewMembersAreGreeted(t *testing.T) {
	plugin, host := started(t)
	if err := host.Deliver(plugin, serftest.MemberJoin(serftest.Member("node-b", "127.0.0.2"))); err != nil {
		t.Fatal(err)
	}
	if !host.Logged(serf.LogInfo, "hello node-b") {
		t.Fatalf("logs: %q", host.Logs)
	}
}

func TestPingIsAnsweredWithPong(t *testing.T) {
	plugin, host := started(t)
	if err := host.Deliver(plugin, serftest.Query("ping", nil)); err != nil {
		t.Fatal(err)
	}
	if response, ok := host.Response(); !ok || string(response) != "pong" {
		t.Fatalf("response %q, %v", response, ok)
	}
}

func TestDeploysAreCounted(t *testing.T) {
	plugin, host := started(t)
	for _, version := range []string{"v1", "v2"} {
		if err := host.Deliver(plugin, serftest.UserEvent("deploy", []byte(version))); err != nil {
			t.Fatal(err)
		}
	}
	if !host.Logged(serf.LogInfo, "deploy 2 of v2") {
		t.Fatalf("logs: %q", host.Logs)
	}
}

func TestAGreetingOfTheWrongTypeIsRefusedWithItsKey(t *testing.T) {
	host := serftest.NewMockHost()
	err := host.Init(&Plugin{}, serftest.InitContext(map[string]any{"greeting": int64(42)}))
	if err == nil || !strings.Contains(err.Error(), "greeting") {
		t.Fatalf("error %v", err)
	}
}

