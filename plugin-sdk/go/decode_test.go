package serf

import (
	"bytes"
	"math"
	"math/rand"
	"reflect"
	"strings"
	"testing"
)

// msg builds msgpack for tests through the SDK's own writer; value takes the writer's types,
// and pairs keeps a map's keys in the order given (unlike map[string]any).
type pairs []any

func msg(values ...any) []byte {
	w := &writer{}
	for _, v := range values {
		writeTest(w, v)
	}
	return w.buf
}

func writeTest(w *writer, v any) {
	if p, ok := v.(pairs); ok {
		w.mapHeader(len(p) / 2)
		for i := 0; i < len(p); i += 2 {
			writeTest(w, p[i])
			writeTest(w, p[i+1])
		}
		return
	}
	if list, ok := v.([]any); ok {
		w.arrayHeader(len(list))
		for _, item := range list {
			writeTest(w, item)
		}
		return
	}
	if raw, ok := v.(rawBytes); ok {
		w.buf = append(w.buf, raw...)
		return
	}
	w.value(v)
}

// rawBytes are written as they are, for hand-picked encodings.
type rawBytes []byte

func TestEnvelopesRoundTrip(t *testing.T) {
	random := rand.New(rand.NewSource(1))
	for i := 0; i < 2000; i++ {
		sent := Envelope{V: ABIVersion, Seq: random.Uint64(), Event: randomEvent(random)}
		decoded, err := DecodeEnvelope(EncodeEnvelope(sent))
		if err != nil {
			t.Fatalf("%#v: %v", sent, err)
		}
		if !reflect.DeepEqual(decoded, sent) {
			t.Fatalf("decoded\n%#v\nsent\n%#v", decoded, sent)
		}
	}
}

func randomString(random *rand.Rand, max int) string {
	runes := []rune("abcxyz-_. é√€😀\x00\n")
	out := make([]rune, random.Intn(max+1))
	for i := range out {
		out[i] = runes[random.Intn(len(runes))]
	}
	return string(out)
}

func randomBytes(random *rand.Rand, max int) []byte {
	out := make([]byte, random.Intn(max+1))
	random.Read(out)
	return out
}

func randomEvent(random *rand.Rand) Event {
	switch random.Intn(4) {
	case 0:
		return UserEvent{
			Name:     randomString(random, 16),
			Payload:  randomBytes(random, 300),
			LTime:    random.Uint64() >> uint(random.Intn(64)),
			Coalesce: random.Intn(2) == 0,
		}
	case 1:
		return Query{
			ID:         random.Uint32(),
			Name:       randomString(random, 16),
			Payload:    randomBytes(random, 70_000),
			LTime:      random.Uint64() >> uint(random.Intn(64)),
			SourceNode: randomString(random, 40),
			DeadlineMs: random.Uint64(),
		}
	case 2:
		kinds := []MemberEventKind{MemberJoin, MemberLeave, MemberFailed, MemberUpdate, MemberReap}
		members := make([]Member, random.Intn(20))
		for i := range members {
			tags := map[string]string{}
			for j := random.Intn(4); j > 0; j-- {
				tags[randomString(random, 6)] = randomString(random, 8)
			}
			members[i] = Member{
				Name:   randomString(random, 12),
				Addr:   "10.0.0." + string(rune('0'+random.Intn(10))),
				Port:   uint16(random.Uint32()),
				Tags:   tags,
				Status: []string{"alive", "leaving", "left", "failed", "none"}[random.Intn(5)],
			}
		}
		return MemberEvent{Kind: kinds[random.Intn(len(kinds))], Members: members}
	}
	return Dropped{Count: random.Uint64() >> uint(random.Intn(64))}
}

func TestUnknownEventKindsAreSkipped(t *testing.T) {
	payload := msg(pairs{"v", 1, "seq", 4, "event", pairs{"kind", "from-the-future", "id", 9}})
	_, err := DecodeEnvelope(payload)
	unknown, ok := err.(*UnknownKindError)
	if !ok || unknown.Kind != "from-the-future" {
		t.Fatalf("error %v", err)
	}
	if err.Error() != "skipped event of unknown kind from-the-future" {
		t.Fatal(err)
	}
}

