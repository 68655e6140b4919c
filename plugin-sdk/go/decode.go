package serf

// Decoding the payloads the host writes into the input buffer: envelopes and the init
// context. Field for field the same rules as the Rust SDK (plugin-sdk/src/input.rs): unknown
// keys are ignored, integers may come in any width, payloads as bin or str, and a known event
// kind with a missing field is an error. Beyond the Rust SDK, nil reads as a zero value.

import (
	"errors"
	"math"
	"strconv"
)

// UnknownKindError is what DecodeEnvelope returns for a well-formed envelope whose event kind
// this SDK does not know: a newer v1 host added it. The SDK skips such events (serf_handle
// returns 0 without calling the plugin).
type UnknownKindError struct {
	// Kind is the event's kind.
	Kind string
}

func (e *UnknownKindError) Error() string {
	return "skipped event of unknown kind " + e.Kind
}

// versionError is an ABI version mismatch; its text is reported as it is.
type versionError struct{ text string }

func (e *versionError) Error() string { return e.text }

// fieldError names the field whose value could not be read.
func fieldError(name string, err error) error {
	if field, ok := err.(*pathError); ok {
		return &pathError{name + "." + field.path, field.err}
	}
	return &pathError{name, err}
}

type pathError struct {
	path string
	err  error
}

func (e *pathError) Error() string { return e.path + ": " + e.err.Error() }

// required tracks which of a struct's fields were seen; names are in declaration order.
type required struct {
	names []string
	seen  uint32
}

func (q *required) mark(index int) { q.seen |= 1 << index }

func (q *required) check() error {
	for index, name := range q.names {
		if q.seen&(1<<index) == 0 {
			return errors.New("missing field " + name)
		}
	}
	return nil
}

// DecodeEnvelope decodes serf_handle's payload. A well-formed envelope of an event kind this
// SDK does not know gives an *UnknownKindError; anything else that is not a valid v1 envelope
// gives an error whose text says what is wrong. The result shares no memory with payload.
func DecodeEnvelope(payload []byte) (Envelope, error) {
	envelope, err := decodeEnvelope(payload)
	if err == nil {
		return envelope, nil
	}
	switch err.(type) {
	case *UnknownKindError, *versionError:
		return Envelope{}, err
	}
	return Envelope{}, errors.New("cannot decode envelope: " + err.Error())
}

func decodeEnvelope(payload []byte) (Envelope, error) {
	var envelope Envelope
	r := &reader{buf: payload}
	n, err := r.mapLen()
	if err != nil {
		return envelope, err
	}
	fields := required{names: []string{"v", "seq", "event"}}
	var v, seq uint64
	var event []byte
	for i := 0; i < n; i++ {
		key, err := r.rawString(false, "str key")
		if err != nil {
			return envelope, err
		}
		switch string(key) {
		case "v":
			v, err = r.uint(math.MaxUint32)
			fields.mark(0)
		case "seq":
			seq, err = r.uint(math.MaxUint64)
			fields.mark(1)
		case "event":
			start := r.off
			err = r.skip()
			event = payload[start:r.off]
			fields.mark(2)
		default:
			err = r.skip()
		}
		if err != nil {
			return envelope, fieldError(string(key), err)
		}
	}
	if fields.seen&1 != 0 && v != ABIVersion {
		return envelope, &versionError{"envelope of abi " + strconv.FormatUint(v, 10) + ", this plugin speaks " + strconv.Itoa(ABIVersion)}
	}
	var kind string
	if event != nil {
		// Skipping the event above checked its shape and depth; read it at its real depth.
		if kind, err = eventKind(&reader{buf: event, depth: 1}); err != nil {
			return envelope, fieldError("event", err)
		}
		if !knownKind(kind) {
			return envelope, &UnknownKindError{Kind: kind}
		}
	}
	if err := fields.check(); err != nil {
		return envelope, err
	}
	decoded, err := decodeEvent(&reader{buf: event, depth: 1}, kind)
	if err != nil {
		return envelope, fieldError("event", err)
	}
	return Envelope{V: uint32(v), Seq: seq, Event: decoded}, nil
}

// knownKind reports whether kind is one of the event kinds this SDK decodes: ABI v1.0's,
// then later additions.
func knownKind(kind string) bool {
	switch kind {
	case "member-join", "member-leave", "member-failed", "member-update", "member-reap",
		"user", "query", "dropped":
		return true
	}
	return isQueryAnswerKind(kind) || kind == "job-done"
}

// eventKind finds the event map's kind, wherever it is in the map.
func eventKind(r *reader) (string, error) {
	n, err := r.mapLen()
	if err != nil {
		return "", err
	}
	for i := 0; i < n; i++ {
		key, err := r.rawString(false, "str key")
		if err != nil {
			return "", err
		}
		if string(key) == "kind" {
			kind, err := r.rawString(false, "str")
			if err != nil {
				return "", fieldError("kind", err)
			}
			return string(kind), nil
		}
		if err := r.skip(); err != nil {
			return "", fieldError(string(key), err)
		}
	}
	return "", errors.New("missing field kind")
}

