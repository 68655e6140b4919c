package serf

// Event is one of UserEvent, Query, MemberEvent, Dropped, QueryResponse, QueryDone or
// JobDone; switch on its type:
//
//	switch e := event.(type) {
//	case serf.Query:
//		...
//	case serf.MemberEvent:
//		...
//	}
//
// The set is closed (the interface has an unexported method). Event kinds that a newer host
// adds within ABI v1 never reach a plugin built with this SDK: the SDK skips them.
type Event interface {
	// EventKind is Serf's name for the event type: member-join, ..., user, query, dropped.
	EventKind() string
	isEvent()
}

// Envelope is one event as serf_handle receives it.
type Envelope struct {
	// V is always ABIVersion.
	V uint32
	// Seq is the event's position among those offered to this plugin, from 1. Events the
	// host had to drop leave gaps. The host's own Dropped notices carry 0.
	Seq uint64
	// Event is the event.
	Event Event
}

// MemberEventKind is the kind of a membership change, as Serf names it.
type MemberEventKind string

// The membership event kinds.
const (
	// MemberJoin: members joined the cluster (or the local agent started).
	MemberJoin MemberEventKind = "member-join"
	// MemberLeave: members left gracefully.
	MemberLeave MemberEventKind = "member-leave"
	// MemberFailed: members were declared failed.
	MemberFailed MemberEventKind = "member-failed"
	// MemberUpdate: members changed their tags or address.
	MemberUpdate MemberEventKind = "member-update"
	// MemberReap: failed or left members were removed for good.
	MemberReap MemberEventKind = "member-reap"
)

// MemberEvent is a membership change of one Kind affecting Members.
type MemberEvent struct {
	// Kind says what happened to the members.
	Kind MemberEventKind
	// Members are the members concerned.
	Members []Member
}

// EventKind returns string(e.Kind): member-join, member-leave, ...
func (e MemberEvent) EventKind() string { return string(e.Kind) }
func (MemberEvent) isEvent()            {}

// UserEvent is a custom user event (serf event NAME PAYLOAD).
type UserEvent struct {
	// Name is the event name.
	Name string
	// Payload is opaque and may be any bytes.
	Payload []byte
	// LTime is the event's Lamport time.
	LTime uint64
	// Coalesce says whether the sender allowed coalescing.
	Coalesce bool
}

// EventKind returns "user".
func (UserEvent) EventKind() string { return "user" }
func (UserEvent) isEvent()          {}

// Query is a query waiting for an answer (serf query NAME PAYLOAD); answer it with
// Host.Respond while handling it.
type Query struct {
	// ID is Serf's query id (random per query; with LTime it identifies the query).
	ID uint32
	// Name is the query name.
	Name string
	// Payload is opaque and may be any bytes.
	Payload []byte
	// LTime is the query's Lamport time.
	LTime uint64
	// SourceNode is the node that sent the query.
	SourceNode string
	// DeadlineMs is when the querier stops listening, in milliseconds since the Unix epoch
	// (time.UnixMilli(int64(q.DeadlineMs))).
	DeadlineMs uint64
}

// EventKind returns "query".
func (Query) EventKind() string { return "query" }
func (Query) isEvent()          {}

// Dropped says that the host dropped Count events for this plugin because its queue was full.
// It is always delivered, whatever the plugin's events filter.
type Dropped struct {
	// Count is how many events were lost since the last envelope.
	Count uint64
}

// EventKind returns "dropped".
func (Dropped) EventKind() string { return "dropped" }
func (Dropped) isEvent()          {}

// Member is a cluster member as Serf's handlers see it.
type Member struct {
	// Name is the node name.
	Name string
	// Addr is the gossip IP address as text (127.0.0.1, ::1).
	Addr string
	// Port is the gossip port.
	Port uint16
	// Tags are the member's tags (never nil after decoding).
	Tags map[string]string
	// Status is alive, leaving, left, failed or none.
	Status string
}

// InitContext is what serf_init receives: who the plugin is and its configuration.
type InitContext struct {
	// ABI is always ABIVersion.
	ABI uint32
	// Host is the host's name and version, such as serf/0.1.0.
	Host string
	// Node is the local node's name.
	Node string
	// Plugin is the plugin's name: its [plugins.NAME] table in serf.toml, or its file stem.
	Plugin string
	// Config is the plugin's config table from serf.toml (never nil after decoding). Values
	// are string, int64 (uint64 above math.MaxInt64), float64, bool, nil, []byte, []any,
	// map[string]any or Ext; TOML dates arrive as strings.
	Config map[string]any
}

// Ext is a msgpack extension value. The host never sends one; the decoder keeps it rather
// than failing.
type Ext struct {
	// Type is the extension type.
	Type int8
	// Data is its payload.
	Data []byte
}

// ConfigValue is config key key, if present.
func (c *InitContext) ConfigValue(key string) (any, bool) {
	value, ok := c.Config[key]
	return value, ok
}

// ConfigString is config key key if it is present and a string.
func (c *InitContext) ConfigString(key string) (string, bool) {
	value, ok := c.Config[key].(string)
	return value, ok
}

// ConfigBool is config key key if it is present and a boolean.
func (c *InitContext) ConfigBool(key string) (bool, bool) {
	value, ok := c.Config[key].(bool)
	return value, ok
}

// ConfigInt64 is config key key if it is present and an integer that fits an int64.
func (c *InitContext) ConfigInt64(key string) (int64, bool) {
	value, ok := c.Config[key].(int64)
	return value, ok
}

// ConfigFloat64 is config key key if it is present and a number: floats as they are,
// integers converted.
func (c *InitContext) ConfigFloat64(key string) (float64, bool) {
	switch value := c.Config[key].(type) {
	case float64:
		return value, true
	case int64:
		return float64(value), true
	case uint64:
		return float64(value), true
	}
	return 0, false
}

// ConfigStrings is config key key if it is present and an array of strings only.
func (c *InitContext) ConfigStrings(key string) ([]string, bool) {
	values, ok := c.Config[key].([]any)
	if !ok {
		return nil, false
	}
	out := make([]string, 0, len(values))
	for _, value := range values {
		text, ok := value.(string)
		if !ok {
			return nil, false
		}
		out = append(out, text)
	}
	return out, true
}

// ConfigTable is config key key if it is present and a table.
func (c *InitContext) ConfigTable(key string) (map[string]any, bool) {
	value, ok := c.Config[key].(map[string]any)
	return value, ok
}
