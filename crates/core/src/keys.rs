//! Serf's own queries (reference 3.9, 3.13): key management across the cluster and name-conflict
//! resolution.
//!
//! The core queues every `_serf_*` query it processes (except `_serf_ping`, which wants only
//! the ack) and [`Serf`] answers them here, since changing the keyring needs the memberlist that
//! owns it. Asking the cluster is [`Serf::key_query`]; a [`KeyCollector`] turns the answers into
//! Serf's key response numbers. Writing the keyring file is the agent's job: after a change the
//! answer waits for [`Serf::keyring_written`]. A lost name-conflict vote shuts this node down
//! ([`Serf::is_shutdown`]); the agent then stops. No I/O here.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Instant;

use super::wire::{ConflictResponse, KeyRequest, KeyResponse, MessageType, QueryMsg};
use super::{
    INTERNAL_QUERY_PREFIX, NodeName, PING_QUERY, QueryError, QueryKey, QueryOutput, QueryParams,
    RespondError, Serf,
};
use serf_gossip::keyring::encode_key;

/// `_serf_conflict`: who do you think holds this name?
pub const CONFLICT_QUERY: &str = "_serf_conflict";

/// The smallest encoded key in a list response; the list starts being cut at
/// `query_response_size_limit / MIN_ENCODED_KEY_BYTES` keys (Serf's rule).
const MIN_ENCODED_KEY_BYTES: usize = 25;

/// The four key commands (RPC `install-key`, `use-key`, `remove-key`, `list-keys`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyCommand {
    Install,
    Use,
    Remove,
    List,
}

impl KeyCommand {
    /// The internal query that carries it.
    pub fn query_name(self) -> &'static str {
        match self {
            KeyCommand::Install => "_serf_install-key",
            KeyCommand::Use => "_serf_use-key",
            KeyCommand::Remove => "_serf_remove-key",
            KeyCommand::List => "_serf_list-keys",
        }
    }

    /// The command for an RPC command name.
    pub fn from_rpc(command: &str) -> Option<KeyCommand> {
        Some(match command {
            "install-key" => KeyCommand::Install,
            "use-key" => KeyCommand::Use,
            "remove-key" => KeyCommand::Remove,
            "list-keys" => KeyCommand::List,
            _ => return None,
        })
    }

    fn from_query_name(name: &str) -> Option<KeyCommand> {
        [
            KeyCommand::Install,
            KeyCommand::Use,
            KeyCommand::Remove,
            KeyCommand::List,
        ]
        .into_iter()
        .find(|command| command.query_name() == name)
    }

    /// What the querying agent logs when it starts, as Serf's agent does.
    pub fn initiating(self) -> &'static str {
        match self {
            KeyCommand::Install => "Initiating key installation",
            KeyCommand::Use => "Initiating primary key change",
            KeyCommand::Remove => "Initiating key removal",
            KeyCommand::List => "Initiating key listing",
        }
    }
}

/// A key query this node sent: its answers come out of [`Serf::poll_query_output`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyQuery {
    /// Which query.
    pub key: QueryKey,
    /// Members neither dead nor left when it went out: the answers to wait for.
    pub num_nodes: usize,
}

/// Serf's key response: what a key command achieved across the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeySummary {
    /// Nodes that should answer.
    pub num_nodes: usize,
    /// Nodes that answered.
    pub num_resp: usize,
    /// Nodes that answered with a failure (or garbage).
    pub num_err: usize,
    /// Node to its message: every failure, and successes that came with a message.
    pub messages: BTreeMap<NodeName, String>,
    /// Base64 key to the number of nodes holding it; `Some` only for `list-keys`.
    pub keys: Option<BTreeMap<String, usize>>,
}

impl KeySummary {
    /// Serf's error for the command: some nodes failed, or some did not answer in time.
    pub fn error(&self) -> Option<String> {
        if self.num_err != 0 {
            Some(format!(
                "{}/{} nodes reported failure",
                self.num_err, self.num_nodes
            ))
        } else if self.num_resp != self.num_nodes {
            Some(format!(
                "{}/{} nodes reported success",
                self.num_resp, self.num_nodes
            ))
        } else {
            None
        }
    }
}

/// Collects the answers to a key query until every expected node answered or the query ended.
#[derive(Debug, Clone)]
pub struct KeyCollector {
    summary: KeySummary,
    done: bool,
}

