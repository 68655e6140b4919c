package serf

// Jobs (ABI v1.1): long work that a plugin starts from a handler with Host.StartJob and that
// the agent runs in a separate instance of the plugin, on a worker, calling the plugin's
// RunJob (see JobRunner). The plugin's queue moves on at once; the end arrives as a JobDone
// event. The types and the codec mirror plugin-sdk/src/abi.rs; the golden payloads in
// ../testdata check that both agree.

import (
	"errors"
	"math"
	"strconv"
	"unicode"
)

// The job exports and imports of ABI v1.1.
const (
	// ExportJob is (ptr i32, len i32) -> i32: runs one Job in a fresh instance; the result is
	// the job's exit status.
	ExportJob = "serf_job"
	// ImportJobStart is (ptr i32, len i32) -> i32: starts a job, returns its id >= 1.
	ImportJobStart = "job_start"
	// ImportJobStatus is (id i32, outPtr i32, outCap i32) -> i32: writes a JobInfo if it fits,
	// returns its length either way.
	ImportJobStatus = "job_status"
	// ImportJobKill is (id i32) -> i32.
	ImportJobKill = "job_kill"
	// ImportJobReap is (id i32) -> i32.
	ImportJobReap = "job_reap"

	// MaxJobNameBytes is the longest job name, in bytes.
	MaxJobNameBytes = 128
	// MaxJobArgBytes is the largest job argument, in bytes.
	MaxJobArgBytes = 64 * 1024
	// MaxJobOutputLines is how many of a job's last log lines its record keeps.
	MaxJobOutputLines = 64
	// MaxJobOutputBytes is how many bytes of log lines a job's record keeps at most.
	MaxJobOutputBytes = 16 * 1024
)

// JobRunner is what a plugin implements, besides Plugin, to run the jobs it starts with
// Host.StartJob. The agent calls RunJob in an instance of its own, after Init, under the
// plugin's job budget (job_fuel, job_timeout, job_max_memory_mib in serf.toml). The returned
// status is the job's exit status (0 for success, by convention); an error ends it with
// status 1 and the error's text. Lines logged through host also go to the job's output tail
// (serf jobs -show ID). Blocking is fine here (time.Sleep works): only this job waits.
type JobRunner interface {
	RunJob(job Job, host Host) (int32, error)
}

// Job is the job RunJob runs.
type Job struct {
	// ID is the id Host.StartJob returned.
	ID uint32
	// Name is the name given to Host.StartJob.
	Name string
	// Arg is the argument given to Host.StartJob.
	Arg []byte
}

// JobState is where a job is in its life: starting, running, then finished, failed or killed.
type JobState string

// The job states.
const (
	// JobStarting: waiting for a worker, or its instance is starting.
	JobStarting JobState = "starting"
	// JobRunning: RunJob is running.
	JobRunning JobState = "running"
	// JobFinished: RunJob returned; its status is the exit status.
	JobFinished JobState = "finished"
	// JobFailed: the job could not start, trapped, ran out of fuel, time or memory, or the
	// agent stopped while it ran; the error says which.
	JobFailed JobState = "failed"
	// JobKilled: killed through Host.KillJob or serf jobs -kill.
	JobKilled JobState = "killed"
)

// IsOver reports whether the job has ended (finished, failed or killed).
func (s JobState) IsOver() bool {
	return s == JobFinished || s == JobFailed || s == JobKilled
}

// JobInfo is a job as Host.JobStatus reports it.
type JobInfo struct {
	// ID is the job's id.
	ID uint32
	// Name is its name.
	Name string
	// State is where it is in its life.
	State JobState
	// ExitStatus is what RunJob returned when State is JobFinished; -1 otherwise.
	ExitStatus int32
	// Error is why it failed, or the text of the error RunJob returned; empty otherwise.
	Error string
	// StartedMs is when it started, in milliseconds since the Unix epoch.
	StartedMs uint64
	// EndedMs is when it ended, in milliseconds since the Unix epoch; 0 until then.
	EndedMs uint64
	// Output are the last lines it logged (at most MaxJobOutputLines and MaxJobOutputBytes),
	// oldest first.
	Output []string
}

