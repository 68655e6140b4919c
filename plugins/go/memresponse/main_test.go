package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	serf "github.com/serf-wasm/serf-wasm/plugin-sdk/go"
	"github.com/serf-wasm/serf-wasm/plugin-sdk/go/serftest"
)

func pluginWritingTo(t *testing.T, path string) (*MemResponse, *serftest.MockHost) {
	t.Helper()
	plugin := &MemResponse{}
	host := serftest.NewMockHost()
	if err := host.Init(plugin, serftest.InitContext(map[string]any{"file": path})); err != nil {
		t.Fatal(err)
	}
	return plugin, host
}

func deliver(t *testing.T, host *serftest.MockHost, plugin serf.Plugin, event serf.Event) {
	t.Helper()
	if err := host.Deliver(plugin, event); err != nil {
		t.Fatal(err)
	}
}

func TestPayloadsAreAppendedOnePerLine(t *testing.T) {
	path := filepath.Join(t.TempDir(), "mem.txt")
	plugin, host := pluginWritingTo(t, path)
	deliver(t, host, plugin, serftest.UserEvent("memresponse", []byte("first")))
	deliver(t, host, plugin, serftest.UserEvent("memresponse", []byte("second")))
	if data, err := os.ReadFile(path); err != nil || string(data) != "first\nsecond\n" {
		t.Fatalf("%q %v", data, err)
	}
	if !host.Logged(serf.LogInfo, "appending memresponse payloads to "+path) {
		t.Fatalf("%v", host.Logs)
	}
}

func TestAnExistingFileIsAppendedTo(t *testing.T) {
	path := filepath.Join(t.TempDir(), "mem.txt")
	if err := os.WriteFile(path, []byte("old\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	plugin, host := pluginWritingTo(t, path)
	deliver(t, host, plugin, serftest.UserEvent("memresponse", []byte{0, 0xff}))
	if data, _ := os.ReadFile(path); string(data) != "old\n\x00\xff\n" {
		t.Fatalf("%q", data)
	}
}

func TestOtherEventsWriteNothing(t *testing.T) {
	path := filepath.Join(t.TempDir(), "mem.txt")
	plugin, host := pluginWritingTo(t, path)
	deliver(t, host, plugin, serftest.UserEvent("deploy", []byte("x")))
	deliver(t, host, plugin, serftest.Query("memresponse", []byte("x")))
	deliver(t, host, plugin, serftest.MemberJoin(serftest.Member("a", "127.0.0.1")))
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("the file exists: %v", err)
	}
	if len(host.Responses) != 0 {
		t.Fatalf("%q", host.Responses)
	}
}

func TestTheFileDefaultsToDataMemTxt(t *testing.T) {
	plugin := &MemResponse{}
	if err := serftest.NewMockHost().Init(plugin, serftest.InitContext(nil)); err != nil {
		t.Fatal(err)
	}
	if plugin.file != DefaultFile {
		t.Fatalf("file %q", plugin.file)
	}
}

func TestAFileThatIsNotAStringIsRefusedAtInit(t *testing.T) {
	cases := map[string]any{
		"config key file must be a path, not 3":     3,
		`config key file must be a path, not ""`:    "",
		"config key file must be a path, not nil":   nil,
		`config key file must be a path, not ["a"]`: []string{"a"},
	}
	for want, value := range cases {
		err := serftest.NewMockHost().Init(&MemResponse{}, serftest.InitContext(map[string]any{"file": value}))
		if err == nil || err.Error() != want {
			t.Errorf("error %v, want %s", err, want)
		}
	}
}

func TestAnUnwritableFileIsAPluginErrorNamingIt(t *testing.T) {
	path := filepath.Join(t.TempDir(), "missing-dir", "mem.txt")
	plugin, host := pluginWritingTo(t, path)
	err := host.Deliver(plugin, serftest.UserEvent("memresponse", []byte("x")))
	if err == nil || !strings.HasPrefix(err.Error(), "cannot append to "+path+": ") {
		t.Fatalf("error %v", err)
	}
}