impl KeyCollector {
    /// Waits for `num_nodes` answers.
    pub fn new(command: KeyCommand, num_nodes: usize) -> KeyCollector {
        KeyCollector {
            summary: KeySummary {
                num_nodes,
                keys: (command == KeyCommand::List).then(BTreeMap::new),
                ..KeySummary::default()
            },
            done: false,
        }
    }

    /// Takes one output of the query; returns whether the collection is complete.
    pub fn handle_output(&mut self, output: &QueryOutput) -> bool {
        if self.done {
            return true;
        }
        match output {
            QueryOutput::Ack { .. } => {}
            QueryOutput::Done => self.done = true,
            QueryOutput::Response { from, payload } => {
                self.handle_response(from, payload);
                self.done = self.summary.num_resp == self.summary.num_nodes;
            }
        }
        self.done
    }

    fn handle_response(&mut self, from: &str, payload: &[u8]) {
        let summary = &mut self.summary;
        summary.num_resp += 1;
        if payload.first() != Some(&(MessageType::KeyResponse as u8)) {
            let message = format!("Invalid key query response type: {}", go_bytes(payload));
            summary.messages.insert(from.to_owned(), message);
            summary.num_err += 1;
            return;
        }
        let response = match KeyResponse::decode(payload) {
            Ok(response) => response,
            Err(error) => {
                tracing::debug!(node = from, %error, "undecodable key response");
                let message = format!("Failed to decode key query response: {}", go_bytes(payload));
                summary.messages.insert(from.to_owned(), message);
                summary.num_err += 1;
                return;
            }
        };
        if !response.result {
            summary
                .messages
                .insert(from.to_owned(), response.message.clone());
            summary.num_err += 1;
        } else if !response.message.is_empty() {
            tracing::warn!("{}", response.message);
            summary
                .messages
                .insert(from.to_owned(), response.message.clone());
        }
        if let Some(keys) = &mut summary.keys {
            for key in response.keys.into_iter().flatten() {
                *keys.entry(key).or_default() += 1;
            }
        }
    }

    /// Whether every expected node answered or the query ended.
    pub fn is_complete(&self) -> bool {
        self.done
    }

    /// What was collected.
    pub fn finish(self) -> KeySummary {
        self.summary
    }
}

/// A byte slice as Go's `%v` prints it: `[8 129 164]`.
fn go_bytes(bytes: &[u8]) -> String {
    let items: Vec<String> = bytes.iter().map(u8::to_string).collect();
    format!("[{}]", items.join(" "))
}

/// The keyring changed on a key query and a keyring file is configured: the agent writes
/// `contents` and reports with [`Serf::keyring_written`]; the answer waits until then.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyringWrite {
    /// The key query that changed the keyring.
    pub query: QueryKey,
    /// The whole file: a JSON array of base64 keys, primary first.
    pub contents: String,
}

/// A `_serf_*` query this node processed and answers once.
#[derive(Debug, Clone)]
pub(super) struct InternalQuery {
    key: QueryKey,
    name: String,
    payload: Vec<u8>,
    querier: SocketAddr,
    relay_factor: u8,
    deadline: Instant,
}

/// Our own name-conflict vote while it runs.
#[derive(Debug, Clone, Copy)]
struct ConflictVote {
    key: QueryKey,
    responses: usize,
    matching: usize,
}

/// What the core keeps for Serf's own queries.
#[derive(Debug, Default)]
pub(super) struct Internal {
    queries: VecDeque<InternalQuery>,
    /// Another node claims our name; a vote starts at the next flush.
    conflict_detected: bool,
    vote: Option<ConflictVote>,
    writes: VecDeque<KeyringWrite>,
    /// Answers waiting for the keyring file.
    awaiting_write: HashMap<QueryKey, (InternalQuery, KeyResponse)>,
    shutdown: bool,
}

impl Internal {
    /// Called by the core for every `_serf_*` query that passed its filters.
    pub(super) fn take_query(&mut self, now: Instant, query: &QueryMsg, querier: SocketAddr) {
        if query.name == PING_QUERY {
            return;
        }
        self.queries.push_back(InternalQuery {
            key: QueryKey {
                ltime: query.ltime,
                id: query.id,
            },
            name: query.name.clone(),
            payload: query.payload.clone(),
            querier,
            relay_factor: query.relay_factor,
            deadline: now + query.timeout,
        });
    }

