package serf

// The job fixtures (ABI v1.1) of ../testdata, as plugin-sdk/src/fixtures.rs builds them, and
// serf_job's body.

import (
	"bytes"
	"errors"
	"reflect"
	"strings"
	"testing"
)

func (r *recorder) StartJob(string, []byte) (uint32, error) { return 0, ErrNotAllowed }
func (r *recorder) JobStatus(uint32) (JobInfo, error)       { return JobInfo{}, ErrNotFound }
func (r *recorder) KillJob(uint32) error                    { return ErrNotFound }
func (r *recorder) ReapJob(uint32) error                    { return ErrNotFound }

func TestFixtureEnvelopeJobDone(t *testing.T) {
	checkEnvelope(t, "envelope-job-done.msgpack", Envelope{
		V:   1,
		Seq: 11,
		Event: JobDone{
			ID:         7,
			Name:       "deploy",
			State:      JobFinished,
			ExitStatus: 3,
			Error:      "2 hosts unreachable",
		},
	})
}

func TestFixtureJob(t *testing.T) {
	data := golden(t, "job.msgpack")
	expected := Job{ID: 7, Name: "deploy", Arg: []byte("v2\x00\xff")}
	job, err := DecodeJob(data)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(job, expected) {
		t.Fatalf("job.msgpack decodes to %#v", job)
	}
	if encoded := EncodeJob(expected); !bytes.Equal(encoded, data) {
		t.Fatalf("job.msgpack no longer encodes to the same bytes:\n% x\n% x", encoded, data)
	}
}

func TestFixtureJobInfo(t *testing.T) {
	data := golden(t, "job-info.msgpack")
	expected := JobInfo{
		ID:         7,
		Name:       "deploy",
		State:      JobRunning,
		ExitStatus: -1,
		StartedMs:  1_767_225_600_000,
		Output:     []string{"1/3 hosts", "2/3 hosts"},
	}
	info, err := DecodeJobInfo(data)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(info, expected) {
		t.Fatalf("job-info.msgpack decodes to %#v", info)
	}
	if encoded := EncodeJobInfo(expected); !bytes.Equal(encoded, data) {
		t.Fatalf("job-info.msgpack no longer encodes to the same bytes:\n% x\n% x", encoded, data)
	}
}

func TestFixtureJobStart(t *testing.T) {
	data := golden(t, "job-start.msgpack")
	if encoded := EncodeJobStart("deploy", []byte("v2")); !bytes.Equal(encoded, data) {
		t.Fatalf("job-start.msgpack differs:\n% x\n% x", encoded, data)
	}
}

func TestJobPayloadsWithBadFieldsAreErrors(t *testing.T) {
	if _, err := DecodeJob(EncodeJobStart("deploy", nil)); err == nil || !strings.Contains(err.Error(), "missing field id") {
		t.Fatal(err)
	}
	info := EncodeJobInfo(JobInfo{ID: 1, Name: "x", State: JobFailed, ExitStatus: -1 << 31})
	if decoded, err := DecodeJobInfo(info); err != nil || decoded.ExitStatus != -1<<31 {
		t.Fatal(decoded, err)
	}
	for _, garbage := range [][]byte{{}, {0xc1}, {0x81, 0xa2, 'i', 'd', 0xd3, 0x80, 0, 0, 0, 0, 0, 0, 0}} {
		if _, err := DecodeJobInfo(garbage); err == nil {
			t.Fatalf("% x decoded", garbage)
		}
	}
}

func TestJobRequestsFollowTheAgentRules(t *testing.T) {
	cases := []struct {
		name string
		arg  []byte
		want error
	}{
		{"deploy", nil, nil},
		{"", nil, ErrBadArgument},
		{"a\nb", nil, ErrBadArgument},
		{strings.Repeat("x", MaxJobNameBytes+1), nil, ErrBadArgument},
		{"big", make([]byte, MaxJobArgBytes+1), ErrTooLarge},
	}
	for _, c := range cases {
		if err := CheckJobStart(c.name, c.arg); !errors.Is(err, c.want) && err != c.want {
			t.Errorf("%q: %v, want %v", c.name, err, c.want)
		}
	}
}

// worker runs jobs: its exit status is the argument's length; "fail" returns an error.
type worker struct{ script }

func (w *worker) RunJob(job Job, host Host) (int32, error) {
	host.Info("running " + job.Name)
	if job.Name == "fail" {
		return 0, errors.New("could not deploy")
	}
	return int32(len(job.Arg)), nil
}

func TestSerfJobRunsTheJobAfterInit(t *testing.T) {
	plugin := &worker{}
	g := guest{plugin: plugin}
	host := &recorder{}
	payload := EncodeJob(Job{ID: 3, Name: "deploy", Arg: []byte("abc")})
	if status, message := g.job(payload, host); status != failed || !strings.Contains(message, "before a successful serf_init") {
		t.Fatal(status, message)
	}
	if status, _ := g.init(initPayload(), host); status != 0 {
		t.Fatal(status)
	}
	if status, message := g.job(payload, host); status != 3 || message != "" {
		t.Fatal(status, message)
	}
	if status, message := g.job(EncodeJob(Job{ID: 4, Name: "fail"}), host); status != failed || message != "could not deploy" {
		t.Fatal(status, message)
	}
	if host.logs[len(host.logs)-1] != "info running fail" {
		t.Fatal(host.logs)
	}
}

func TestPluginsWithoutRunJobRefuseJobs(t *testing.T) {
	g := guest{plugin: &script{}}
	host := &recorder{}
	g.init(initPayload(), host)
	status, message := g.job(EncodeJob(Job{ID: 5, Name: "deploy"}), host)
	if status != failed || message != `this plugin runs no jobs (asked to run job 5 "deploy")` {
		t.Fatal(status, message)
	}
}
