// Command upcase is the Go twin of plugins/upcase: it answers the upcase query with its payload
// in upper case.
//
// serf query upcase hello gets HELLO back from every node running it. A payload that is valid
// UTF-8 is upper-cased by Unicode rules (straße becomes STRASSE); any other payload has its
// ASCII letters upper-cased byte by byte. Every other event is ignored.
//
//	GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -o target/wasm32-wasip1/go/upcase.wasm ./plugins/go/upcase
package main

import (
	"unicode"
	"unicode/utf8"

	serf "github.com/serf-wasm/serf-wasm/plugin-sdk/go"
)

// QueryName is the query this plugin answers.
const QueryName = "upcase"

// Upcase is stateless: the whole plugin is one Handle.
type Upcase struct{ serf.PluginDefaults }

// Handle answers upcase queries and ignores everything else.
func (Upcase) Handle(event serf.Event, host serf.Host) error {
	if query, ok := event.(serf.Query); ok && query.Name == QueryName {
		return host.Respond(upcase(query.Payload))
	}
	return nil
}

func init() { serf.Register(Upcase{}) }

// main is never called: -buildmode=c-shared builds a reactor, whose _initialize runs the
// package initialisers above and returns.
func main() {}

// upcase is payload in upper case: Unicode rules for UTF-8 text, ASCII rules for other bytes.
func upcase(payload []byte) []byte {
	out := make([]byte, 0, len(payload))
	if !utf8.Valid(payload) {
		for _, b := range payload {
			if 'a' <= b && b <= 'z' {
				b -= 'a' - 'A'
			}
			out = append(out, b)
		}
		return out
	}
	for _, r := range string(payload) {
		if full, ok := fullUpper[r]; ok {
			out = append(out, full...)
		} else {
			out = utf8.AppendRune(out, unicode.ToUpper(r))
		}
	}
	return out
}