    /// Memberlist saw another node at `other` claiming our own name.
    pub(super) fn conflict_detected(&mut self, other: SocketAddr) {
        tracing::error!(
            "Node name conflicts with another node at {other}. Names must be unique! (Resolution enabled: true)"
        );
        self.conflict_detected = true;
    }
}

impl Serf {
    /// Asks every member to run a key command (`key` is ignored for [`KeyCommand::List`]);
    /// this node answers too. Feed the answers to a [`KeyCollector`].
    pub fn key_query(
        &mut self,
        now: Instant,
        command: KeyCommand,
        key: &[u8],
    ) -> Result<KeyQuery, QueryError> {
        self.check_alive().map_err(QueryError::NotAlive)?;
        let request = KeyRequest {
            key: if command == KeyCommand::List {
                Vec::new()
            } else {
                key.to_vec()
            },
        };
        let params = QueryParams {
            name: command.query_name().to_owned(),
            payload: request.encode(),
            ..QueryParams::default()
        };
        let key = self.send_query(now, params)?;
        let num_nodes = self.num_alive();
        self.flush(now);
        Ok(KeyQuery { key, num_nodes })
    }

    /// The next keyring file to write.
    pub fn poll_keyring_write(&mut self) -> Option<KeyringWrite> {
        self.core_mut().internal.writes.pop_front()
    }

    /// The agent wrote (or failed to write, `Err` holding Serf's message) the keyring file for
    /// `query`; the answer to that query goes out now.
    pub fn keyring_written(&mut self, now: Instant, query: QueryKey, result: Result<(), String>) {
        let Some((internal, mut response)) = self.core_mut().internal.awaiting_write.remove(&query)
        else {
            return;
        };
        if let Err(message) = result {
            tracing::error!("Failed to write keyring file: {message}");
            response.result = false;
            response.message = message;
        } else {
            response.result = true;
        }
        self.send_key_response(now, &internal, response);
        self.flush(now);
    }

    /// Whether this node lost a name-conflict vote and shut down; the agent should stop.
    pub fn is_shutdown(&self) -> bool {
        self.core().internal.shutdown
    }

    /// Runs what Serf's own queries need: a conflict vote to start, queries to answer, vote
    /// answers to count. Called from `flush`, before the outbox goes out.
    pub(super) fn handle_internal(&mut self, now: Instant) {
        self.start_conflict_vote(now);
        while let Some(query) = self.core_mut().internal.queries.pop_front() {
            let name = query.name.as_str();
            if name == CONFLICT_QUERY {
                self.answer_conflict(now, &query);
            } else if let Some(command) = KeyCommand::from_query_name(name) {
                self.answer_key_query(now, command, query);
            } else {
                let short = name.strip_prefix(INTERNAL_QUERY_PREFIX).unwrap_or(name);
                tracing::warn!("Unhandled internal query '{short}'");
            }
        }
        self.count_conflict_votes();
    }

    fn answer_key_query(&mut self, now: Instant, command: KeyCommand, query: InternalQuery) {
        let mut response = KeyResponse::default();
        let encrypted = self.ml.keyring().is_some();
        if command == KeyCommand::List {
            match self.ml.keyring() {
                None => {
                    response.message = "Keyring is empty (encryption not enabled)".to_owned();
                    tracing::error!("{}", response.message);
                }
                Some(keyring) => {
                    tracing::info!("Received list-keys query");
                    response.keys = Some(keyring.keys().iter().map(|k| encode_key(k)).collect());
                    response.primary_key = encode_key(keyring.primary());
                    response.result = true;
                }
            }
            self.send_key_response(now, &query, response);
            return;
        }
        let request = match KeyRequest::decode(&query.payload) {
            Ok(request) => request,
            Err(error) => {
                tracing::error!("Failed to decode key request: {error}");
                self.send_key_response(now, &query, response);
                return;
            }
        };
        if !encrypted {
            response.message = "No keyring to modify (encryption not enabled)".to_owned();
            tracing::error!("{}", response.message);
            self.send_key_response(now, &query, response);
            return;
        }
        let keyring = self.ml.keyring_mut().expect("checked: encryption is on");
        let (verb, result) = match command {
            KeyCommand::Install => ("install key", keyring.add_key(request.key)),
            KeyCommand::Use => ("change primary key", keyring.use_key(&request.key)),
            _ => ("remove key", keyring.remove_key(&request.key)),
        };
        tracing::info!(
            "Received {} query",
            command
                .query_name()
                .trim_start_matches(INTERNAL_QUERY_PREFIX)
        );
        if let Err(error) = result {
            tracing::error!("Failed to {verb}: {error}");
            response.message = error.to_string();
            self.send_key_response(now, &query, response);
            return;
        }
        let contents = keyring.to_file_contents();
        if self.core().config.persist_keyring {
            let internal = &mut self.core_mut().internal;
            internal.writes.push_back(KeyringWrite {
                query: query.key,
                contents,
            });
            internal.awaiting_write.insert(query.key, (query, response));
            return;
        }
        response.result = true;
        self.send_key_response(now, &query, response);
    }