func TestUnknownKeysAreIgnoredAnywhere(t *testing.T) {
	payload := msg(pairs{
		"future", pairs{"nested", []any{1, "x", pairs{"deep", []byte{1}}}},
		"event", pairs{
			"extra", true,
			"count", 5,
			"kind", "dropped",
			"also", 1.5,
		},
		"seq", 2,
		"v", 1,
	})
	envelope, err := DecodeEnvelope(payload)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(envelope, Envelope{V: 1, Seq: 2, Event: Dropped{Count: 5}}) {
		t.Fatalf("%#v", envelope)
	}
}

func TestIntegersMayComeInAnyWidth(t *testing.T) {
	payload := msg(pairs{
		"v", rawBytes{0xd3, 0, 0, 0, 0, 0, 0, 0, 1}, // int64 1
		"seq", rawBytes{0xcf, 0, 0, 0, 0, 0, 0, 0, 9}, // uint64 9
		"event", pairs{
			"kind", "member-join",
			"members", []any{pairs{
				"name", "a",
				"addr", "::1",
				"port", rawBytes{0xd0, 80}, // int8 80
				"tags", pairs{},
				"status", "alive",
			}},
		},
	})
	envelope, err := DecodeEnvelope(payload)
	if err != nil {
		t.Fatal(err)
	}
	member := envelope.Event.(MemberEvent).Members[0]
	if envelope.Seq != 9 || member.Port != 80 {
		t.Fatalf("%#v", envelope)
	}
}

func TestPayloadsMayBeStrAndNilIsAZeroValue(t *testing.T) {
	payload := msg(pairs{"v", 1, "seq", nil, "event", pairs{
		"kind", "user",
		"name", nil,
		"payload", "as str",
		"ltime", nil,
		"coalesce", nil,
	}})
	envelope, err := DecodeEnvelope(payload)
	if err != nil {
		t.Fatal(err)
	}
	want := Envelope{V: 1, Event: UserEvent{Payload: []byte("as str")}}
	if !reflect.DeepEqual(envelope, want) {
		t.Fatalf("%#v", envelope)
	}
	payload = msg(pairs{"v", 1, "seq", 1, "event", pairs{"kind", "member-leave", "members", nil}})
	envelope, err = DecodeEnvelope(payload)
	if err != nil || len(envelope.Event.(MemberEvent).Members) != 0 {
		t.Fatalf("%#v %v", envelope, err)
	}
}

func TestAKnownKindWithBadFieldsIsAnError(t *testing.T) {
	cases := map[string][]byte{
		"event: missing field count":                   msg(pairs{"v", 1, "seq", 4, "event", pairs{"kind", "dropped"}}),
		"event.count: expected integer, found str":     msg(pairs{"v", 1, "seq", 4, "event", pairs{"kind", "dropped", "count", "3"}}),
		"event.members.0.port: integer 70000 out of":   msg(pairs{"v", 1, "seq", 1, "event", pairs{"kind", "member-join", "members", []any{pairs{"name", "a", "addr", "b", "port", 70000, "tags", pairs{}, "status", "alive"}}}}),
		"event.members.0: missing field status":        msg(pairs{"v", 1, "seq", 1, "event", pairs{"kind", "member-join", "members", []any{pairs{"name", "a", "addr", "b", "port", 1, "tags", pairs{}}}}}),
		"event.id: integer -1 out of range":            msg(pairs{"v", 1, "seq", 1, "event", pairs{"kind", "query", "id", -1}}),
		"event.id: integer 4294967296 out of range":    msg(pairs{"v", 1, "seq", 1, "event", pairs{"kind", "query", "id", uint64(1) << 32}}),
		"event.name: expected str, found bin":          msg(pairs{"v", 1, "seq", 1, "event", pairs{"kind", "user", "name", []byte("x")}}),
		"event.kind: expected str, found integer":      msg(pairs{"v", 1, "seq", 1, "event", pairs{"kind", 1}}),
		"event: missing field kind":                    msg(pairs{"v", 1, "seq", 1, "event", pairs{}}),
		"event: expected map, found array":             msg(pairs{"v", 1, "seq", 1, "event", []any{}}),
		"missing field event":                          msg(pairs{"v", 1, "seq", 1}),
		"missing field seq":                            msg(pairs{"v", 1, "event", pairs{"kind", "dropped", "count", 1}}),
		"expected map, found str":                      msg("envelope"),
		"event.members.0.tags.a: expected str, found ": msg(pairs{"v", 1, "seq", 1, "event", pairs{"kind", "member-join", "members", []any{pairs{"tags", pairs{"a", 1}}}}}),
	}
	for want, payload := range cases {
		_, err := DecodeEnvelope(payload)
		if err == nil {
			t.Errorf("%s: decoded", want)
			continue
		}
		if !strings.HasPrefix(err.Error(), "cannot decode envelope: "+want) {
			t.Errorf("error %q, want %q", err, want)
		}
	}
}

