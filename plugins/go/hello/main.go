// Command hello is the Go twin of plugins/hello: it logs every user event and every membership
// change, and answers nothing.
//
// Lines go to the agent's log at info level, attributed to the plugin:
//
//   - user event deploy payload="v1" (the payload as text, quoted and escaped);
//   - member-join: node-a 127.0.0.1:7946, node-b [::1]:7946 (the same for member-leave,
//     member-failed, member-update, member-reap);
//   - at warn level, missed 3 events when the agent had to drop events for this plugin.
//
// Queries are ignored.
//
//	GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -o target/wasm32-wasip1/go/hello.wasm ./plugins/go/hello
package main

import (
	"net/netip"
	"strconv"
	"strings"

	serf "github.com/serf-wasm/serf-wasm/plugin-sdk/go"
)

// Hello is stateless: it formats each event into one log line.
type Hello struct{ serf.PluginDefaults }

// Handle logs user events, membership changes and drops.
func (Hello) Handle(event serf.Event, host serf.Host) error {
	switch e := event.(type) {
	case serf.UserEvent:
		host.Info("user event " + e.Name + " payload=" + serf.Quote(string(e.Payload)))
	case serf.Dropped:
		host.Warn("missed " + strconv.FormatUint(e.Count, 10) + " events")
	case serf.MemberEvent:
		host.Info(describeMembers(e.EventKind(), e.Members))
	}
	return nil
}

func init() { serf.Register(Hello{}) }

// main is never called: -buildmode=c-shared builds a reactor, whose _initialize runs the
// package initialisers above and returns.
func main() {}

// describeMembers is "kind: name addr:port, ...", with IPv6 addresses in brackets.
func describeMembers(kind string, members []serf.Member) string {
	var line strings.Builder
	line.WriteString(kind + ":")
	for index, member := range members {
		if index == 0 {
			line.WriteString(" ")
		} else {
			line.WriteString(", ")
		}
		line.WriteString(member.Name + " ")
		if ip, err := netip.ParseAddr(member.Addr); err == nil && ip.Zone() == "" {
			line.WriteString(netip.AddrPortFrom(ip, member.Port).String())
		} else {
			line.WriteString(member.Addr + ":" + strconv.Itoa(int(member.Port)))
		}
	}
	return line.String()
}