    /// Sends a key response, cutting a key list until it fits the response limit as Serf does.
    fn send_key_response(
        &mut self,
        now: Instant,
        query: &InternalQuery,
        mut response: KeyResponse,
    ) {
        let limit = self.core().config.limits.query_response_size_limit;
        let from = self.node_name().to_owned();
        let mut payload = response.encode();
        if let Some(all) = response.keys.clone() {
            let fits =
                |payload: &[u8]| super::encoded_response_len(query.key, &from, payload) <= limit;
            let mut cut = limit / MIN_ENCODED_KEY_BYTES;
            while !fits(&payload) {
                response.keys = Some(all[..cut.min(all.len())].to_vec());
                response.message = format!(
                    "truncated key list response, showing first {cut} of {} keys",
                    all.len()
                );
                payload = response.encode();
                if cut == 0 {
                    tracing::error!("Failed to truncate response so that it fits into message");
                    return;
                }
                cut -= 1;
            }
            if response
                .keys
                .as_ref()
                .is_some_and(|keys| keys.len() < all.len())
            {
                tracing::warn!("{}", response.message);
            }
        }
        if let Err(error) = self.respond_internal(now, query, payload) {
            tracing::error!("Failed to respond to key query: {error}");
        }
    }

    fn answer_conflict(&mut self, now: Instant, query: &InternalQuery) {
        let node = String::from_utf8_lossy(&query.payload).into_owned();
        if node == self.node_name() {
            return;
        }
        tracing::debug!("Got conflict resolution query for '{node}'");
        let member = self
            .core()
            .members
            .get(&node)
            .map(|state| state.member.clone());
        let payload = ConflictResponse { member }.encode();
        if let Err(error) = self.respond_internal(now, query, payload) {
            tracing::error!("Failed to respond to conflict query: {error}");
        }
    }

    /// Answers an internal query: once, before its deadline, within the size limit.
    fn respond_internal(
        &mut self,
        now: Instant,
        query: &InternalQuery,
        payload: Vec<u8>,
    ) -> Result<(), RespondError> {
        if now > query.deadline {
            return Err(RespondError::PastDeadline);
        }
        let core = self.core_mut();
        let limit = core.config.limits.query_response_size_limit;
        let response = super::wire::QueryResponseMsg {
            ltime: query.key.ltime,
            id: query.key.id,
            from: core.config.node_name.clone(),
            flags: 0,
            payload: Some(payload),
        };
        if response.encode().len() > limit {
            return Err(RespondError::TooLarge(limit));
        }
        core.send_response(query.querier, query.relay_factor, response);
        Ok(())
    }

    /// Starts the `_serf_conflict` vote about our name, once at a time.
    fn start_conflict_vote(&mut self, now: Instant) {
        let internal = &mut self.core_mut().internal;
        if !std::mem::take(&mut internal.conflict_detected)
            || internal.vote.is_some()
            || internal.shutdown
            || self.check_alive().is_err()
        {
            return;
        }
        let params = QueryParams {
            name: CONFLICT_QUERY.to_owned(),
            payload: self.node_name().as_bytes().to_vec(),
            ..QueryParams::default()
        };
        match self.send_query(now, params) {
            Ok(key) => {
                self.core_mut().internal.vote = Some(ConflictVote {
                    key,
                    responses: 0,
                    matching: 0,
                });
            }
            Err(error) => tracing::error!("Failed to start name resolution query: {error}"),
        }
    }

