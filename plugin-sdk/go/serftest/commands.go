package serftest

// MockHost's command calls (ABI v1.1), with the agent's rules: a name must be granted (see
// GrantCommand), extra arguments only where allowed, and requests in shape. Nothing runs: a
// test sets what each command returns and checks Ran.

import serf "github.com/serf-wasm/serf-wasm/plugin-sdk/go"

// MockCommand is a command granted on a MockHost, as a [plugins.NAME.commands.CMD] table
// grants it.
type MockCommand struct {
	// AllowArgs is whether the plugin may pass arguments; off by default, as in the agent.
	AllowArgs bool
	// Result is what RunCommand returns for it.
	Result serf.CommandResult
}

// RanCommand is a command the plugin ran with RunCommand or started with StartCommand.
type RanCommand struct {
	// Name is its name in the table.
	Name string
	// Args are the arguments the plugin passed.
	Args []string
	// Stdin is what the plugin passed as stdin.
	Stdin []byte
	// Job is the job id when started as a job, 0 when waited for.
	Job uint32
}

// GrantCommand grants command name (no extra arguments), which exits 0 with no output; change
// Commands[name] for other results. It returns h so grants chain.
func (h *MockHost) GrantCommand(name string) *MockHost {
	if h.Commands == nil {
		h.Commands = map[string]*MockCommand{}
	}
	h.Commands[name] = &MockCommand{}
	return h
}

// RunsOf is how many times command name was run or started.
func (h *MockHost) RunsOf(name string) int {
	runs := 0
	for _, ran := range h.Ran {
		if ran.Name == name {
			runs++
		}
	}
	return runs
}

func (h *MockHost) admitCommand(name string, args []string, stdin []byte) error {
	if err := serf.CheckCommandRequest(name, args, stdin); err != nil {
		return err
	}
	command, ok := h.Commands[name]
	if !ok {
		return serf.ErrDenied
	}
	if len(args) > 0 && !command.AllowArgs {
		return serf.ErrNotAllowed
	}
	return nil
}

// RunCommand records the run and returns the command's Result.
func (h *MockHost) RunCommand(name string, args []string, stdin []byte) (serf.CommandResult, error) {
	if err := h.admitCommand(name, args, stdin); err != nil {
		return serf.CommandResult{}, err
	}
	h.Ran = append(h.Ran, RanCommand{Name: name, Args: append([]string{}, args...), Stdin: append([]byte{}, stdin...)})
	return h.Commands[name].Result, nil
}

// StartCommand records the run and a job in state running, under MaxJobs, as StartJob does.
func (h *MockHost) StartCommand(name string, args []string, stdin []byte) (uint32, error) {
	if h.inJob || h.MaxJobs <= 0 {
		return 0, serf.ErrNotAllowed
	}
	if err := h.admitCommand(name, args, stdin); err != nil {
		return 0, err
	}
	id, err := h.addRunningJob(name, stdin)
	if err != nil {
		return 0, err
	}
	h.Ran = append(h.Ran, RanCommand{Name: name, Args: append([]string{}, args...), Stdin: append([]byte{}, stdin...), Job: id})
	return id, nil
}
