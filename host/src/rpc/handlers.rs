//! One function per RPC command: decode done, reply with Serf's bodies and error strings.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use regex::Regex;

use super::server::{Flow, RecordKind, Session};
use crate::config::LogLevel;
use serf_core::{Event, QueryOutput, QueryParams};
use serf_node::NodeError;
use serf_plugins::{EventFilter, PluginStatsSnapshot};
use serf_rpc::protocol::{self, QueryRecord, StreamRecord, errors};

/// Events an event stream may hold for a slow client, as in Serf.
const STREAM_QUEUE: usize = 512;

/// The error text an RPC client sees.
pub(super) fn agent_error(error: &NodeError) -> String {
    match error {
        NodeError::Respond(error) => format!("failed to respond to key query: {error}"),
        other => other.to_string(),
    }
}

pub(super) async fn event(
    session: &mut Session,
    seq: u64,
    request: protocol::EventRequest,
) -> Result<Flow, protocol::FrameError> {
    let payload = request.payload.unwrap_or_default();
    // The reply is written by `Session::flush_events`, with those of the requests pipelined
    // behind this one.
    match session
        .agent
        .send_user_event(request.name, payload, request.coalesce)
        .await
    {
        Ok(pending) => session.pending_events.push_back((seq, pending)),
        Err(error) => {
            session.flush_events().await;
            session.outbox.error(seq, &agent_error(&error)).await;
        }
    }
    Ok(Flow::Continue)
}

pub(super) async fn force_leave(
    session: &mut Session,
    seq: u64,
    request: protocol::ForceLeaveRequest,
) -> Result<Flow, protocol::FrameError> {
    // Serf accepts a force-leave of any name (an unknown one is kept as an intent).
    let result = session.agent.force_leave(request.node, request.prune).await;
    let error = result.err().map(|e| agent_error(&e)).unwrap_or_default();
    session.outbox.error(seq, &error).await;
    Ok(Flow::Continue)
}

pub(super) async fn join(
    session: &mut Session,
    seq: u64,
    request: protocol::JoinRequest,
) -> Result<Flow, protocol::FrameError> {
    // Serf sends the body even on failure; `Num` is then 0.
    let (num, error) = match session.agent.join(request.existing, request.replay).await {
        Ok(num) => (num, String::new()),
        Err(error) => (0, error),
    };
    let body = protocol::JoinResponse {
        num: i32::try_from(num).unwrap_or(i32::MAX),
    };
    session.outbox.reply(seq, &error, Some(&body)).await;
    Ok(Flow::Continue)
}

/// `members` (no filter) and `members-filtered`.
pub(super) async fn members(
    session: &mut Session,
    seq: u64,
    filter: Option<protocol::MembersFilteredRequest>,
) -> Result<Flow, protocol::FrameError> {
    // Serf wraps each expression as `^expr$` without a group: `a|b` is `^a` or `b$`.
    let anchored = |expr: &str| Regex::new(&format!("^{expr}$"));
    let filter = match filter {
        None => None,
        Some(request) => {
            let tags: Result<Vec<(String, Regex)>, _> = request
                .tags
                .iter()
                .map(|(tag, expr)| anchored(expr).map(|regex| (tag.clone(), regex)))
                .collect();
            let optional = |expr: &str| (!expr.is_empty()).then(|| anchored(expr)).transpose();
            match (tags, optional(&request.status), optional(&request.name)) {
                (Ok(tags), Ok(status), Ok(name)) => Some((tags, status, name)),
                // Serf closes the connection on a filter that does not compile.
                _ => return Ok(Flow::Close),
            }
        }
    };
    let members = match session.agent.members().await {
        Ok(members) => members,
        Err(error) => {
            let body = protocol::MembersResponse::default();
            session
                .outbox
                .reply(seq, &agent_error(&error), Some(&body))
                .await;
            return Ok(Flow::Continue);
        }
    };
    let members = members
        .iter()
        .filter(|member| {
            let Some((tags, status, name)) = &filter else {
                return true;
            };
            status
                .as_ref()
                .is_none_or(|re| re.is_match(member.status.as_str()))
                && name.as_ref().is_none_or(|re| re.is_match(&member.name))
                // As Serf, a member without the tag is matched as if its value were "".
                && tags.iter().all(|(tag, re)| {
                    re.is_match(member.tags.get(tag).map(String::as_str).unwrap_or(""))
                })
        })
        .map(rpc_member)
        .collect();
    let body = protocol::MembersResponse { members };
    session.outbox.reply(seq, "", Some(&body)).await;
    Ok(Flow::Continue)
}