    /// Counts the answers to our conflict vote; at its end, stays or shuts down.
    fn count_conflict_votes(&mut self) {
        let local = self.ml.local_node().addr;
        let core = self.core_mut();
        let Some(mut vote) = core.internal.vote else {
            return;
        };
        let mut finished = false;
        core.query_outputs.retain(|(key, output)| {
            if *key != vote.key {
                return true;
            }
            match output {
                QueryOutput::Ack { .. } => {}
                QueryOutput::Done => finished = true,
                QueryOutput::Response { payload, .. } => {
                    if payload.first() != Some(&(MessageType::ConflictResponse as u8)) {
                        tracing::error!(
                            "Invalid conflict query response type: {}",
                            go_bytes(payload)
                        );
                        return false;
                    }
                    match ConflictResponse::decode(payload) {
                        Ok(response) => {
                            vote.responses += 1;
                            if response.member.is_some_and(|member| member.addr == local) {
                                vote.matching += 1;
                            }
                        }
                        Err(error) => {
                            tracing::error!("Failed to decode conflict query response: {error}")
                        }
                    }
                }
            }
            false
        });
        if !finished {
            core.internal.vote = Some(vote);
            return;
        }
        core.internal.vote = None;
        let (matching, responses) = (vote.matching, vote.responses);
        if matching > responses / 2 {
            tracing::info!("majority in name conflict resolution [{matching} / {responses}]");
            return;
        }
        tracing::warn!("minority in name conflict resolution, quitting [{matching} / {responses}]");
        if !self.has_left() {
            tracing::warn!("Shutdown without a Leave");
        }
        self.core_mut().internal.shutdown = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(from: &str, response: &KeyResponse) -> QueryOutput {
        QueryOutput::Response {
            from: from.into(),
            payload: response.encode(),
        }
    }

    fn ok() -> KeyResponse {
        KeyResponse {
            result: true,
            ..KeyResponse::default()
        }
    }

    fn failed(message: &str) -> KeyResponse {
        KeyResponse {
            message: message.into(),
            ..KeyResponse::default()
        }
    }

    #[test]
    fn key_commands_map_to_rpc_and_query_names() {
        for (rpc, query) in [
            ("install-key", "_serf_install-key"),
            ("use-key", "_serf_use-key"),
            ("remove-key", "_serf_remove-key"),
            ("list-keys", "_serf_list-keys"),
        ] {
            let command = KeyCommand::from_rpc(rpc).unwrap();
            assert_eq!(command.query_name(), query);
            assert_eq!(KeyCommand::from_query_name(query), Some(command));
        }
        assert_eq!(KeyCommand::from_rpc("keys"), None);
        assert_eq!(KeyCommand::from_query_name("_serf_conflict"), None);
    }

    #[test]
    fn collector_completes_when_every_node_answered_and_reports_success() {
        let mut collector = KeyCollector::new(KeyCommand::Install, 2);
        assert!(!collector.handle_output(&QueryOutput::Ack { from: "a".into() }));
        assert!(!collector.handle_output(&response("a", &ok())));
        assert!(collector.handle_output(&response("b", &ok())));
        assert!(collector.is_complete());
        let summary = collector.finish();
        assert_eq!(
            (summary.num_nodes, summary.num_resp, summary.num_err),
            (2, 2, 0)
        );
        assert!(summary.messages.is_empty());
        assert_eq!(summary.keys, None, "only list-keys counts keys");
        assert_eq!(summary.error(), None);
    }

    #[test]
    fn failures_and_garbage_are_counted_with_serfs_messages() {
        let mut collector = KeyCollector::new(KeyCommand::Remove, 4);
        collector.handle_output(&response(
            "a",
            &failed("Removing the primary key is not allowed"),
        ));
        collector.handle_output(&QueryOutput::Response {
            from: "b".into(),
            payload: vec![6, 0xc0],
        });
        collector.handle_output(&QueryOutput::Response {
            from: "c".into(),
            payload: vec![8, 0x81],
        });
        assert!(collector.handle_output(&response("d", &ok())));
        let summary = collector.finish();
        assert_eq!((summary.num_resp, summary.num_err), (4, 3));
        assert_eq!(
            summary.messages["a"],
            "Removing the primary key is not allowed"
        );
        assert_eq!(
            summary.messages["b"],
            "Invalid key query response type: [6 192]"
        );
        assert_eq!(
            summary.messages["c"],
            "Failed to decode key query response: [8 129]"
        );
        assert!(!summary.messages.contains_key("d"));
        assert_eq!(
            summary.error().as_deref(),
            Some("3/4 nodes reported failure")
        );
    }

    #[test]
    fn silent_nodes_end_at_done_as_partial_success() {
        let mut collector = KeyCollector::new(KeyCommand::Use, 3);
        collector.handle_output(&response("a", &ok()));
        assert!(!collector.is_complete());
        assert!(collector.handle_output(&QueryOutput::Done));
        assert!(
            collector.handle_output(&response("late", &failed("x"))),
            "nothing counts after the end"
        );
        let summary = collector.finish();
        assert_eq!((summary.num_resp, summary.num_err), (1, 0));
        assert_eq!(
            summary.error().as_deref(),
            Some("1/3 nodes reported success")
        );
    }

    #[test]
    fn list_counts_each_key_and_keeps_success_messages() {
        let mut collector = KeyCollector::new(KeyCommand::List, 3);
        let both = KeyResponse {
            keys: Some(vec!["K1".into(), "K2".into()]),
            primary_key: "K1".into(),
            ..ok()
        };
        let truncated = KeyResponse {
            keys: Some(vec!["K1".into()]),
            message: "truncated key list response, showing first 1 of 2 keys".into(),
            ..ok()
        };
        collector.handle_output(&response("a", &both));
        collector.handle_output(&response("b", &truncated));
        collector.handle_output(&response(
            "c",
            &failed("Keyring is empty (encryption not enabled)"),
        ));
        let summary = collector.finish();
        assert_eq!(
            summary.keys,
            Some(BTreeMap::from([("K1".into(), 2), ("K2".into(), 1)]))
        );
        assert_eq!(summary.num_err, 1);
        assert_eq!(summary.messages.len(), 2);
        assert!(summary.messages["b"].starts_with("truncated"));
        assert_eq!(
            summary.error().as_deref(),
            Some("1/3 nodes reported failure")
        );
        let empty = KeyCollector::new(KeyCommand::List, 1).finish();
        assert_eq!(empty.keys, Some(BTreeMap::new()));
    }
}

/// Key rotation and name conflicts across `Serf` cores wired together in memory.
#[cfg(test)]
mod cluster_tests {
    use std::time::Duration;

