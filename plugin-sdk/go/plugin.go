package serf

// Plugin is an event handler. The SDK keeps the one value given to Register for the life of
// the instance, so its fields carry state from event to event.
type Plugin interface {
	// Init is called once per instance, before any event, with the plugin's serf.toml
	// settings. Return an error to refuse them: the agent logs its text, drops this instance
	// and tries again later with backoff. host allows logging; Respond is refused here.
	Init(ctx *InitContext, host Host) error

	// Handle handles one event. Events arrive one at a time, in the order the agent saw them.
	// Ignore the kinds you do not care about by returning nil. An error is logged and counted
	// by the agent, which keeps the instance and goes on with the next event.
	Handle(event Event, host Host) error

	// Shutdown is called at most once, best effort, before the agent drops the instance on
	// shutdown or reload. It is not called after a trap (a panic, an exceeded limit). Keep it
	// short: it gets the fuel_init budget and at most one second.
	Shutdown(host Host)
}

// PluginDefaults gives a plugin the Init and Shutdown that the Rust SDK's trait provides by
// default: Init accepts any configuration and Shutdown does nothing. Embed it and write only
// Handle:
//
//	type Upcase struct{ serf.PluginDefaults }
//
//	func (Upcase) Handle(event serf.Event, host serf.Host) error { ... }
type PluginDefaults struct{}

// Init accepts the configuration without looking at it.
func (PluginDefaults) Init(*InitContext, Host) error { return nil }

// Shutdown does nothing.
func (PluginDefaults) Shutdown(Host) {}

// Host is the agent, as seen from inside a plugin call. Host calls never call back into the
// plugin, and never block except RunCommand, which waits for its command (only this plugin
// waits, and no longer than the event's deadline).
//
// In a wasm build the SDK hands plugins a Host whose methods call the serf.* imports; in
// native tests serftest.MockHost records the calls instead. Plugin code never knows which one
// it has.
type Host interface {
	// Respond answers the query being handled with payload.
	//
	// Allowed only while handling a Query, and only once per query: otherwise ErrNotAllowed.
	// The encoded response must fit Serf's query response limit (1024 bytes including about
	// 30 bytes of header and the node name), so keep payloads well under 1 KiB: a larger one
	// gets ErrTooLarge and nothing is sent.
	Respond(payload []byte) error

	// Log writes one line to the agent's log, attributed to this plugin. The host cuts lines
	// at 4 KiB and rate-limits chatty plugins (about 100 lines per second); a refused line is
	// dropped silently, since there is nowhere better to report it.
	Log(level LogLevel, message string)

	// Trace is Log at LogTrace.
	Trace(message string)
	// Debug is Log at LogDebug.
	Debug(message string)
	// Info is Log at LogInfo.
	Info(message string)
	// Warn is Log at LogWarn.
	Warn(message string)
	// Error is Log at LogError.
	Error(message string)

	// Capabilities (ABI v1.1). Each needs a grant in the plugin's serf.toml table, such as
	// capabilities = ["members", "events", "queries"]; without it the call returns ErrDenied.

	// Members is every member this node knows, the local node included, in name order. Needs
	// CapabilityMembers. The list is a snapshot the agent refreshes about once a second and on
	// every membership event, so it may lag the cluster slightly.
	Members() ([]Member, error)

	// FireEvent fires a user event across the cluster, as serf event does. Needs
	// CapabilityEvents. Name and payload together must fit the agent's user event size limit
	// (512 bytes by default, else ErrTooLarge), and a plugin may send about ten events and
	// queries per second (ErrRateLimited beyond). A plugin that fires the events it handles
	// keeps the cluster busy.
	FireEvent(name string, payload []byte, coalesce bool) error

	// Query sends a query across the cluster, as serf query does, and returns its handle.
	// Needs CapabilityQueries. The answers arrive later as QueryResponse events carrying the
	// handle, then one QueryDone, whatever the plugin's events filter says. The size and rate
	// limits of FireEvent apply (the query size limit is 1024 bytes by default).
	Query(request QueryRequest) (uint32, error)

	// Jobs (ABI v1.1); see jobs.go. The plugin runs its jobs by implementing JobRunner.

	// StartJob starts a job: the agent calls the plugin's RunJob in a separate instance, on
	// a worker, and this returns the job's id at once, so the plugin's next event does not
	// wait for it. name (1 to 128 bytes of text, no control characters, else ErrBadArgument)
	// says what the job is; arg (at most 64 KiB, else ErrTooLarge) is its input. The end
	// arrives later as a JobDone event, whatever the plugin's events filter says.
	// ErrUnavailable when the plugin already has max_jobs jobs that have not ended (or the
	// agent is stopping); ErrNotAllowed inside a job, or when max_jobs = 0.
	StartJob(name string, arg []byte) (uint32, error)

	// JobStatus is the state, exit status and output tail of one of this plugin's jobs;
	// ErrNotFound for an id it does not own (or that was reaped).
	JobStatus(id uint32) (JobInfo, error)

	// KillJob kills one of this plugin's jobs that has not ended; it ends as killed almost at
	// once (even in a sleep) and a JobDone follows. ErrNotAllowed if it has already ended.
	KillJob(id uint32) error

	// ReapJob deletes the record of one of this plugin's jobs that has ended, on disk too.
	// ErrNotAllowed while it has not ended.
	ReapJob(id uint32) error

	// Commands (ABI v1.1); see commands.go. Each command needs a [plugins.NAME.commands.CMD]
	// table in serf.toml.

	// RunCommand runs the host command the plugin's table calls name and waits for it (within
	// the command's timeout and this call's deadline): its exit status, and its stdout and
	// stderr cut at the table's max_output_kib. The table fixes the program and its arguments
	// and no shell runs; args are appended only where the table says allow_args = true (else
	// ErrNotAllowed, and nothing runs); stdin (at most 64 KiB) goes to its stdin. A name the
	// table does not grant is ErrDenied; more than ten commands a second is ErrRateLimited. A
	// command that could not start, was killed or timed out is not an error: the result's
	// Error says what happened. Only this plugin waits: keep these quick.
	RunCommand(name string, args []string, stdin []byte) (CommandResult, error)

	// StartCommand starts the host command the plugin's table calls name as a job and returns
	// its id at once; JobStatus (its Output holds the command's last lines), KillJob (its
	// whole process group) and ReapJob work on it, and its end arrives as a JobDone. It counts
	// against max_jobs (ErrUnavailable beyond). The rules of RunCommand apply.
	StartCommand(name string, args []string, stdin []byte) (uint32, error)
}

// Register makes p this module's plugin. Call it once, from an init function of package main:
//
//	func init() { serf.Register(&MyPlugin{}) }
//
// Package initialisers run inside the module's _initialize export, before the host calls
// serf_init. Register panics if p is nil or if a plugin is already registered: a module
// holds exactly one plugin, and a panic there makes the agent report that the plugin failed
// to start.
func Register(p Plugin) {
	if p == nil {
		panic("serf: Register(nil)")
	}
	if instance.plugin != nil {
		panic("serf: Register called twice; a module holds one plugin")
	}
	instance.plugin = p
}
