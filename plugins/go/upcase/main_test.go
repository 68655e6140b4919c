package main

import (
	"bytes"
	"errors"
	"testing"

	serf "github.com/serf-wasm/serf-wasm/plugin-sdk/go"
	"github.com/serf-wasm/serf-wasm/plugin-sdk/go/serftest"
)

func TestUpcaseQueryIsAnsweredInUpperCase(t *testing.T) {
	host := serftest.NewMockHost()
	if err := host.Deliver(Upcase{}, serftest.Query("upcase", []byte("foo"))); err != nil {
		t.Fatal(err)
	}
	if len(host.Responses) != 1 || string(host.Responses[0]) != "FOO" {
		t.Fatalf("%q", host.Responses)
	}
}

func TestUTF8PayloadsFollowUnicodeRules(t *testing.T) {
	cases := map[string]string{
		"straße ü":    "STRASSE Ü",
		"ﬁx ǆ ŉ":      "FIX Ǆ ʼN",
		"\u0390":      "\u0399\u0308\u0301",
		"already UP1": "ALREADY UP1",
	}
	for in, want := range cases {
		if got := string(upcase([]byte(in))); got != want {
			t.Errorf("upcase(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestBinaryPayloadsUpcaseASCIILettersOnly(t *testing.T) {
	got := upcase([]byte{'a', 0xff, 'z', 0x00})
	if !bytes.Equal(got, []byte{'A', 0xff, 'Z', 0x00}) {
		t.Fatalf("% x", got)
	}
}

func TestEmptyPayloadGetsAnEmptyAnswer(t *testing.T) {
	host := serftest.NewMockHost()
	if err := host.Deliver(Upcase{}, serftest.Query("upcase", nil)); err != nil {
		t.Fatal(err)
	}
	if len(host.Responses) != 1 || len(host.Responses[0]) != 0 {
		t.Fatalf("%q", host.Responses)
	}
}

func TestOtherQueriesAndEventsAreIgnored(t *testing.T) {
	host := serftest.NewMockHost()
	for _, event := range []serf.Event{
		serftest.Query("downcase", []byte("foo")),
		serftest.UserEvent("upcase", []byte("foo")),
		serftest.MemberJoin(serftest.Member("a", "127.0.0.1")),
	} {
		if err := host.Deliver(Upcase{}, event); err != nil {
			t.Fatal(err)
		}
	}
	if len(host.Responses) != 0 || len(host.Logs) != 0 {
		t.Fatalf("%q %v", host.Responses, host.Logs)
	}
}

func TestAnAnswerOverTheSizeLimitIsAPluginError(t *testing.T) {
	host := serftest.NewMockHost()
	payload := bytes.Repeat([]byte("a"), host.MaxResponseBytes+1)
	err := host.Deliver(Upcase{}, serftest.Query("upcase", payload))
	if !errors.Is(err, serf.ErrTooLarge) || err.Error() != "host call failed: payload too large" {
		t.Fatalf("error %v", err)
	}
	if len(host.Responses) != 0 {
		t.Fatalf("%q", host.Responses)
	}
}