    use super::*;
    use crate::{Config, MemberStatus, Tags};
    use serf_gossip::Keyring;
    use serf_gossip::keyring::encode_key;
    use serf_gossip::sim::{Sim, run_seeded, sim_addr};

    const OLD: [u8; 32] = [1; 32];
    const NEW: [u8; 16] = [2; 16];

    fn config(name: &str, at: SocketAddr, keys: Option<Vec<Vec<u8>>>) -> Config {
        let mut config = Config::lan(name.into(), at, Tags::new());
        config.memberlist.keyring = keys.map(|keys| Keyring::new(keys).unwrap());
        config
    }

    /// `n` nodes named `n<i>` with `keys`, joined to n0 on a lossless, zero-latency network.
    fn cluster(seed: u64, n: usize, keys: Option<Vec<Vec<u8>>>) -> Sim<Serf> {
        let mut sim = Sim::with_peers(seed, n, |i, seed, start| {
            Serf::new(
                config(&format!("n{i}"), sim_addr(i), keys.clone()),
                seed,
                start,
            )
        })
        .lossless();
        for i in 1..n {
            sim.join(i, 0);
        }
        sim.run_for(Duration::from_secs(2));
        sim
    }

    /// A newcomer with `config` (its address is the simulator's).
    fn add(sim: &mut Sim<Serf>, name: &str, keys: Option<Vec<Vec<u8>>>) -> usize {
        sim.add_peer(|i, seed, now| Serf::new(config(name, sim_addr(i), keys), seed, now))
    }

