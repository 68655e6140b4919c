package serftest

import (
	"errors"
	"testing"

	serf "github.com/serf-wasm/serf-wasm/plugin-sdk/go"
)

// reloader runs the granted command reload on every member-join.
type reloader struct{ serf.PluginDefaults }

func (reloader) Handle(event serf.Event, host serf.Host) error {
	if join, ok := event.(serf.MemberEvent); !ok || join.Kind != serf.MemberJoin {
		return nil
	}
	result, err := host.RunCommand("reload", nil, nil)
	if err != nil {
		return err
	}
	if result.ExitStatus != 0 {
		return errors.New("reload failed: " + string(result.Stderr))
	}
	return nil
}

func TestAUnitTestCanAssertRanCommandReload(t *testing.T) {
	host := NewMockHost()
	join := serf.MemberEvent{Kind: serf.MemberJoin, Members: []serf.Member{{Name: "web1", Status: "alive"}}}
	if err := host.Deliver(reloader{}, join); !errors.Is(err, serf.ErrDenied) {
		t.Fatalf("an ungranted command: got %v", err)
	}
	host.GrantCommand("reload")
	if err := host.Deliver(reloader{}, join); err != nil {
		t.Fatal(err)
	}
	if host.RunsOf("reload") != 1 {
		t.Fatalf("ran %+v", host.Ran)
	}
	host.Commands["reload"].Result = serf.CommandResult{ExitStatus: 1, Stderr: []byte("bad config")}
	if err := host.Deliver(reloader{}, join); err == nil || err.Error() != "reload failed: bad config" {
		t.Fatalf("got %v", err)
	}
}

func TestCommandArgumentsNeedAllowArgsAndJobsCountAgainstMaxJobs(t *testing.T) {
	host := NewMockHost()
	host.GrantCommand("deploy")
	if _, err := host.RunCommand("deploy", []string{"v2"}, nil); !errors.Is(err, serf.ErrNotAllowed) {
		t.Fatalf("got %v", err)
	}
	host.Commands["deploy"].AllowArgs = true
	host.MaxJobs = 1
	id, err := host.StartCommand("deploy", []string{"v2"}, nil)
	if err != nil || id != 1 || host.Ran[0].Job != 1 {
		t.Fatalf("got %d, %v, %+v", id, err, host.Ran)
	}
	if _, err := host.StartCommand("deploy", nil, nil); !errors.Is(err, serf.ErrUnavailable) {
		t.Fatalf("got %v", err)
	}
	if err := host.KillJob(id); err != nil {
		t.Fatal(err)
	}
}
