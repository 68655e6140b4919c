package serf

// Commands (ABI v1.1): host commands that the plugin's serf.toml table names
// ([plugins.NAME.commands.CMD]), each a fixed argv run without a shell. Host.RunCommand waits
// for one within the event's deadline; Host.StartCommand starts one as a job, checked, killed
// and reaped with Host.JobStatus, KillJob and ReapJob. The types and the codec mirror
// plugin-sdk/src/abi.rs.

import (
	"errors"
	"math"
	"strings"
	"unicode"
)

// The command imports of ABI v1.1.
const (
	// ImportCommandRun is (ptr, len, outPtr, outCap i32) -> i32: runs a granted command and
	// writes its CommandResult if it fits, returning its length either way.
	ImportCommandRun = "command_run"
	// ImportCommandResult is (outPtr, outCap i32) -> i32: the result the last command_run
	// could not fit.
	ImportCommandResult = "command_result"
	// ImportCommandStart is (ptr, len i32) -> i32: starts a granted command as a job, returns
	// its id.
	ImportCommandStart = "command_start"

	// MaxCommandArgs is how many extra arguments a request may carry.
	MaxCommandArgs = 64
	// MaxCommandArgBytes is the longest extra argument, in bytes.
	MaxCommandArgBytes = 4096
	// MaxCommandStdinBytes is the largest stdin a request may carry, in bytes.
	MaxCommandStdinBytes = 64 * 1024
)

// CommandResult is how a command run with Host.RunCommand ended.
type CommandResult struct {
	// ExitStatus is its exit code; -1 when it did not exit by itself.
	ExitStatus int32
	// TimedOut is whether it ran past its timeout (or the event's deadline) and its process
	// group was killed.
	TimedOut bool
	// Stdout are the first bytes of its stdout, at most the table's max_output_kib.
	Stdout []byte
	// Stderr are the first bytes of its stderr, at most the table's max_output_kib.
	Stderr []byte
	// Truncated is whether Stdout or Stderr was cut at the cap.
	Truncated bool
	// Error is why it did not exit by itself (could not start, killed by a signal, timed out);
	// empty when it did.
	Error string
	// DurationMs is how long it ran, in milliseconds.
	DurationMs uint64
}

// CheckCommandRequest checks a request's shape as the agent does: ErrBadArgument for an empty
// name or an argument with NUL, ErrTooLarge for too many or too long arguments or too much
// stdin. Whether the command is granted, and takes arguments, is the agent's table's business.
func CheckCommandRequest(name string, args []string, stdin []byte) error {
	if name == "" || len(name) > MaxJobNameBytes || strings.IndexFunc(name, unicode.IsControl) >= 0 {
		return ErrBadArgument
	}
	for _, arg := range args {
		if strings.IndexByte(arg, 0) >= 0 {
			return ErrBadArgument
		}
		if len(arg) > MaxCommandArgBytes {
			return ErrTooLarge
		}
	}
	if len(args) > MaxCommandArgs || len(stdin) > MaxCommandStdinBytes {
		return ErrTooLarge
	}
	return nil
}

// EncodeCommandRequest encodes the request of command_run and command_start, as the Rust SDK
// does.
func EncodeCommandRequest(name string, args []string, stdin []byte) []byte {
	w := &writer{}
	w.mapHeader(3)
	w.str("name")
	w.str(name)
	w.str("args")
	w.arrayHeader(len(args))
	for _, arg := range args {
		w.str(arg)
	}
	w.str("stdin")
	w.bin(stdin)
	return w.buf
}

// EncodeCommandResult encodes a result as command_run writes it.
func EncodeCommandResult(result CommandResult) []byte {
	w := &writer{}
	w.mapHeader(7)
	w.str("exit_status")
	w.int(int64(result.ExitStatus))
	w.str("timed_out")
	w.bool(result.TimedOut)
	w.str("stdout")
	w.bin(result.Stdout)
	w.str("stderr")
	w.bin(result.Stderr)
	w.str("truncated")
	w.bool(result.Truncated)
	w.str("error")
	w.str(result.Error)
	w.str("duration_ms")
	w.uint(result.DurationMs)
	return w.buf
}

// DecodeCommandResult decodes what command_run writes.
func DecodeCommandResult(payload []byte) (CommandResult, error) {
	var result CommandResult
	names := []string{"exit_status", "timed_out", "stdout", "stderr", "truncated", "error", "duration_ms"}
	err := decodeMap(payload, names, func(r *reader, index int) (err error) {
		switch index {
		case 0:
			result.ExitStatus, err = r.int32()
		case 1:
			result.TimedOut, err = r.bool()
		case 2:
			result.Stdout, err = r.bytes()
		case 3:
			result.Stderr, err = r.bytes()
		case 4:
			result.Truncated, err = r.bool()
		case 5:
			result.Error, err = r.str()
		case 6:
			result.DurationMs, err = r.uint(math.MaxUint64)
		}
		return err
	})
	if err != nil {
		return CommandResult{}, errors.New("cannot decode command result: " + err.Error())
	}
	return result, nil
}