    /// Runs a key command from node `i` until the collector is done.
    fn keys(sim: &mut Sim<Serf>, i: usize, command: KeyCommand, key: &[u8]) -> KeySummary {
        let query = sim.act(i, |serf, now| serf.key_query(now, command, key).unwrap());
        let mut collector = KeyCollector::new(command, query.num_nodes);
        for _ in 0..2000 {
            while let Some((key, output)) = sim.nodes[i].peer.poll_query_output() {
                if key == query.key && collector.handle_output(&output) {
                    return collector.finish();
                }
            }
            sim.run_for(Duration::from_millis(10));
        }
        panic!("the key query never finished");
    }

    fn alive(sim: &Sim<Serf>, i: usize) -> Vec<String> {
        sim.nodes[i]
            .peer
            .members()
            .filter(|m| m.status == MemberStatus::Alive)
            .map(|m| m.name.clone())
            .collect()
    }

    #[test]
    fn a_key_is_rotated_across_three_encrypted_nodes_and_the_cluster_stays_whole() {
        run_seeded(1, |seed| {
            let mut net = cluster(seed, 3, Some(vec![OLD.to_vec()]));
            let everyone = vec!["n0", "n1", "n2"];
            assert_eq!(alive(&net, 2), everyone);

            let installed = keys(&mut net, 0, KeyCommand::Install, &NEW);
            assert_eq!((installed.num_nodes, installed.num_resp), (3, 3));
            assert_eq!(installed.error(), None, "{installed:?}");
            let listed = keys(&mut net, 1, KeyCommand::List, &[]);
            assert_eq!(
                listed.keys,
                Some(BTreeMap::from([
                    (encode_key(&OLD), 3),
                    (encode_key(&NEW), 3)
                ]))
            );

            let used = keys(&mut net, 2, KeyCommand::Use, &NEW);
            assert_eq!(used.error(), None, "{used:?}");
            let refused = keys(&mut net, 0, KeyCommand::Remove, &NEW);
            assert_eq!(
                refused.error().as_deref(),
                Some("3/3 nodes reported failure")
            );
            assert_eq!(
                refused.messages["n1"],
                "Removing the primary key is not allowed"
            );
            let removed = keys(&mut net, 0, KeyCommand::Remove, &OLD);
            assert_eq!(removed.error(), None, "{removed:?}");
            for node in &net.nodes {
                assert_eq!(node.peer.keyring().unwrap().keys(), &[NEW.to_vec()]);
            }

            // Only the new key is left anywhere, and the nodes keep talking with it.
            net.run_for(Duration::from_secs(20));
            for i in 0..3 {
                assert_eq!(alive(&net, i), everyone, "node {i}");
            }
            let listed = keys(&mut net, 0, KeyCommand::List, &[]);
            assert_eq!(listed.keys, Some(BTreeMap::from([(encode_key(&NEW), 3)])));

            // A newcomer with only the new key joins; one with only the old key cannot.
            let stale = add(&mut net, "stale", Some(vec![OLD.to_vec()]));
            assert_eq!(net.join_and_wait(stale, sim_addr(1)).joined, 0);
            let fresh = add(&mut net, "fresh", Some(vec![NEW.to_vec()]));
            assert_eq!(net.join_and_wait(fresh, sim_addr(1)).joined, 1);
            net.run_for(Duration::from_secs(3));
            assert_eq!(alive(&net, 0), ["fresh", "n0", "n1", "n2"]);
        });
    }

    #[test]
    fn key_commands_fail_as_in_serf_and_change_nothing() {
        run_seeded(2, |seed| {
            let mut net = cluster(seed, 2, Some(vec![OLD.to_vec()]));
            let use_unknown = keys(&mut net, 0, KeyCommand::Use, &NEW);
            assert_eq!(
                use_unknown.messages["n1"],
                "Requested key is not in the keyring"
            );
            let bad_size = keys(&mut net, 0, KeyCommand::Install, &[1, 2, 3]);
            assert_eq!(
                bad_size.messages["n0"],
                "key size must be 16, 24 or 32 bytes"
            );
            assert_eq!(
                bad_size.error().as_deref(),
                Some("2/2 nodes reported failure")
            );
            let unknown_removal = keys(&mut net, 1, KeyCommand::Remove, &NEW);
            assert_eq!(
                unknown_removal.error(),
                None,
                "removing a missing key succeeds"
            );
            assert_eq!(net.nodes[1].peer.keyring().unwrap().keys(), &[OLD.to_vec()]);
        });
    }

