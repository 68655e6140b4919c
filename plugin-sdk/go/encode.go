package serf

// Encoding ABI payloads exactly as the host does (rmp_serde::to_vec_named): maps with the
// fields in declaration order, the shortest integer forms, payloads as bin and the keys of
// tags and config sorted bytewise. Plugins never need this; it is for tests, for the golden
// fixtures, and for a host written in Go.

// EncodeEnvelope encodes an envelope as the host writes it into the input buffer.
func EncodeEnvelope(envelope Envelope) []byte {
	w := &writer{}
	w.mapHeader(3)
	w.str("v")
	w.uint(uint64(envelope.V))
	w.str("seq")
	w.uint(envelope.Seq)
	w.str("event")
	w.event(envelope.Event)
	return w.buf
}

// EncodeEvent encodes the event map alone, which the host writes after the envelope's header.
func EncodeEvent(event Event) []byte {
	w := &writer{}
	w.event(event)
	return w.buf
}

func (w *writer) event(event Event) {
	switch e := event.(type) {
	case UserEvent:
		w.mapHeader(5)
		w.str("kind")
		w.str("user")
		w.str("name")
		w.str(e.Name)
		w.str("payload")
		w.bin(e.Payload)
		w.str("ltime")
		w.uint(e.LTime)
		w.str("coalesce")
		w.bool(e.Coalesce)
	case Query:
		w.mapHeader(7)
		w.str("kind")
		w.str("query")
		w.str("id")
		w.uint(uint64(e.ID))
		w.str("name")
		w.str(e.Name)
		w.str("payload")
		w.bin(e.Payload)
		w.str("ltime")
		w.uint(e.LTime)
		w.str("source_node")
		w.str(e.SourceNode)
		w.str("deadline_ms")
		w.uint(e.DeadlineMs)
	case MemberEvent:
		w.mapHeader(2)
		w.str("kind")
		w.str(string(e.Kind))
		w.str("members")
		w.arrayHeader(len(e.Members))
		for _, member := range e.Members {
			w.mapHeader(5)
			w.str("name")
			w.str(member.Name)
			w.str("addr")
			w.str(member.Addr)
			w.str("port")
			w.uint(uint64(member.Port))
			w.str("tags")
			w.stringMap(member.Tags)
			w.str("status")
			w.str(member.Status)
		}
	case Dropped:
		w.mapHeader(2)
		w.str("kind")
		w.str("dropped")
		w.str("count")
		w.uint(e.Count)
	default:
		if w.queryAnswerEvent(event) || w.jobEvent(event) {
			return
		}
		// Every event type is handled above (Event is sealed); a nil Event has no kind.
		w.mapHeader(0)
	}
}

// EncodeInitContext encodes an init context as the host writes it for serf_init.
func EncodeInitContext(ctx *InitContext) []byte {
	w := &writer{}
	w.mapHeader(5)
	w.str("abi")
	w.uint(uint64(ctx.ABI))
	w.str("host")
	w.str(ctx.Host)
	w.str("node")
	w.str(ctx.Node)
	w.str("plugin")
	w.str(ctx.Plugin)
	w.str("config")
	config := ctx.Config
	if config == nil {
		config = map[string]any{}
	}
	w.value(config)
	return w.buf
}