func TestOtherABIVersionsAreRefused(t *testing.T) {
	_, err := DecodeEnvelope(EncodeEnvelope(Envelope{V: 2, Seq: 1, Event: Dropped{Count: 1}}))
	if err == nil || err.Error() != "envelope of abi 2, this plugin speaks 1" {
		t.Fatalf("error %v", err)
	}
	_, err = DecodeInitContext(EncodeInitContext(&InitContext{ABI: 2}))
	if err == nil || err.Error() != "host speaks plugin abi 2, this plugin speaks 1" {
		t.Fatalf("error %v", err)
	}
}

func TestGarbageIsAnError(t *testing.T) {
	for _, payload := range [][]byte{
		{0xc1},
		{},
		{0x93, 1, 2},
		// Lengths far beyond the input, and nesting beyond the decoder's depth limit.
		{0xdd, 0xff, 0xff, 0xff, 0xff},
		{0xdf, 0xff, 0xff, 0xff, 0xff},
		{0xc6, 0xff, 0xff, 0xff, 0xff},
		bytes.Repeat([]byte{0x91}, 100_000),
		msg(pairs{"v", 1, "seq", 1, "future", rawBytes(append(bytes.Repeat([]byte{0x91}, 100_000), 0xc0))}),
	} {
		if _, err := DecodeEnvelope(payload); err == nil {
			t.Errorf("envelope % x decoded", payload[:min(len(payload), 16)])
		}
		if _, err := DecodeInitContext(payload); err == nil {
			t.Errorf("init context % x decoded", payload[:min(len(payload), 16)])
		}
	}
}

func TestConfigMayNestAHundredLevels(t *testing.T) {
	var nested any = "bottom"
	for i := 0; i < 100; i++ {
		nested = []any{nested}
	}
	sent := &InitContext{ABI: 1, Host: "h", Node: "n", Plugin: "p", Config: map[string]any{"deep": nested}}
	decoded, err := DecodeInitContext(EncodeInitContext(sent))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(decoded, sent) {
		t.Fatal("100 levels did not round-trip")
	}
}

func TestConfigValuesKeepTheirTypes(t *testing.T) {
	sent := &InitContext{ABI: 1, Config: map[string]any{
		"big":      uint64(math.MaxUint64),
		"min":      int64(math.MinInt64),
		"bytes":    []byte{0, 1},
		"nil":      nil,
		"float":    -1.25,
		"ext":      Ext{Type: 5, Data: []byte{1, 2, 3, 4}},
		"table":    map[string]any{"z": int64(1), "a": []any{}},
		"unicode":  "ü😀",
		"negative": int64(-40000),
	}}
	decoded, err := DecodeInitContext(EncodeInitContext(sent))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(decoded.Config, sent.Config) {
		t.Fatalf("%#v", decoded.Config)
	}
	// A 32-bit float (which the host never sends) reads as a float64.
	payload := msg(pairs{"abi", 1, "host", "", "node", "", "plugin", "", "config", pairs{"f", float32(1.5)}})
	ctx, err := DecodeInitContext(payload)
	if err != nil || ctx.Config["f"] != 1.5 {
		t.Fatalf("%v %v", ctx, err)
	}
	// A nil config is an empty one.
	payload = msg(pairs{"abi", 1, "host", "", "node", "", "plugin", "", "config", nil})
	if ctx, err = DecodeInitContext(payload); err != nil || ctx.Config == nil {
		t.Fatalf("%v %v", ctx, err)
	}
}

