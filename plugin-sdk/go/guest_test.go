package serf

import (
	"errors"
	"strings"
	"testing"
)

// recorder is a minimal Host for the export bodies' tests (serftest imports this package, so
// it cannot be used here).
type recorder struct {
	logs      []string
	responses [][]byte
}

func (r *recorder) Respond(payload []byte) error {
	r.responses = append(r.responses, payload)
	return nil
}

func (r *recorder) Log(level LogLevel, message string) {
	r.logs = append(r.logs, level.String()+" "+message)
}

func (r *recorder) Trace(message string) { r.Log(LogTrace, message) }
func (r *recorder) Debug(message string) { r.Log(LogDebug, message) }
func (r *recorder) Info(message string)  { r.Log(LogInfo, message) }
func (r *recorder) Warn(message string)  { r.Log(LogWarn, message) }
func (r *recorder) Error(message string) { r.Log(LogError, message) }

// script is a plugin whose behaviour each test sets.
type script struct {
	initErr   error
	handleErr error
	panicWith any
	events    []Event
	inits     int
	shutdowns int
}

func (s *script) Init(ctx *InitContext, host Host) error {
	s.inits++
	host.Info("init " + ctx.Plugin)
	return s.initErr
}

func (s *script) Handle(event Event, host Host) error {
	if s.panicWith != nil {
		panic(s.panicWith)
	}
	s.events = append(s.events, event)
	return s.handleErr
}

func (s *script) Shutdown(host Host) {
	s.shutdowns++
}

func initPayload() []byte {
	return EncodeInitContext(&InitContext{ABI: ABIVersion, Host: "serf/test", Node: "n", Plugin: "p"})
}

func userPayload() []byte {
	return EncodeEnvelope(Envelope{V: 1, Seq: 1, Event: UserEvent{Name: "deploy", Payload: []byte("v1")}})
}

func TestAnInitializedPluginGetsEachEvent(t *testing.T) {
	plugin := &script{}
	g := guest{plugin: plugin}
	host := &recorder{}
	if status, message := g.init(initPayload(), host); status != 0 {
		t.Fatalf("init: %d %s", status, message)
	}
	for i := 0; i < 3; i++ {
		if status, message := g.handle(userPayload(), host); status != 0 {
			t.Fatalf("handle: %d %s", status, message)
		}
	}
	if len(plugin.events) != 3 || plugin.events[0].(UserEvent).Name != "deploy" {
		t.Fatalf("%#v", plugin.events)
	}
	g.shutdown(host)
	g.shutdown(host)
	if plugin.shutdowns != 1 {
		t.Fatalf("%d shutdowns", plugin.shutdowns)
	}
	if status, message := g.handle(userPayload(), host); status == 0 || message != "serf_handle called before a successful serf_init" {
		t.Fatalf("handle after shutdown: %d %s", status, message)
	}
}

func TestARefusedInitKeepsEventsAway(t *testing.T) {
	plugin := &script{initErr: errors.New("config key file must be a path, not 3")}
	g := guest{plugin: plugin}
	host := &recorder{}
	status, message := g.init(initPayload(), host)
	if status == 0 || message != "config key file must be a path, not 3" {
		t.Fatalf("init: %d %q", status, message)
	}
	if status, message := g.handle(userPayload(), host); status == 0 || !strings.Contains(message, "before a successful serf_init") {
		t.Fatalf("handle: %d %q", status, message)
	}
	g.shutdown(host)
	if plugin.shutdowns != 0 || len(plugin.events) != 0 {
		t.Fatalf("%#v", plugin)
	}
}

func TestPluginErrorsBecomeTheErrorText(t *testing.T) {
	g := guest{plugin: &script{handleErr: ErrTooLarge}}
	host := &recorder{}
	g.init(initPayload(), host)
	status, message := g.handle(userPayload(), host)
	if status != failed || message != "host call failed: payload too large" {
		t.Fatalf("%d %q", status, message)
	}
	g = guest{plugin: &script{handleErr: errors.New("")}}
	g.init(initPayload(), host)
	if _, message := g.handle(userPayload(), host); message == "" {
		t.Fatal("an empty error text reached the host")
	}
}

func TestUnknownKindsAreSkippedWithADebugLine(t *testing.T) {
	plugin := &script{}
	g := guest{plugin: plugin}
	host := &recorder{}
	g.init(initPayload(), host)
	payload := msg(pairs{"v", 1, "seq", 4, "event", pairs{"kind", "from-the-future", "id", 9}})
	if status, message := g.handle(payload, host); status != 0 {
		t.Fatalf("%d %s", status, message)
	}
	if len(plugin.events) != 0 || host.logs[len(host.logs)-1] != "debug skipped event of unknown kind from-the-future" {
		t.Fatalf("%#v %#v", plugin.events, host.logs)
	}
}