// JobDone says that a job this plugin started has ended. It is always delivered, whatever
// the plugin's events filter.
type JobDone struct {
	// ID is the job's id.
	ID uint32
	// Name is its name.
	Name string
	// State is how it ended: JobFinished, JobFailed or JobKilled.
	State JobState
	// ExitStatus is what RunJob returned when State is JobFinished; -1 otherwise.
	ExitStatus int32
	// Error is why it failed, or the text of the error RunJob returned; empty otherwise.
	Error string
}

// EventKind returns "job-done".
func (JobDone) EventKind() string { return "job-done" }
func (JobDone) isEvent()          {}

// CheckJobStart checks a job request as the agent does: ErrBadArgument for a name that is
// empty, longer than MaxJobNameBytes or has control characters, ErrTooLarge for an argument
// over MaxJobArgBytes.
func CheckJobStart(name string, arg []byte) error {
	if name == "" || len(name) > MaxJobNameBytes {
		return ErrBadArgument
	}
	for _, r := range name {
		if unicode.IsControl(r) {
			return ErrBadArgument
		}
	}
	if len(arg) > MaxJobArgBytes {
		return ErrTooLarge
	}
	return nil
}

// EncodeJobStart encodes the request of the job_start import, as the Rust SDK does.
func EncodeJobStart(name string, arg []byte) []byte {
	w := &writer{}
	w.mapHeader(2)
	w.str("name")
	w.str(name)
	w.str("arg")
	w.bin(arg)
	return w.buf
}

// EncodeJob encodes a job as the host writes it for serf_job.
func EncodeJob(job Job) []byte {
	w := &writer{}
	w.mapHeader(3)
	w.str("id")
	w.uint(uint64(job.ID))
	w.str("name")
	w.str(job.Name)
	w.str("arg")
	w.bin(job.Arg)
	return w.buf
}

// DecodeJob decodes serf_job's payload.
func DecodeJob(payload []byte) (Job, error) {
	var job Job
	err := decodeMap(payload, []string{"id", "name", "arg"}, func(r *reader, index int) (err error) {
		switch index {
		case 0:
			var id uint64
			id, err = r.uint(math.MaxUint32)
			job.ID = uint32(id)
		case 1:
			job.Name, err = r.str()
		case 2:
			job.Arg, err = r.bytes()
		}
		return err
	})
	if err != nil {
		return Job{}, errors.New("cannot decode job: " + err.Error())
	}
	return job, nil
}

// EncodeJobInfo encodes a job's status as the job_status import writes it.
func EncodeJobInfo(info JobInfo) []byte {
	w := &writer{}
	w.mapHeader(8)
	w.str("id")
	w.uint(uint64(info.ID))
	w.str("name")
	w.str(info.Name)
	w.str("state")
	w.str(string(info.State))
	w.str("exit_status")
	w.int(int64(info.ExitStatus))
	w.str("error")
	w.str(info.Error)
	w.str("started_ms")
	w.uint(info.StartedMs)
	w.str("ended_ms")
	w.uint(info.EndedMs)
	w.str("output")
	w.arrayHeader(len(info.Output))
	for _, line := range info.Output {
		w.str(line)
	}
	return w.buf
}

// DecodeJobInfo decodes what the job_status import writes.
func DecodeJobInfo(payload []byte) (JobInfo, error) {
	var info JobInfo
	names := []string{"id", "name", "state", "exit_status", "error", "started_ms", "ended_ms", "output"}
	err := decodeMap(payload, names, func(r *reader, index int) (err error) {
		switch index {
		case 0:
			var id uint64
			id, err = r.uint(math.MaxUint32)
			info.ID = uint32(id)
		case 1:
			info.Name, err = r.str()
		case 2:
			var state string
			state, err = r.str()
			info.State = JobState(state)
		case 3:
			info.ExitStatus, err = r.int32()
		case 4:
			info.Error, err = r.str()
		case 5:
			info.StartedMs, err = r.uint(math.MaxUint64)
		case 6:
			info.EndedMs, err = r.uint(math.MaxUint64)
		case 7:
			info.Output, err = r.strings()
		}
		return err
	})
	if err != nil {
		return JobInfo{}, errors.New("cannot decode job status: " + err.Error())
	}
	return info, nil
}

