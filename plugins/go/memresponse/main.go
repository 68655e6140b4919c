// Command memresponse is the Go twin of plugins/memresponse: it appends the payload of every
// memresponse user event to a file.
//
// serf event memresponse hello adds the line hello to the file on every node running it. The
// file is config key file (default DefaultFile). A plugin sees no host directory unless its
// entry in serf.toml grants one (a preopened directory: a guest path such as /data mapped to a
// host directory), so the file must lie under a granted guest path.
//
// Each event opens the file in append mode, writes the payload and "\n", and closes it, so the
// file is complete after every event and may be rotated at any time. Payloads are written as
// they are (binary too); other events are ignored.
//
//	GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -o target/wasm32-wasip1/go/memresponse.wasm ./plugins/go/memresponse
package main

import (
	"errors"
	"os"

	serf "github.com/serf-wasm/serf-wasm/plugin-sdk/go"
)

const (
	// EventName is the user event this plugin records.
	EventName = "memresponse"
	// DefaultFile is where payloads go when config key file is not set.
	DefaultFile = "/data/mem.txt"
)

// MemResponse remembers where to write; the file itself is opened per event.
type MemResponse struct {
	serf.PluginDefaults
	file string
}

// Init reads config key file.
func (m *MemResponse) Init(ctx *serf.InitContext, host serf.Host) error {
	value, ok := ctx.ConfigValue("file")
	switch path, isString := value.(string); {
	case !ok:
		m.file = DefaultFile
	case isString && path != "":
		m.file = path
	default:
		return errors.New("config key file must be a path, not " + serf.FormatValue(value))
	}
	host.Info("appending " + EventName + " payloads to " + m.file)
	return nil
}

// Handle appends the payload of memresponse user events to the file.
func (m *MemResponse) Handle(event serf.Event, host serf.Host) error {
	user, ok := event.(serf.UserEvent)
	if !ok || user.Name != EventName {
		return nil
	}
	line := append(append(make([]byte, 0, len(user.Payload)+1), user.Payload...), '\n')
	file, err := os.OpenFile(m.file, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o666)
	if err == nil {
		_, err = file.Write(line)
		if closeErr := file.Close(); err == nil {
			err = closeErr
		}
	}
	if err != nil {
		return errors.New("cannot append to " + m.file + ": " + err.Error())
	}
	return nil
}

func init() { serf.Register(&MemResponse{}) }

// main is never called: -buildmode=c-shared builds a reactor, whose _initialize runs the
// package initialisers above and returns.
func main() {}
