package serftest

import (
	"errors"
	"strconv"
	"testing"

	serf "github.com/serf-wasm/serf-wasm/plugin-sdk/go"
)

// starter starts a job per user event; its jobs try to start another one.
type starter struct{ serf.PluginDefaults }

func (starter) Handle(event serf.Event, host serf.Host) error {
	if user, ok := event.(serf.UserEvent); ok {
		id, err := host.StartJob(user.Name, user.Payload)
		if err != nil {
			return err
		}
		host.Info("started " + strconv.FormatUint(uint64(id), 10))
	}
	return nil
}

func (starter) RunJob(job serf.Job, host serf.Host) (int32, error) {
	_, err := host.StartJob("nested", nil)
	host.Info("nested: " + err.Error())
	return int32(len(job.Arg)), nil
}

func TestJobsRunUntilTheTestEndsThem(t *testing.T) {
	host := NewMockHost().Grant(serf.CapabilityJobs)
	if err := host.Deliver(starter{}, UserEvent("deploy", []byte("v2"))); err != nil {
		t.Fatal(err)
	}
	if !host.Logged(serf.LogInfo, "started 1") || host.Jobs[1].Info.State != serf.JobRunning {
		t.Fatal(host.Logs, host.Jobs)
	}
	if err := host.ReapJob(1); !errors.Is(err, serf.ErrNotAllowed) {
		t.Fatal(err)
	}
	done, ok := host.EndJob(1, serf.JobFinished, 5)
	if !ok || done != JobDone(1, "deploy", serf.JobFinished, 5) {
		t.Fatal(done, ok)
	}
	if _, ok := host.EndJob(1, serf.JobKilled, 0); ok {
		t.Fatal("an end is final")
	}
	if err := host.KillJob(1); !errors.Is(err, serf.ErrNotAllowed) {
		t.Fatal(err)
	}
	if info, err := host.JobStatus(1); err != nil || info.ExitStatus != 5 {
		t.Fatal(info, err)
	}
	if err := host.ReapJob(1); err != nil {
		t.Fatal(err)
	}
	if _, err := host.JobStatus(1); !errors.Is(err, serf.ErrNotFound) {
		t.Fatal(err)
	}
}

func TestAJobMayNotStartJobs(t *testing.T) {
	host := NewMockHost().Grant(serf.CapabilityJobs)
	status, err := host.RunJob(starter{}, Job(3, "x", []byte("abc")))
	if status != 3 || err != nil {
		t.Fatal(status, err)
	}
	if !host.Logged(serf.LogInfo, "nested: "+serf.ErrNotAllowed.Error()) || len(host.Jobs) != 0 {
		t.Fatal(host.Logs, host.Jobs)
	}
}

func TestMaxJobsLimitsTheJobsRunning(t *testing.T) {
	host := NewMockHost().Grant(serf.CapabilityJobs)
	host.MaxJobs = 1
	if _, err := host.StartJob("one", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := host.StartJob("two", nil); !errors.Is(err, serf.ErrUnavailable) {
		t.Fatal(err)
	}
	host.MaxJobs = 0
	if _, err := host.StartJob("none", nil); !errors.Is(err, serf.ErrNotAllowed) {
		t.Fatal(err)
	}
	if _, err := NewMockHost().Grant(serf.CapabilityJobs).StartJob("", nil); !errors.Is(err, serf.ErrBadArgument) {
		t.Fatal(err)
	}
}

func TestPluginsWithoutRunJobRunNoJobs(t *testing.T) {
	if _, err := NewMockHost().RunJob(curious{}, Job(1, "deploy", nil)); err == nil {
		t.Fatal("a plugin without RunJob ran a job")
	}
}