    #[test]
    fn nodes_without_encryption_answer_as_serf_does() {
        run_seeded(3, |seed| {
            let mut net = cluster(seed, 2, None);
            let listed = keys(&mut net, 0, KeyCommand::List, &[]);
            assert_eq!(listed.keys, Some(BTreeMap::new()));
            assert_eq!(
                listed.messages["n1"],
                "Keyring is empty (encryption not enabled)"
            );
            assert_eq!(
                listed.error().as_deref(),
                Some("2/2 nodes reported failure")
            );
            for command in [KeyCommand::Install, KeyCommand::Use, KeyCommand::Remove] {
                let summary = keys(&mut net, 1, command, &NEW);
                assert_eq!(summary.num_err, 2);
                assert_eq!(
                    summary.messages["n0"],
                    "No keyring to modify (encryption not enabled)"
                );
            }
        });
    }

    #[test]
    fn a_change_is_answered_once_the_keyring_file_is_written() {
        let mut keyring = config("n0", sim_addr(0), Some(vec![OLD.to_vec()]));
        keyring.persist_keyring = true;
        let now = Instant::now();
        let serf = &mut Serf::new(keyring, 1, now);
        let query = serf.key_query(now, KeyCommand::Install, &NEW).unwrap();
        let write = serf.poll_keyring_write().expect("a keyring file to write");
        assert_eq!(write.query, query.key);
        assert_eq!(
            Keyring::load_file_contents(&write.contents).unwrap().keys(),
            &[OLD.to_vec(), NEW.to_vec()]
        );
        assert!(
            serf.poll_query_output().is_none(),
            "no answer before the write"
        );
        serf.keyring_written(now, query.key, Ok(()));
        let Some((_, QueryOutput::Response { payload, .. })) = serf.poll_query_output() else {
            panic!("no answer after the write")
        };
        assert!(KeyResponse::decode(&payload).unwrap().result);
        while serf.poll_query_output().is_some() {}

        let query = serf.key_query(now, KeyCommand::Use, &NEW).unwrap();
        let write = serf.poll_keyring_write().unwrap();
        let message = "Failed to write keyring file: open /k: permission denied";
        serf.keyring_written(now, write.query, Err(message.into()));
        let Some((key, QueryOutput::Response { payload, .. })) = serf.poll_query_output() else {
            panic!("no answer after the failed write")
        };
        assert_eq!(key, query.key);
        let response = KeyResponse::decode(&payload).unwrap();
        assert!(!response.result);
        assert_eq!(response.message, message);
        assert_eq!(serf.keyring().unwrap().primary(), &NEW, "the change stays");
    }

    #[test]
    fn a_long_key_list_is_cut_to_fit_the_response_limit() {
        let keys: Vec<Vec<u8>> = (0..60u8).map(|i| vec![i; 16]).collect();
        let now = Instant::now();
        let serf = &mut Serf::new(config("n0", sim_addr(0), Some(keys)), 1, now);
        serf.key_query(now, KeyCommand::List, &[]).unwrap();
        let Some((key, QueryOutput::Response { from, payload })) = serf.poll_query_output() else {
            panic!("no answer")
        };
        assert!(crate::encoded_response_len(key, &from, &payload) <= 1024);
        let response = KeyResponse::decode(&payload).unwrap();
        let shown = response.keys.unwrap().len();
        assert!((30..=40).contains(&shown), "{shown}");
        assert_eq!(
            response.message,
            format!("truncated key list response, showing first {shown} of 60 keys")
        );
        assert!(response.result);
    }

    #[test]
    fn a_newcomer_with_a_taken_name_loses_the_vote_and_shuts_down() {
        run_seeded(4, |seed| {
            let mut net = cluster(seed, 3, None);
            let impostor = add(&mut net, "n1", None);
            net.join(impostor, 0);
            net.run_for(Duration::from_secs(5));
            assert!(net.nodes[impostor].peer.is_shutdown());
            for i in 0..3 {
                assert!(!net.nodes[i].peer.is_shutdown(), "node {i}");
                let n1 = net.nodes[i]
                    .peer
                    .members()
                    .find(|m| m.name == "n1")
                    .unwrap();
                assert_eq!(n1.addr, sim_addr(1), "node {i} keeps the first n1");
            }
            assert_eq!(alive(&net, 0), ["n0", "n1", "n2"]);
        });
    }
}