func TestBadInputIsRefusedWithTheDecoderMessage(t *testing.T) {
	g := guest{plugin: &script{}}
	host := &recorder{}
	if status, message := g.init([]byte{0xc1}, host); status == 0 || !strings.HasPrefix(message, "cannot decode init context: ") {
		t.Fatalf("%d %q", status, message)
	}
	g.init(initPayload(), host)
	if status, message := g.handle([]byte{0x93, 1, 2}, host); status == 0 || !strings.HasPrefix(message, "cannot decode envelope: ") {
		t.Fatalf("%d %q", status, message)
	}
}

func TestInitWithoutARegisteredPluginSaysWhatToDo(t *testing.T) {
	var g guest
	status, message := g.init(initPayload(), &recorder{})
	if status == 0 || !strings.Contains(message, "serf.Register") {
		t.Fatalf("%d %q", status, message)
	}
}

func TestPanicsAreLoggedThenPropagate(t *testing.T) {
	for _, value := range []any{"boom", errors.New("bad state"), 42} {
		g := guest{plugin: &script{panicWith: value}}
		host := &recorder{}
		g.init(initPayload(), host)
		recovered := func() (r any) {
			defer func() { r = recover() }()
			g.handle(userPayload(), host)
			return nil
		}()
		if recovered != value {
			t.Fatalf("recovered %v, want %v", recovered, value)
		}
		last := host.logs[len(host.logs)-1]
		if !strings.HasPrefix(last, "error plugin panicked: ") {
			t.Fatalf("logs %#v", host.logs)
		}
	}
}

func TestTheInputBufferGrowsAndIsReused(t *testing.T) {
	var g guest
	if g.inputBuffer(-1) != nil {
		t.Fatal("a negative size got a buffer")
	}
	small := g.inputBuffer(0)
	if len(small) < minInputBytes {
		t.Fatalf("first buffer has %d bytes", len(small))
	}
	if again := g.inputBuffer(100); &again[0] != &small[0] {
		t.Fatal("a small request reallocated")
	}
	big := g.inputBuffer(1 << 20)
	if len(big) < 1<<20 {
		t.Fatalf("buffer of %d bytes for 1 MiB", len(big))
	}
	if payload, ok := g.payload(0, 1<<20); !ok || len(payload) != 1<<20 {
		t.Fatal("the whole buffer is not a valid payload")
	}
	for _, bad := range []struct {
		start  uint64
		length int32
	}{{1, 10}, {0, -1}, {0, 1<<20 + 1}, {1 << 40, 0}} {
		if _, ok := g.payload(bad.start, bad.length); ok {
			t.Errorf("payload(%d, %d) accepted", bad.start, bad.length)
		}
	}
}

func TestRegisterRefusesASecondPlugin(t *testing.T) {
	saved := instance
	defer func() { instance = saved }()
	instance = guest{}
	Register(&script{})
	for _, p := range []Plugin{&script{}, nil} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("Register(%v) did not panic", p)
				}
			}()
			Register(p)
		}()
	}
}

func TestHostErrorsNameTheirCode(t *testing.T) {
	for code := int32(-7); code <= -1; code++ {
		err := CheckStatus(code).(HostError)
		if err.Code() != code || !err.Known() || strings.Contains(err.Error(), "unknown") {
			t.Errorf("code %d: %v", code, err)
		}
	}
	if CheckStatus(0) != nil || CheckStatus(17) != nil {
		t.Error("success codes are errors")
	}
	unknown := CheckStatus(-42)
	if unknown.Error() != "host call failed: unknown host status -42" || unknown.(HostError).Known() {
		t.Error(unknown)
	}
	if !errors.Is(error(ErrNotAllowed), ErrNotAllowed) || ErrTooLarge.Error() != "host call failed: payload too large" {
		t.Error("sentinels do not compare")
	}
}

func TestFormatValueReadsLikeTheRustMessages(t *testing.T) {
	cases := map[string]any{
		"3":                     int64(3),
		`"a\"b\n\u{1b}"`:        "a\"b\n\x1b",
		"nil":                   nil,
		"0.5":                   0.5,
		"1":                     1.0,
		"[1, \"x\", [true]]":    []any{int64(1), "x", []any{true}},
		`{"a": 1, "b": [0, 1]}`: map[string]any{"b": []byte{0, 1}, "a": int64(1)},
		"18446744073709551615":  uint64(1<<64 - 1),
		"-inf":                  -1 / zero(),
	}
	for want, value := range cases {
		if got := FormatValue(value); got != want {
			t.Errorf("FormatValue(%#v) = %s, want %s", value, got, want)
		}
	}
	if got := Quote("a\x00\xff"); got != "\"a\\0\uFFFD\"" {
		t.Errorf("Quote = %s", got)
	}
}

func zero() float64 { return 0 }
