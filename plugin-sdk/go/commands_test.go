package serf

import (
	"bytes"
	"errors"
	"reflect"
	"testing"
)

// The guest tests' recorder is granted no command, as an agent without a commands table.
func (r *recorder) RunCommand(string, []string, []byte) (CommandResult, error) {
	return CommandResult{}, ErrDenied
}
func (r *recorder) StartCommand(string, []string, []byte) (uint32, error) { return 0, ErrDenied }

func TestCommandResultRoundTrips(t *testing.T) {
	result := CommandResult{ExitStatus: 3, Stdout: []byte("out"), Stderr: []byte{}, Truncated: true, Error: "", DurationMs: 12}
	decoded, err := DecodeCommandResult(EncodeCommandResult(result))
	if err != nil || !reflect.DeepEqual(decoded, result) {
		t.Fatalf("got %+v, %v", decoded, err)
	}
	if _, err := DecodeCommandResult([]byte{0x81, 0xa1, 'x'}); err == nil {
		t.Fatal("decoded garbage")
	}
}

func TestCommandRequestEncodesLikeTheRustSDK(t *testing.T) {
	// abi::encode(&CommandRequest { name: "reload", args: vec!["-s"], stdin: b"in" }).
	want := []byte("\x83\xa4name\xa6reload\xa4args\x91\xa2-s\xa5stdin\xc4\x02in")
	if got := EncodeCommandRequest("reload", []string{"-s"}, []byte("in")); !bytes.Equal(got, want) {
		t.Fatalf("got %q", got)
	}
}

func TestCommandRequestsAreCheckedLikeTheAgent(t *testing.T) {
	cases := []struct {
		name  string
		args  []string
		stdin []byte
		want  error
	}{
		{"reload", nil, nil, nil},
		{"", nil, nil, ErrBadArgument},
		{"reload", []string{"a\x00b"}, nil, ErrBadArgument},
		{"reload", make([]string, MaxCommandArgs+1), nil, ErrTooLarge},
		{"reload", nil, make([]byte, MaxCommandStdinBytes+1), ErrTooLarge},
	}
	for _, c := range cases {
		if err := CheckCommandRequest(c.name, c.args, c.stdin); !errors.Is(err, c.want) {
			t.Errorf("%q %d args: got %v, want %v", c.name, len(c.args), err, c.want)
		}
	}
}