func TestIntegerEncodingIsTheShortest(t *testing.T) {
	cases := []struct {
		value any
		want  []byte
	}{
		{int64(0), []byte{0x00}},
		{int64(127), []byte{0x7f}},
		{int64(128), []byte{0xcc, 0x80}},
		{int64(300), []byte{0xcd, 0x01, 0x2c}},
		{int64(70000), []byte{0xce, 0, 1, 0x11, 0x70}},
		{int64(1) << 40, []byte{0xcf, 0, 0, 1, 0, 0, 0, 0, 0}},
		{int64(-1), []byte{0xff}},
		{int64(-32), []byte{0xe0}},
		{int64(-33), []byte{0xd0, 0xdf}},
		{int64(-129), []byte{0xd1, 0xff, 0x7f}},
		{int64(-40000), []byte{0xd2, 0xff, 0xff, 0x63, 0xc0}},
		{int64(math.MinInt64), []byte{0xd3, 0x80, 0, 0, 0, 0, 0, 0, 0}},
	}
	for _, c := range cases {
		if got := msg(c.value); !bytes.Equal(got, c.want) {
			t.Errorf("%v encodes to % x, want % x", c.value, got, c.want)
		}
		r := &reader{buf: c.want}
		if got, err := r.value(); err != nil || !reflect.DeepEqual(got, c.value) {
			t.Errorf("% x decodes to %#v (%v), want %#v", c.want, got, err, c.value)
		}
	}
}

func TestStringAndBinHeadersAtTheirLimits(t *testing.T) {
	for _, n := range []int{0, 31, 32, 255, 256, 65535, 65536} {
		text := strings.Repeat("x", n)
		r := &reader{buf: msg(text)}
		if got, err := r.str(); err != nil || got != text {
			t.Errorf("str of %d bytes: %v", n, err)
		}
		w := &writer{}
		w.bin([]byte(text))
		r = &reader{buf: w.buf}
		if got, err := r.bytes(); err != nil || string(got) != text {
			t.Errorf("bin of %d bytes: %v", n, err)
		}
	}
}

// mustNotPanic decodes payload both ways; a panic fails the test with the input.
func mustNotPanic(t *testing.T, payload []byte) {
	t.Helper()
	defer func() {
		if r := recover(); r != nil {
			t.Fatalf("decoding % x panicked: %v", payload, r)
		}
	}()
	envelope, err := DecodeEnvelope(payload)
	if err == nil {
		// What decodes re-encodes and decodes to the same value.
		again, err := DecodeEnvelope(EncodeEnvelope(envelope))
		if err != nil || !reflect.DeepEqual(again, envelope) {
			t.Fatalf("% x decodes to %#v, which does not round-trip: %v", payload, envelope, err)
		}
	}
	_, _ = DecodeInitContext(payload)
}

func TestArbitraryBytesNeverPanic(t *testing.T) {
	random := rand.New(rand.NewSource(2))
	for i := 0; i < 50_000; i++ {
		mustNotPanic(t, randomBytes(random, 256))
	}
}

func TestDamagedFixturesNeverPanic(t *testing.T) {
	random := rand.New(rand.NewSource(3))
	for _, name := range []string{
		"envelope-user.msgpack", "envelope-query.msgpack", "envelope-member-join.msgpack",
		"envelope-dropped.msgpack", "init-context.msgpack",
	} {
		data := golden(t, name)
		for cut := 0; cut < len(data); cut++ {
			if _, err := DecodeEnvelope(data[:cut]); err == nil {
				t.Errorf("%s cut at %d decoded", name, cut)
			}
			mustNotPanic(t, data[:cut])
		}
		for i := 0; i < 5_000; i++ {
			damaged := append([]byte{}, data...)
			for j := random.Intn(3); j >= 0; j-- {
				damaged[random.Intn(len(damaged))] = byte(random.Intn(256))
			}
			mustNotPanic(t, damaged)
		}
	}
}

func FuzzDecodeEnvelope(f *testing.F) {
	for _, name := range []string{
		"envelope-user.msgpack", "envelope-query.msgpack", "envelope-member-join.msgpack",
		"envelope-dropped.msgpack", "init-context.msgpack",
	} {
		data, err := readFixture(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Fuzz(mustNotPanic)
}