// decodeMap reads a top-level map whose required keys are names, handing each known key's
// value to field by its index in names; unknown keys are skipped.
func decodeMap(payload []byte, names []string, field func(r *reader, index int) error) error {
	r := &reader{buf: payload}
	n, err := r.mapLen()
	if err != nil {
		return err
	}
	fields := required{names: names}
	for i := 0; i < n; i++ {
		key, err := r.rawString(false, "str key")
		if err != nil {
			return err
		}
		index := -1
		for j, name := range names {
			if name == string(key) {
				index = j
			}
		}
		if index < 0 {
			err = r.skip()
		} else {
			fields.mark(index)
			err = field(r, index)
		}
		if err != nil {
			return fieldError(string(key), err)
		}
	}
	return fields.check()
}

// int32 reads a signed field that fits an int32, or nil as 0.
func (r *reader) int32() (int32, error) {
	if r.isNil() {
		return 0, nil
	}
	magnitude, negative, err := r.integer()
	if err != nil {
		return 0, err
	}
	if negative && magnitude <= 1<<31 {
		return int32(-int64(magnitude)), nil
	}
	if !negative && magnitude <= math.MaxInt32 {
		return int32(magnitude), nil
	}
	sign := ""
	if negative {
		sign = "-"
	}
	return 0, errors.New("integer " + sign + strconv.FormatUint(magnitude, 10) + " out of range for int32")
}

// strings reads an array of strings, or nil as none.
func (r *reader) strings() ([]string, error) {
	if r.isNil() {
		return []string{}, nil
	}
	n, err := r.arrayLen()
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, n)
	for i := 0; i < n; i++ {
		text, err := r.str()
		if err != nil {
			return nil, fieldError(strconv.Itoa(i), err)
		}
		out = append(out, text)
	}
	r.leave()
	return out, nil
}

// jobEvent encodes a JobDone; false for other events.
func (w *writer) jobEvent(event Event) bool {
	done, ok := event.(JobDone)
	if !ok {
		return false
	}
	w.mapHeader(6)
	w.str("kind")
	w.str("job-done")
	w.str("id")
	w.uint(uint64(done.ID))
	w.str("name")
	w.str(done.Name)
	w.str("state")
	w.str(string(done.State))
	w.str("exit_status")
	w.int(int64(done.ExitStatus))
	w.str("error")
	w.str(done.Error)
	return true
}

// decodeJobDone decodes the event map of a job-done (its kind is checked by the caller).
func decodeJobDone(r *reader) (Event, error) {
	n, err := r.mapLen()
	if err != nil {
		return nil, err
	}
	var done JobDone
	fields := required{names: []string{"id", "name", "state", "exit_status", "error"}}
	for i := 0; i < n; i++ {
		key, err := r.rawString(false, "str key")
		if err != nil {
			return nil, err
		}
		name := string(key)
		switch name {
		case "id":
			fields.mark(0)
			var id uint64
			id, err = r.uint(math.MaxUint32)
			done.ID = uint32(id)
		case "name":
			fields.mark(1)
			done.Name, err = r.str()
		case "state":
			fields.mark(2)
			var state string
			state, err = r.str()
			done.State = JobState(state)
		case "exit_status":
			fields.mark(3)
			done.ExitStatus, err = r.int32()
		case "error":
			fields.mark(4)
			done.Error, err = r.str()
		default:
			err = r.skip()
		}
		if err != nil {
			return nil, fieldError(name, err)
		}
	}
	r.leave()
	if err := fields.check(); err != nil {
		return nil, err
	}
	return done, nil
}

// job is serf_job's body: the status to return and, if there is one, the error text.
func (g *guest) job(payload []byte, host Host) (status int32, message string) {
	job, err := DecodeJob(payload)
	if err != nil {
		return failed, err.Error()
	}
	if !g.active {
		return failed, "serf_job called before a successful serf_init"
	}
	runner, ok := g.plugin.(JobRunner)
	if !ok {
		return failed, "this plugin runs no jobs (asked to run job " +
			strconv.FormatUint(uint64(job.ID), 10) + " " + strconv.Quote(job.Name) + ")"
	}
	defer recoverAndLog(host)
	status, err = runner.RunJob(job, host)
	if err != nil {
		return failed, errorText(err)
	}
	return status, ""
}