pub(super) fn rpc_member(member: &serf_core::Member) -> protocol::Member {
    let [protocol_min, protocol_max, protocol_cur] = member.versions.protocol;
    let [delegate_min, delegate_max, delegate_cur] = member.versions.delegate;
    protocol::Member {
        addr: protocol::Member::addr_bytes(member.addr.ip()),
        delegate_cur,
        delegate_max,
        delegate_min,
        name: member.name.clone(),
        port: member.addr.port(),
        protocol_cur,
        protocol_max,
        protocol_min,
        status: member.status.as_str().to_owned(),
        tags: member.tags.clone(),
    }
}

pub(super) async fn tags(
    session: &mut Session,
    seq: u64,
    request: protocol::TagsRequest,
) -> Result<Flow, protocol::FrameError> {
    let result = async {
        let mut tags = session.agent.stats().await?.local.tags;
        for key in &request.delete_tags {
            tags.remove(key);
        }
        tags.extend(request.tags);
        session.agent.set_tags(tags).await
    }
    .await;
    let error = result.err().map(|e| agent_error(&e)).unwrap_or_default();
    session.outbox.error(seq, &error).await;
    Ok(Flow::Continue)
}

pub(super) async fn stream(
    session: &mut Session,
    seq: u64,
    request: protocol::StreamRequest,
) -> Result<Flow, protocol::FrameError> {
    let text = if request.filter.is_empty() {
        "*"
    } else {
        &request.filter
    };
    let Ok(filter) = EventFilter::parse(text) else {
        session.outbox.error(seq, errors::INVALID_FILTER).await;
        return Ok(Flow::Continue);
    };
    if session.streams.contains_key(&seq) {
        session.outbox.error(seq, errors::STREAM_EXISTS).await;
        return Ok(Flow::Continue);
    }
    let mut subscription = match session.agent.subscribe(filter, STREAM_QUEUE).await {
        Ok(subscription) => subscription,
        Err(error) => {
            session.outbox.error(seq, &agent_error(&error)).await;
            return Ok(Flow::Continue);
        }
    };
    session.outbox.ok(seq).await;
    let outbox = session.outbox.clone();
    let pending = Arc::clone(&session.pending_queries);
    let task = tokio::spawn(async move {
        loop {
            let event = tokio::select! {
                () = outbox.closed() => return,
                event = subscription.events.recv() => match event {
                    Some(event) => event,
                    None => return,
                },
            };
            let record = stream_record(&event, &pending);
            if !outbox.record(RecordKind::Event, seq, &record) {
                return;
            }
        }
    });
    session.streams.insert(seq, task);
    Ok(Flow::Continue)
}

fn stream_record(
    event: &Event,
    pending: &std::sync::Mutex<super::server::PendingQueries>,
) -> StreamRecord {
    match event {
        Event::Member(member_event) => {
            let event = protocol::MemberEventType::from_name(member_event.kind.as_str())
                .expect("both name the same five member events");
            StreamRecord::Member(protocol::MemberEventRecord {
                event,
                members: member_event.members.iter().map(rpc_member).collect(),
            })
        }
        Event::User(user) => StreamRecord::User(protocol::UserEventRecord {
            coalesce: user.coalesce,
            event: protocol::USER_EVENT.to_owned(),
            ltime: user.ltime,
            name: user.name.clone(),
            payload: nil_if_empty(&user.payload),
        }),
        Event::Query(query) => {
            let id = pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .register(query.key, query.deadline);
            StreamRecord::Query(protocol::QueryEventRecord {
                event: protocol::QUERY_EVENT.to_owned(),
                id,
                ltime: query.key.ltime,
                name: query.name.clone(),
                payload: nil_if_empty(&query.payload),
            })
        }
    }
}

/// A payload as Serf's agent streams it: an empty one is nil (Go decodes an empty payload
/// from gossip as a nil slice, and a nil slice encodes as nil).
fn nil_if_empty(payload: &[u8]) -> Option<Vec<u8>> {
    (!payload.is_empty()).then(|| payload.to_vec())
}