func decodeEvent(r *reader, kind string) (Event, error) {
	if isQueryAnswerKind(kind) {
		return decodeQueryAnswer(r, kind)
	}
	if kind == "job-done" {
		return decodeJobDone(r)
	}
	n, err := r.mapLen()
	if err != nil {
		return nil, err
	}
	var fields required
	var user UserEvent
	var query Query
	var members MemberEvent
	var dropped Dropped
	switch kind {
	case "user":
		fields.names = []string{"name", "payload", "ltime", "coalesce"}
	case "query":
		fields.names = []string{"id", "name", "payload", "ltime", "source_node", "deadline_ms"}
	case "dropped":
		fields.names = []string{"count"}
	default:
		fields.names = []string{"members"}
		members.Kind = MemberEventKind(kind)
	}
	for i := 0; i < n; i++ {
		key, err := r.rawString(false, "str key")
		if err != nil {
			return nil, err
		}
		name := string(key)
		index := -1
		switch kind {
		case "user":
			switch name {
			case "name":
				index = 0
				user.Name, err = r.str()
			case "payload":
				index = 1
				user.Payload, err = r.bytes()
			case "ltime":
				index = 2
				user.LTime, err = r.uint(math.MaxUint64)
			case "coalesce":
				index = 3
				user.Coalesce, err = r.bool()
			}
		case "query":
			switch name {
			case "id":
				index = 0
				var id uint64
				id, err = r.uint(math.MaxUint32)
				query.ID = uint32(id)
			case "name":
				index = 1
				query.Name, err = r.str()
			case "payload":
				index = 2
				query.Payload, err = r.bytes()
			case "ltime":
				index = 3
				query.LTime, err = r.uint(math.MaxUint64)
			case "source_node":
				index = 4
				query.SourceNode, err = r.str()
			case "deadline_ms":
				index = 5
				query.DeadlineMs, err = r.uint(math.MaxUint64)
			}
		case "dropped":
			if name == "count" {
				index = 0
				dropped.Count, err = r.uint(math.MaxUint64)
			}
		default:
			if name == "members" {
				index = 0
				members.Members, err = decodeMembers(r)
			}
		}
		if index < 0 {
			err = r.skip()
		} else {
			fields.mark(index)
		}
		if err != nil {
			return nil, fieldError(name, err)
		}
	}
	r.leave()
	if err := fields.check(); err != nil {
		return nil, err
	}
	switch kind {
	case "user":
		return user, nil
	case "query":
		return query, nil
	case "dropped":
		return dropped, nil
	}
	return members, nil
}

func decodeMembers(r *reader) ([]Member, error) {
	if r.isNil() {
		return []Member{}, nil
	}
	n, err := r.arrayLen()
	if err != nil {
		return nil, err
	}
	members := make([]Member, 0, n)
	for i := 0; i < n; i++ {
		member, err := decodeMember(r)
		if err != nil {
			return nil, fieldError(strconv.Itoa(i), err)
		}
		members = append(members, member)
	}
	r.leave()
	return members, nil
}

func decodeMember(r *reader) (Member, error) {
	var member Member
	n, err := r.mapLen()
	if err != nil {
		return member, err
	}
	fields := required{names: []string{"name", "addr", "port", "tags", "status"}}
	for i := 0; i < n; i++ {
		key, err := r.rawString(false, "str key")
		if err != nil {
			return member, err
		}
		switch string(key) {
		case "name":
			fields.mark(0)
			member.Name, err = r.str()
		case "addr":
			fields.mark(1)
			member.Addr, err = r.str()
		case "port":
			fields.mark(2)
			var port uint64
			port, err = r.uint(math.MaxUint16)
			member.Port = uint16(port)
		case "tags":
			fields.mark(3)
			member.Tags, err = decodeTags(r)
		case "status":
			fields.mark(4)
			member.Status, err = r.str()
		default:
			err = r.skip()
		}
		if err != nil {
			return member, fieldError(string(key), err)
		}
	}
	r.leave()
	return member, fields.check()
}

func decodeTags(r *reader) (map[string]string, error) {
	if r.isNil() {
		return map[string]string{}, nil
	}
	n, err := r.mapLen()
	if err != nil {
		return nil, err
	}
	tags := make(map[string]string, n)
	for i := 0; i < n; i++ {
		key, err := r.rawString(false, "str key")
		if err != nil {
			return nil, err
		}
		value, err := r.str()
		if err != nil {
			return nil, fieldError(string(key), err)
		}
		tags[string(key)] = value
	}
	r.leave()
	return tags, nil
}

// DecodeInitContext decodes serf_init's payload and checks that the host speaks this ABI
// version. The result shares no memory with payload.
func DecodeInitContext(payload []byte) (*InitContext, error) {
	ctx, err := decodeInitContext(payload)
	if err != nil {
		return nil, errors.New("cannot decode init context: " + err.Error())
	}
	if ctx.ABI != ABIVersion {
		return nil, errors.New("host speaks plugin abi " + strconv.FormatUint(uint64(ctx.ABI), 10) + ", this plugin speaks " + strconv.Itoa(ABIVersion))
	}
	return ctx, nil
}

func decodeInitContext(payload []byte) (*InitContext, error) {
	ctx := &InitContext{}
	r := &reader{buf: payload}
	n, err := r.mapLen()
	if err != nil {
		return nil, err
	}
	fields := required{names: []string{"abi", "host", "node", "plugin", "config"}}
	for i := 0; i < n; i++ {
		key, err := r.rawString(false, "str key")
		if err != nil {
			return nil, err
		}
		switch string(key) {
		case "abi":
			fields.mark(0)
			var abi uint64
			abi, err = r.uint(math.MaxUint32)
			ctx.ABI = uint32(abi)
		case "host":
			fields.mark(1)
			ctx.Host, err = r.str()
		case "node":
			fields.mark(2)
			ctx.Node, err = r.str()
		case "plugin":
			fields.mark(3)
			ctx.Plugin, err = r.str()
		case "config":
			fields.mark(4)
			if r.isNil() {
				ctx.Config = map[string]any{}
			} else {
				ctx.Config, err = r.table()
			}
		default:
			err = r.skip()
		}
		if err != nil {
			return nil, fieldError(string(key), err)
		}
	}
	if err := fields.check(); err != nil {
		return nil, err
	}
	return ctx, nil
}
