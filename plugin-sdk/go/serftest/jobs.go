package serftest

// MockHost's job calls (ABI v1.1), with the agent's rules. A job started here runs until the
// test ends it with EndJob (or the plugin kills it); RunJob runs a plugin's RunJob as the
// agent's job instance would.

import serf "github.com/serf-wasm/serf-wasm/plugin-sdk/go"

// DefaultMaxJobs is the agent's default max_jobs: jobs of one plugin that may not have ended
// at once.
const DefaultMaxJobs = 4

// MockJob is a job a plugin started on a MockHost.
type MockJob struct {
	// Info is what JobStatus returns for it.
	Info serf.JobInfo
	// Arg is the argument it was started with.
	Arg []byte
}

// StartJob records a job in state running, under the agent's rules for names, sizes and
// MaxJobs; it needs CapabilityJobs, and inside RunJob it is not allowed.
func (h *MockHost) StartJob(name string, arg []byte) (uint32, error) {
	if h.inJob || h.MaxJobs <= 0 {
		return 0, serf.ErrNotAllowed
	}
	if err := h.check(serf.CapabilityJobs); err != nil {
		return 0, err
	}
	if err := serf.CheckJobStart(name, arg); err != nil {
		return 0, err
	}
	return h.addRunningJob(name, arg)
}

// addRunningJob records a job in state running, within MaxJobs (else serf.ErrUnavailable).
func (h *MockHost) addRunningJob(name string, arg []byte) (uint32, error) {
	running := 0
	for _, job := range h.Jobs {
		if !job.Info.State.IsOver() {
			running++
		}
	}
	if running >= h.MaxJobs {
		return 0, serf.ErrUnavailable
	}
	if h.Jobs == nil {
		h.Jobs = map[uint32]*MockJob{}
	}
	h.lastJobID++
	id := h.lastJobID
	h.Jobs[id] = &MockJob{
		Info: serf.JobInfo{
			ID:         id,
			Name:       name,
			State:      serf.JobRunning,
			ExitStatus: -1,
			StartedMs:  1_767_225_600_000,
			Output:     []string{},
		},
		Arg: append([]byte{}, arg...),
	}
	return id, nil
}

// JobStatus returns the job's Info, or serf.ErrNotFound.
func (h *MockHost) JobStatus(id uint32) (serf.JobInfo, error) {
	job, ok := h.Jobs[id]
	if !ok {
		return serf.JobInfo{}, serf.ErrNotFound
	}
	return job.Info, nil
}

// KillJob ends a job that has not ended as killed; serf.ErrNotAllowed if it has.
func (h *MockHost) KillJob(id uint32) error {
	job, ok := h.Jobs[id]
	if !ok {
		return serf.ErrNotFound
	}
	if job.Info.State.IsOver() {
		return serf.ErrNotAllowed
	}
	h.EndJob(id, serf.JobKilled, -1)
	return nil
}

// ReapJob deletes a job that has ended; serf.ErrNotAllowed while it has not.
func (h *MockHost) ReapJob(id uint32) error {
	job, ok := h.Jobs[id]
	if !ok {
		return serf.ErrNotFound
	}
	if !job.Info.State.IsOver() {
		return serf.ErrNotAllowed
	}
	delete(h.Jobs, id)
	return nil
}

// EndJob ends job id as the agent would (state finished, failed or killed; exitStatus counts
// only for finished) and returns the JobDone event to Deliver; ok is false if there is no such
// job or it has already ended.
func (h *MockHost) EndJob(id uint32, state serf.JobState, exitStatus int32) (done serf.JobDone, ok bool) {
	job, found := h.Jobs[id]
	if !found || job.Info.State.IsOver() {
		return serf.JobDone{}, false
	}
	job.Info.State = state
	job.Info.ExitStatus = -1
	if state == serf.JobFinished {
		job.Info.ExitStatus = exitStatus
	}
	job.Info.EndedMs = job.Info.StartedMs + 1
	return JobDone(id, job.Info.Name, state, job.Info.ExitStatus), true
}

// RunJob runs plugin's RunJob as the agent's job instance would: no query is being handled,
// and starting another job is not allowed. A plugin that is not a serf.JobRunner gets the
// SDK's error.
func (h *MockHost) RunJob(plugin serf.Plugin, job serf.Job) (int32, error) {
	runner, ok := plugin.(serf.JobRunner)
	if !ok {
		return 0, errNoJobs
	}
	h.respond = respondClosed
	h.inJob = true
	defer func() { h.inJob = false }()
	return runner.RunJob(job, h)
}

type noJobsError struct{}

func (noJobsError) Error() string { return "this plugin runs no jobs" }

var errNoJobs error = noJobsError{}

// Job is job id named name with arg, as RunJob receives it.
func Job(id uint32, name string, arg []byte) serf.Job {
	return serf.Job{ID: id, Name: name, Arg: arg}
}

// JobDone is the event the agent sends when job id named name ended in state; exitStatus is
// kept for finished and -1 otherwise, and the error is empty.
func JobDone(id uint32, name string, state serf.JobState, exitStatus int32) serf.JobDone {
	if state != serf.JobFinished {
		exitStatus = -1
	}
	return serf.JobDone{ID: id, Name: name, State: state, ExitStatus: exitStatus}
}