pub(super) async fn monitor(
    session: &mut Session,
    seq: u64,
    request: protocol::MonitorRequest,
) -> Result<Flow, protocol::FrameError> {
    let upper = request.log_level.to_ascii_uppercase();
    let level = match upper.as_str() {
        "" => Some(LogLevel::Info),
        "ERROR" => None, // Serf knows only ERR.
        other => LogLevel::parse(other),
    };
    let Some(level) = level else {
        session
            .outbox
            .error(seq, &errors::unknown_log_level(&upper))
            .await;
        return Ok(Flow::Continue);
    };
    if session.monitor.is_some() {
        session.outbox.error(seq, errors::MONITOR_EXISTS).await;
        return Ok(Flow::Continue);
    }
    let logs = session.agent.logs().clone();
    let (backlog, mut live) = logs.subscribe(level);
    session.outbox.ok(seq).await;
    let outbox = session.outbox.clone();
    let task = tokio::spawn(async move {
        for line in backlog {
            if !outbox.record(
                RecordKind::Log,
                seq,
                &protocol::LogRecord {
                    log: line.text.to_string(),
                },
            ) {
                return;
            }
        }
        loop {
            let line = tokio::select! {
                () = outbox.closed() => return,
                line = live.recv() => line,
            };
            match line {
                Ok(line) if line.level >= level => {
                    if !outbox.record(
                        RecordKind::Log,
                        seq,
                        &protocol::LogRecord {
                            log: line.text.to_string(),
                        },
                    ) {
                        return;
                    }
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                    logs.record_lagged(missed)
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    });
    session.monitor = Some(seq);
    session.streams.insert(seq, task);
    Ok(Flow::Continue)
}

pub(super) async fn stop(
    session: &mut Session,
    seq: u64,
    request: protocol::StopRequest,
) -> Result<Flow, protocol::FrameError> {
    if let Some(task) = session.streams.remove(&request.stop) {
        task.abort();
    }
    if session.monitor == Some(request.stop) {
        session.monitor = None;
    }
    session.outbox.ok(seq).await;
    Ok(Flow::Continue)
}

pub(super) async fn leave(session: &mut Session, seq: u64) -> Result<Flow, protocol::FrameError> {
    let error = session
        .agent
        .leave()
        .await
        .err()
        .map(|e| agent_error(&e))
        .unwrap_or_default();
    session.outbox.error(seq, &error).await;
    // As in Serf, a leave over RPC also stops the agent, once the reply is written.
    Ok(Flow::CloseAndStop)
}

pub(super) async fn query(
    session: &mut Session,
    seq: u64,
    request: protocol::QueryRequest,
) -> Result<Flow, protocol::FrameError> {
    let params = QueryParams {
        name: request.name,
        payload: request.payload.unwrap_or_default(),
        filter_nodes: request.filter_nodes,
        filter_tags: request.filter_tags,
        request_ack: request.request_ack,
        relay_factor: request.relay_factor,
        timeout: (!request.timeout.is_zero()).then_some(request.timeout),
    };
    let mut stream = match session.agent.query(params).await {
        Ok(stream) => stream,
        Err(error) => {
            session.outbox.error(seq, &agent_error(&error)).await;
            return Ok(Flow::Continue);
        }
    };
    session.outbox.ok(seq).await;
    let outbox = session.outbox.clone();
    tokio::spawn(async move {
        while let Some(output) = stream.outputs.recv().await {
            let record = match output {
                QueryOutput::Ack { from } => QueryRecord::ack(from),
                QueryOutput::Response { from, payload } => QueryRecord::response(from, payload),
                QueryOutput::Done => QueryRecord::done(),
            };
            let done = record.kind == protocol::QueryRecordType::Done;
            if !outbox.record(RecordKind::Query, seq, &record) || done {
                return;
            }
        }
    });
    Ok(Flow::Continue)
}

pub(super) async fn respond(
    session: &mut Session,
    seq: u64,
    request: protocol::RespondRequest,
) -> Result<Flow, protocol::FrameError> {
    let key = session
        .pending_queries
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(request.id);
    let Some(key) = key else {
        session.outbox.error(seq, errors::INVALID_QUERY_ID).await;
        return Ok(Flow::Continue);
    };
    let payload = request.payload.unwrap_or_default();
    let error = session
        .agent
        .respond(key, payload)
        .await
        .err()
        .map(|e| agent_error(&e))
        .unwrap_or_default();
    session.outbox.error(seq, &error).await;
    Ok(Flow::Continue)
}

/// Key management (`install-key`, `use-key`, `remove-key`, `list-keys`): a key query to every
/// member, answered once all alive members replied or the query timed out. The body goes out
/// even with an error, as in Serf.
pub(super) async fn keys(
    session: &mut Session,
    seq: u64,
    command: &str,
    key: Option<String>,
) -> Result<Flow, protocol::FrameError> {
    let Some(command) = serf_core::keys::KeyCommand::from_rpc(command) else {
        session.outbox.error(seq, errors::UNSUPPORTED_COMMAND).await;
        return Ok(Flow::Close);
    };
    let list = command == serf_core::keys::KeyCommand::List;
    let empty = protocol::KeyResponse {
        keys: list.then(BTreeMap::new),
        ..protocol::KeyResponse::default()
    };
    let raw = match key.as_deref().map(serf_gossip::keyring::decode_base64) {
        None => Vec::new(),
        Some(Ok(raw)) => raw,
        Some(Err(error)) => {
            session
                .outbox
                .reply(seq, &error.to_string(), Some(&empty))
                .await;
            return Ok(Flow::Continue);
        }
    };
    let (mut stream, num_nodes) = match session.agent.key_query(command, raw).await {
        Ok(started) => started,
        Err(error) => {
            session
                .outbox
                .reply(seq, &agent_error(&error), Some(&empty))
                .await;
            return Ok(Flow::Continue);
        }
    };
    let mut collector = serf_core::keys::KeyCollector::new(command, num_nodes);
    while !collector.is_complete() {
        match stream.outputs.recv().await {
            Some(output) => {
                collector.handle_output(&output);
            }
            None => break,
        }
    }
    let summary = collector.finish();
    let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
    let body = protocol::KeyResponse {
        keys: summary.keys.as_ref().map(|keys| {
            keys.iter()
                .map(|(key, n)| (key.clone(), count(*n)))
                .collect()
        }),
        messages: summary.messages.clone(),
        num_err: count(summary.num_err),
        num_nodes: count(summary.num_nodes),
        num_resp: count(summary.num_resp),
    };
    let error = summary.error().unwrap_or_default();
    session.outbox.reply(seq, &error, Some(&body)).await;
    Ok(Flow::Continue)
}

pub(super) async fn stats(session: &mut Session, seq: u64) -> Result<Flow, protocol::FrameError> {
    let stats = match session.agent.stats().await {
        Ok(stats) => stats,
        Err(error) => {
            let body = protocol::Stats::new();
            session
                .outbox
                .reply(seq, &agent_error(&error), Some(&body))
                .await;
            return Ok(Flow::Continue);
        }
    };
    let body = stats_sections(session, &stats);
    session.outbox.reply(seq, "", Some(&body)).await;
    Ok(Flow::Continue)
}

fn stats_sections(session: &Session, stats: &serf_node::NodeStats) -> protocol::Stats {
    let section = |pairs: Vec<(&str, String)>| -> BTreeMap<String, String> {
        pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
    };
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let tasks = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();
    let serf = &stats.serf;
    let mut sections = protocol::Stats::new();
    sections.insert(
        "agent".into(),
        section(vec![("name", stats.local.name.clone())]),
    );
    sections.insert(
        "runtime".into(),
        section(vec![
            ("os", std::env::consts::OS.into()),
            ("arch", std::env::consts::ARCH.into()),
            ("version", format!("serf-rs {}", env!("CARGO_PKG_VERSION"))),
            ("max_procs", cpus.to_string()),
            ("goroutines", tasks.to_string()),
            ("cpu_count", cpus.to_string()),
        ]),
    );
    let logs = session.agent.logs();
    let rpc = session.outbox.stats();
    let load =
        |counter: &std::sync::atomic::AtomicU64| counter.load(std::sync::atomic::Ordering::Relaxed);
    // A record is dropped either by the agent (the stream's queue is full) or here (the
    // client's write queue is): both are drops the client never sees.
    let event_stream_drops = stats.stream_drops + load(&rpc.dropped_events);
    let query_answer_drops = stats.query_output_drops + load(&rpc.dropped_query_records);
    let monitor_lagged_lines = logs.lagged() + load(&rpc.dropped_log_lines);
    sections.insert(
        "serf".into(),
        section(vec![
            ("members", serf.members.to_string()),
            ("failed", serf.failed.to_string()),
            ("left", serf.left.to_string()),
            ("health_score", stats.gossip.awareness.to_string()),
            ("member_time", serf.member_time.to_string()),
            ("event_time", serf.event_time.to_string()),
            ("query_time", serf.query_time.to_string()),
            ("intent_queue", serf.intent_queue.to_string()),
            ("event_queue", serf.event_queue.to_string()),
            ("query_queue", serf.query_queue.to_string()),
            (
                "serf_messages_dropped",
                serf.counters.messages_dropped.to_string(),
            ),
            (
                "events_deduplicated",
                serf.counters.events_deduplicated.to_string(),
            ),
            ("events_too_old", serf.counters.events_too_old.to_string()),
            (
                "broadcasts_pruned",
                serf.counters.broadcasts_pruned.to_string(),
            ),
            ("encrypted", stats.encrypted.to_string()),
            (
                "coordinate_resets",
                serf.counters.coordinate_resets.to_string(),
            ),
            ("event_streams", stats.num_streams.to_string()),
            ("event_stream_drops", event_stream_drops.to_string()),
            ("query_answer_drops", query_answer_drops.to_string()),
            (
                "plugin_response_drops",
                session.agent.respond_drops().to_string(),
            ),
            ("monitor_lagged_lines", monitor_lagged_lines.to_string()),
        ]),
    );
    sections.insert(
        "rpc".into(),
        section(vec![
            ("connections", load(&rpc.connections).to_string()),
            ("open", load(&rpc.open).to_string()),
            ("pending", rpc.pending().to_string()),
            ("pending_evicted", rpc.pending_evicted().to_string()),
            (
                "handshake_timeouts",
                load(&rpc.handshake_timeouts).to_string(),
            ),
            ("request_timeouts", load(&rpc.request_timeouts).to_string()),
            ("accept_errors", load(&rpc.accept.errors).to_string()),
            (
                "closed_out_of_fds",
                load(&rpc.accept.closed_out_of_fds).to_string(),
            ),
        ]),
    );
    let gossip = &stats.gossip;
    let transport = &stats.transport;
    sections.insert(
        "gossip".into(),
        section(vec![
            ("packets_received", gossip.packets_received.to_string()),
            ("packets_sent", gossip.packets_sent.to_string()),
            ("packets_dropped", gossip.packets_dropped.to_string()),
            ("handoff_dropped", gossip.handoff_dropped.to_string()),
            ("streams_in", gossip.streams_in.to_string()),
            ("streams_out", gossip.streams_out.to_string()),
            ("stream_errors", gossip.stream_errors.to_string()),
            (
                "packets_decrypt_failed",
                gossip.packets_decrypt_failed.to_string(),
            ),
            (
                "streams_decrypt_failed",
                gossip.streams_decrypt_failed.to_string(),
            ),
            ("awareness", gossip.awareness.to_string()),
            ("queued_broadcasts", gossip.queued_broadcasts.to_string()),
            ("pending_joins", stats.pending_joins.to_string()),
            ("udp_send_failures", transport.udp_send_failures.to_string()),
            (
                "udp_receive_errors",
                transport.udp_receive_errors.to_string(),
            ),
            (
                "inbound_streams_refused",
                transport.inbound_streams_refused.to_string(),
            ),
            ("inbound_pending", transport.inbound_pending.to_string()),
            (
                "inbound_first_byte_timeouts",
                transport.inbound_first_byte_timeouts.to_string(),
            ),
            (
                "inbound_pending_evicted",
                transport.inbound_pending_evicted.to_string(),
            ),
            ("accept_errors", transport.accept_errors.to_string()),
            ("closed_out_of_fds", transport.closed_out_of_fds.to_string()),
            (
                "inbound_stream_failures",
                transport.inbound_stream_failures.to_string(),
            ),
            (
                "inbound_stream_drops",
                transport.inbound_stream_drops.to_string(),
            ),
            (
                "outbound_streams_refused",
                transport.outbound_streams_refused.to_string(),
            ),
            (
                "outbound_stream_failures",
                transport.outbound_stream_failures.to_string(),
            ),
        ]),
    );
    sections.insert("tags".into(), stats.local.tags.clone());
    if let Some(snapshot) = &stats.snapshot {
        sections.insert(
            "snapshot".into(),
            section(vec![
                ("path", snapshot.path.display().to_string()),
                ("records_written", snapshot.records.to_string()),
                ("compactions", snapshot.compactions.to_string()),
                ("write_errors", snapshot.errors.to_string()),
                ("queue_drops", snapshot.dropped.to_string()),
            ]),
        );
    }
    sections.insert(
        "event_handlers".into(),
        session.agent.handlers().serf_stats(),
    );
    let plugins = session.agent.plugins();
    let (hits, misses) = plugins.cache_counts();
    sections.insert(
        "plugins".into(),
        section(vec![
            ("count", plugins.num_plugins().to_string()),
            ("cache_hits", hits.to_string()),
            ("cache_misses", misses.to_string()),
        ]),
    );
    for plugin in plugins.stats() {
        let mut pairs = vec![
            ("state", plugin.state.clone()),
            ("events", plugin.filter.clone()),
            ("sha256", plugin.sha256.clone()),
            ("path", plugin.path.display().to_string()),
            ("capabilities", plugin.capabilities.clone()),
        ];
        pairs.extend(plugin_counters(&plugin));
        let mut section = section(pairs);
        // Effects (ABI v1.2): grants, counters and metrics.
        section.extend(plugin.effects.iter().cloned());
        sections.insert(format!("plugin:{}", plugin.name), section);
    }
    for handler in session.agent.handlers().stats() {
        let timeout = handler
            .timeout
            .map_or_else(String::new, |t| format!("{t:?}"));
        sections.insert(
            handler.name,
            section(vec![
                ("script", handler.script),
                ("events", handler.events),
                ("timeout", timeout),
                ("offered", handler.offered.to_string()),
                ("succeeded", handler.succeeded.to_string()),
                ("failed", handler.failed.to_string()),
                ("timeouts", handler.timeouts.to_string()),
                ("dropped", handler.dropped.to_string()),
                ("responses", handler.responses.to_string()),
                ("truncated", handler.truncated.to_string()),
                ("queue_depth", handler.queue_depth.to_string()),
                ("queue_capacity", handler.queue_capacity.to_string()),
            ]),
        );
    }
    sections
}

/// `reload` (our extension): reads the configuration again and applies its live settings and
/// plugin changes; replies once every new version handles events.
pub(super) async fn reload(session: &mut Session, seq: u64) -> Result<Flow, protocol::FrameError> {
    let trigger = crate::agent::reload::Trigger::Rpc;
    let (body, error) = match session.agent.reload(trigger).await {
        Ok(report) => {
            let plugins = report
                .plugins
                .into_iter()
                .map(|outcome| protocol::ReloadedPlugin {
                    change: outcome.change.to_owned(),
                    detail: outcome.detail,
                    error: outcome.error.unwrap_or_default(),
                    name: outcome.plugin,
                })
                .collect();
            let restart = report
                .restart_needed
                .iter()
                .map(|key| (*key).to_owned())
                .collect();
            let response = protocol::ReloadResponse {
                plugins,
                settings: report.settings,
                restart,
            };
            (response, String::new())
        }
        Err(error) => (protocol::ReloadResponse::default(), error.to_string()),
    };
    session.outbox.reply(seq, &error, Some(&body)).await;
    Ok(Flow::Continue)
}

// --- Jobs (our extension): the plugins' long jobs on this agent.

/// How long `job-kill` waits for the killed job to end before replying with its record.
const JOB_KILL_WAIT: Duration = Duration::from_secs(5);

fn job_record(record: serf_plugins::jobs::JobRecord) -> protocol::Job {
    protocol::Job {
        arg: record.arg,
        ended_ms: record.ended_ms,
        error: record.error,
        exit_status: record.exit_status,
        id: u64::from(record.id),
        name: record.name,
        output: record.output.into(),
        plugin: record.plugin,
        started_ms: record.started_ms,
        state: record.state.as_str().to_owned(),
        command: record.command,
    }
}

/// `jobs-list`: every job record, by id.
pub(super) async fn jobs_list(
    session: &mut Session,
    seq: u64,
) -> Result<Flow, protocol::FrameError> {
    let jobs = session
        .agent
        .jobs()
        .list()
        .into_iter()
        .map(job_record)
        .collect();
    let body = protocol::JobsResponse { jobs };
    session.outbox.reply(seq, "", Some(&body)).await;
    Ok(Flow::Continue)
}

/// `job-show`, `job-kill` (replies once the job has ended, or after [`JOB_KILL_WAIT`]) and
/// `job-reap` (`ID` 0: every ended job).
pub(super) async fn job(
    session: &mut Session,
    seq: u64,
    command: &str,
    request: protocol::JobRequest,
) -> Result<Flow, protocol::FrameError> {
    let jobs = session.agent.jobs().clone();
    // Ids above u32 name no job.
    let id = u32::try_from(request.id).unwrap_or(u32::MAX);
    if command == protocol::command::JOB_REAP {
        let reaped = jobs.reap((request.id != 0).then_some(id), None);
        let (reaped, error) = match reaped {
            Ok(ids) => (ids.into_iter().map(u64::from).collect(), String::new()),
            Err(error) => (Vec::new(), error.to_string()),
        };
        let body = protocol::JobReapResponse { reaped };
        session.outbox.reply(seq, &error, Some(&body)).await;
        return Ok(Flow::Continue);
    }
    let record = if command == protocol::command::JOB_KILL {
        match jobs.kill(id, None) {
            Ok(()) => jobs.wait_ended(id, JOB_KILL_WAIT).await,
            Err(error) => Err(error),
        }
    } else {
        jobs.get(id, None)
    };
    let (body, error) = match record {
        Ok(record) => (job_record(record), String::new()),
        Err(error) => (protocol::Job::default(), error.to_string()),
    };
    let body = protocol::JobResponse { job: body };
    session.outbox.reply(seq, &error, Some(&body)).await;
    Ok(Flow::Continue)
}

// --- Plugins (our extension): the live view of this agent's plugins.

/// A plugin's counters as its `plugin:NAME` section of `stats` shows them (after `state`,
/// `events`, `sha256`, `path` and `capabilities`), in that order.
fn plugin_counters(plugin: &PluginStatsSnapshot) -> Vec<(&'static str, String)> {
    let duration = |d: Duration| format!("{d:?}");
    let mut counters = vec![
        ("offered", plugin.offered.to_string()),
        ("handled", plugin.handled.to_string()),
        ("errors", plugin.errors.to_string()),
        ("traps", plugin.traps.to_string()),
        ("timeouts", plugin.timeouts.to_string()),
        ("fuel_exhausted", plugin.fuel_exhausted.to_string()),
        ("memory_exceeded", plugin.memory_exceeded.to_string()),
        ("dropped", plugin.dropped.to_string()),
        ("expired", plugin.expired.to_string()),
        ("skipped", plugin.skipped.to_string()),
        ("starts", plugin.starts.to_string()),
        ("start_failures", plugin.start_failures.to_string()),
        ("queue_depth", plugin.queue_depth.to_string()),
        ("queue_capacity", plugin.queue_capacity.to_string()),
        ("fuel_used", plugin.fuel_used.to_string()),
        ("latency_p50", duration(plugin.latency_p50)),
        ("latency_p99", duration(plugin.latency_p99)),
        ("reloads", plugin.reloads.to_string()),
        ("reload_failures", plugin.reload_failures.to_string()),
        ("last_reload_error", plugin.last_reload_error.clone()),
        ("jobs", plugin.jobs.to_string()),
        ("discarded", plugin.discarded.to_string()),
        (
            "rate_limited_messages",
            plugin.rate_limited_messages.to_string(),
        ),
        ("rate_limited_logs", plugin.rate_limited_logs.to_string()),
        (
            "rate_limited_output",
            plugin.rate_limited_output.to_string(),
        ),
        ("refused_responses", plugin.refused_responses.to_string()),
    ];
    // Granted commands (ABI v1.1): what is granted, then how it was used.
    counters.push(("commands", plugin.commands.clone()));
    counters.extend(
        plugin
            .command_counters
            .iter()
            .map(|(key, value)| (*key, value.to_string())),
    );
    counters
}

/// A plugin's budgets by their `serf.toml` keys, in the units `serf.toml` takes.
fn plugin_limits(limits: &serf_plugins::Limits) -> BTreeMap<String, String> {
    let duration = |d: Duration| humantime::format_duration(d).to_string();
    [
        ("fuel_per_event", limits.fuel_per_event.to_string()),
        ("fuel_init", limits.fuel_init.to_string()),
        (
            "max_memory_mib",
            (limits.max_memory_bytes >> 20).to_string(),
        ),
        ("event_timeout", duration(limits.event_timeout)),
        ("queue_capacity", limits.queue_capacity.to_string()),
        ("job_fuel", limits.job_fuel.to_string()),
        ("job_timeout", duration(limits.job_timeout)),
        (
            "job_max_memory_mib",
            (limits.job_max_memory_bytes >> 20).to_string(),
        ),
        ("max_jobs", limits.max_jobs.to_string()),
        (
            "max_consecutive_traps",
            limits.max_consecutive_traps.to_string(),
        ),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_owned(), value))
    .collect()
}

/// The RPC view of one plugin's snapshot.
fn plugin_view(plugin: PluginStatsSnapshot) -> protocol::Plugin {
    let counters = plugin_counters(&plugin)
        .into_iter()
        .map(|(key, value)| (key.to_owned(), value))
        .chain(plugin.effects.iter().cloned())
        .collect();
    let capabilities = if plugin.capabilities == "none" {
        Vec::new()
    } else {
        plugin.capabilities.split(',').map(str::to_owned).collect()
    };
    protocol::Plugin {
        capabilities,
        counters,
        dirs: plugin
            .dirs
            .iter()
            .map(|(guest, host)| (guest.clone(), host.display().to_string()))
            .collect(),
        env_keys: plugin.env_keys.clone(),
        events: plugin.filter.clone(),
        limits: plugin_limits(&plugin.limits),
        name: plugin.name.clone(),
        path: plugin.path.display().to_string(),
        sha256: plugin.sha256.clone(),
        state: plugin.state,
    }
}

/// `plugin-list`: every configured plugin, by name.
pub(super) async fn plugin_list(
    session: &mut Session,
    seq: u64,
) -> Result<Flow, protocol::FrameError> {
    let plugins = session
        .agent
        .plugins()
        .stats()
        .into_iter()
        .map(plugin_view)
        .collect();
    let body = protocol::PluginsResponse { plugins };
    session.outbox.reply(seq, "", Some(&body)).await;
    Ok(Flow::Continue)
}

/// `plugin-status`: one plugin; an unknown name is the error.
pub(super) async fn plugin_status(
    session: &mut Session,
    seq: u64,
    request: protocol::PluginRequest,
) -> Result<Flow, protocol::FrameError> {
    let found = session
        .agent
        .plugins()
        .stats()
        .into_iter()
        .find(|plugin| plugin.name == request.name);
    let (plugin, error) = match found {
        Some(plugin) => (plugin_view(plugin), String::new()),
        None => (
            protocol::Plugin::default(),
            format!("no plugin named {:?} is configured", request.name),
        ),
    };
    let body = protocol::PluginResponse { plugin };
    session.outbox.reply(seq, &error, Some(&body)).await;
    Ok(Flow::Continue)
}

/// `plugin-state` (ABI v1.2): a plugin's stored keys, or one value. The agent holds the
/// database, so it reads it for the client; an unknown plugin or key is the error.
pub(super) async fn plugin_state(
    session: &mut Session,
    seq: u64,
    request: protocol::PluginStateRequest,
) -> Result<Flow, protocol::FrameError> {
    let plugins = session.agent.plugins();
    let configured = plugins.stats().iter().any(|p| p.name == request.name);
    let effects = plugins.effects();
    let outcome = tokio::task::spawn_blocking(move || {
        let not_configured = || format!("no plugin named {:?} is configured", request.name);
        if !configured {
            return Err(not_configured());
        }
        let store = effects
            .ok_or_else(not_configured)?
            .state_of(&request.name)
            .map_err(|error| error.to_string())?
            .ok_or_else(|| format!("plugin {:?} has stored nothing", request.name))?;
        let (bytes, key_count) = store.totals();
        let mut response = protocol::PluginStateResponse {
            bytes,
            key_count,
            ..Default::default()
        };
        if request.key.is_empty() {
            let keys = store
                .list(&serf_plugin_sdk::abi::StateList {
                    prefix: request.prefix.into_bytes(),
                    ..Default::default()
                })
                .map_err(|error| error.to_string())?;
            response.keys = keys
                .keys
                .iter()
                .map(|key| String::from_utf8_lossy(key).into_owned())
                .collect();
            response.more = keys.more;
        } else {
            let value = store
                .get(request.key.as_bytes())
                .map_err(|error| format!("key {:?}: {error}", request.key))?;
            response.value = Some(value);
        }
        Ok(response)
    })
    .await
    .unwrap_or_else(|_| Err("the agent is shutting down".to_owned()));
    let (body, error) = match outcome {
        Ok(body) => (body, String::new()),
        Err(error) => (protocol::PluginStateResponse::default(), error),
    };
    session.outbox.reply(seq, &error, Some(&body)).await;
    Ok(Flow::Continue)
}

/// The coordinate the agent holds for a node (its own included); for an unknown node `Ok` is
/// false and the coordinate all zero, as Serf answers.
pub(super) async fn get_coordinate(
    session: &mut Session,
    seq: u64,
    request: protocol::CoordinateRequest,
) -> Result<Flow, protocol::FrameError> {
    let (found, error) = match session.agent.coordinate(request.node).await {
        Ok(found) => (found, String::new()),
        Err(error) => (None, agent_error(&error)),
    };
    let body = match found {
        Some(coordinate) => protocol::CoordinateResponse {
            coord: protocol::Coordinate {
                adjustment: coordinate.adjustment,
                error: coordinate.error,
                height: coordinate.height,
                vec: coordinate.vec,
            },
            ok: true,
        },
        None => protocol::CoordinateResponse::default(),
    };
    session.outbox.reply(seq, &error, Some(&body)).await;
    Ok(Flow::Continue)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_limits_use_serf_toml_keys_and_units() {
        let limits = plugin_limits(&serf_plugins::Limits::DEFAULT);
        assert_eq!(limits["max_memory_mib"], "64");
        assert_eq!(limits["event_timeout"], "2s");
        assert_eq!(limits["job_timeout"], "15m");
        assert_eq!(limits["fuel_per_event"], "1000000000");
        assert_eq!(limits.len(), 10);
    }
}
