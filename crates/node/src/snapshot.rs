//! The agent's own files besides its config: Serf's snapshot file (`-snapshot`) and the tags
//! file (`-tags-file`).
//!
//! The snapshot is Serf's line format (reference 3.14), so Serf and this agent read each
//! other's files. The pure part ([`Record`], [`SnapshotState`], [`Recorder`]) parses, renders
//! and decides what to append and when to compact; it touches no file. The shell part
//! (`Snapshotter`) is opened once at start (the restore), then runs the file on a thread of
//! its own: the agent task hands it member changes with `try_send` (a full queue drops and
//! counts, as Serf's snapshotter does) and publishes its clocks through atomics, so it never
//! waits on the disk. Lines are flushed within [`FLUSH_INTERVAL`] and fsynced on a graceful
//! leave and at shutdown.
//!
//! The snapshot records what the core hands out before any coalescing: the clocks come from
//! the core's counters, member changes from its events.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::{BufWriter, Read as _, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::{Command, NodeError, NodeHandle, Shell};
use serf_core::{LamportTime, MemberEvent, MemberEventKind, NodeName, RestoredClocks, Tags};
use serf_gossip::JoinOutcome;

/// Buffered lines reach the file at least this often (Serf's flush interval).
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(500);
/// How often the clocks are checked for lines to write (Serf's clock update interval).
pub const CLOCK_UPDATE_INTERVAL: Duration = Duration::from_millis(500);
/// The file is never compacted below this size, in bytes (Serf's `snapshotSizeLimit`).
pub const MIN_COMPACT_BYTES: u64 = 128 * 1024;
/// Serf's estimate of the bytes one alive member costs in the file.
const BYTES_PER_NODE: u64 = 128;
/// The file is compacted once it holds this many times the estimate.
const COMPACTION_THRESHOLD: u64 = 2;
/// The compacted file is written beside the snapshot under this suffix, then renamed.
const COMPACT_SUFFIX: &str = ".compact";
/// After a failed append, compaction (which rewrites the file) is retried at most this often.
const ERROR_RECOVERY_INTERVAL: Duration = Duration::from_secs(30);
/// Member changes waiting for the writer before new ones are dropped (Serf's channel size).
pub const QUEUE_CAPACITY: usize = 2048;
/// How long shutdown waits for pending lines to reach the file.
const SHUTDOWN_FLUSH_TIMEOUT: Duration = Duration::from_millis(250);
/// How long the agent waits for the writer thread to finish at shutdown.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

// ---- the pure part ------------------------------------------------------------------------

/// One line of a snapshot file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// `alive: NAME ADDR`: the member joined (ADDR is `ip:port`, `[ip]:port` for IPv6).
    Alive {
        /// The member's name.
        name: NodeName,
        /// Its address as written.
        addr: String,
    },
    /// `not-alive: NAME`: the member left or failed.
    NotAlive {
        /// The member's name.
        name: NodeName,
    },
    /// `clock: N`: the member clock minus one.
    Clock(LamportTime),
    /// `event-clock: N`: the last user event's Lamport time.
    EventClock(LamportTime),
    /// `query-clock: N`: the last query's Lamport time.
    QueryClock(LamportTime),
    /// `leave`: this node left gracefully.
    Leave,
}

/// Why a snapshot line was skipped. Nothing was restored from it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    /// An `alive:` line without a space between name and address.
    #[error("failed to parse address: {0:?}")]
    Address(String),
    /// A clock line whose value is not a decimal number.
    #[error("failed to convert {kind} time: {value:?}")]
    Time {
        /// Which clock.
        kind: &'static str,
        /// The value as written.
        value: String,
    },
    /// A line of no known kind.
    #[error("unrecognized snapshot line: {0:?}")]
    Unrecognized(String),
}

impl Record {
    /// Parses one line (without its newline). `Ok(None)` for lines Serf skips silently:
    /// comments (`#...`) and `coordinate:` lines.
    pub fn parse(line: &str) -> Result<Option<Record>, LineError> {
        if let Some(info) = line.strip_prefix("alive: ") {
            // Split at the last space: names may contain spaces, addresses do not.
            let (name, addr) = info
                .rsplit_once(' ')
                .ok_or_else(|| LineError::Address(line.to_owned()))?;
            return Ok(Some(Record::Alive {
                name: name.to_owned(),
                addr: addr.to_owned(),
            }));
        }
        if let Some(name) = line.strip_prefix("not-alive: ") {
            return Ok(Some(Record::NotAlive {
                name: name.to_owned(),
            }));
        }
        for (prefix, kind, make) in [
            (
                "clock: ",
                "clock",
                Record::Clock as fn(LamportTime) -> Record,
            ),
            ("event-clock: ", "event clock", Record::EventClock),
            ("query-clock: ", "query clock", Record::QueryClock),
        ] {
            if let Some(value) = line.strip_prefix(prefix) {
                return parse_time(value)
                    .map(|time| Some(make(time)))
                    .ok_or_else(|| LineError::Time {
                        kind,
                        value: value.to_owned(),
                    });
            }
        }
        // Serf 0.9.4 never writes coordinates and ignores them when it reads one: coordinates
        // re-converge after a restart. Should they ever be persisted, this is the hook.
        if line.starts_with("coordinate: ") || line.starts_with('#') {
            return Ok(None);
        }
        if line == "leave" {
            return Ok(Some(Record::Leave));
        }
        Err(LineError::Unrecognized(line.to_owned()))
    }

    /// The line as Serf writes it, newline included.
    pub fn line(&self) -> String {
        format!("{self}\n")
    }
}

/// A decimal `u64` as Go's `strconv.ParseUint(s, 10, 64)` takes it: digits only.
fn parse_time(text: &str) -> Option<LamportTime> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

impl fmt::Display for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Record::Alive { name, addr } => write!(f, "alive: {name} {addr}"),
            Record::NotAlive { name } => write!(f, "not-alive: {name}"),
            Record::Clock(time) => write!(f, "clock: {time}"),
            Record::EventClock(time) => write!(f, "event-clock: {time}"),
            Record::QueryClock(time) => write!(f, "query-clock: {time}"),
            Record::Leave => f.write_str("leave"),
        }
    }
}

/// What a snapshot file holds once replayed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SnapshotState {
    /// Members last known alive: name → address as written.
    pub alive: BTreeMap<NodeName, String>,
    /// The last member clock recorded (the clock minus one).
    pub clock: LamportTime,
    /// The last user event's Lamport time.
    pub event_clock: LamportTime,
    /// The last query's Lamport time.
    pub query_clock: LamportTime,
    /// Whether the file records a graceful leave with no member joining after it.
    pub left: bool,
}

/// A node to rejoin at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreviousNode {
    /// Its name.
    pub name: NodeName,
    /// Its address as the snapshot wrote it.
    pub addr: String,
}

impl fmt::Display for PreviousNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.name, self.addr)
    }
}

impl SnapshotState {
    /// Replays a whole file. Lines that do not parse are skipped and described in the second
    /// value; so is an unterminated last line (a write cut short), which Serf ignores too.
    pub fn replay(bytes: &[u8], rejoin_after_leave: bool) -> (SnapshotState, Vec<LineError>) {
        let mut state = SnapshotState::default();
        let mut errors = Vec::new();
        let mut lines = bytes.split(|&b| b == b'\n');
        // The piece after the last newline is not a complete line.
        let complete = bytes.iter().filter(|&&b| b == b'\n').count();
        for raw in lines.by_ref().take(complete) {
            let line = String::from_utf8_lossy(raw);
            match Record::parse(&line) {
                Ok(Some(record)) => state.apply(&record, rejoin_after_leave),
                Ok(None) => {}
                Err(error) => errors.push(error),
            }
        }
        if let Some(rest) = lines.next().filter(|rest| !rest.is_empty()) {
            errors.push(LineError::Unrecognized(
                String::from_utf8_lossy(rest).into_owned(),
            ));
        }
        (state, errors)
    }

    /// Applies one record as Serf's replay does. A `leave` forgets the members and the clocks
    /// unless `rejoin_after_leave`.
    pub fn apply(&mut self, record: &Record, rejoin_after_leave: bool) {
        match record {
            Record::Alive { name, addr } => {
                self.alive.insert(name.clone(), addr.clone());
                self.left = false;
            }
            Record::NotAlive { name } => {
                self.alive.remove(name);
            }
            Record::Clock(time) => self.clock = *time,
            Record::EventClock(time) => self.event_clock = *time,
            Record::QueryClock(time) => self.query_clock = *time,
            Record::Leave => {
                self.left = true;
                if !rejoin_after_leave {
                    self.alive.clear();
                    self.clock = 0;
                    self.event_clock = 0;
                    self.query_clock = 0;
                }
            }
        }
    }

    /// The clocks the core restores.
    pub fn clocks(&self) -> RestoredClocks {
        RestoredClocks {
            member: self.clock,
            event: self.event_clock,
            query: self.query_clock,
        }
    }

    /// The nodes to rejoin: every alive one but `local`, in name order (the shell shuffles).
    pub fn previous_nodes(&self, local: &str) -> Vec<PreviousNode> {
        self.alive
            .iter()
            .filter(|(name, _)| name.as_str() != local)
            .map(|(name, addr)| PreviousNode {
                name: name.clone(),
                addr: addr.clone(),
            })
            .collect()
    }

    /// The compacted file: the alive members, then the three clocks.
    pub fn compacted(&self) -> String {
        let mut text: String = self
            .alive
            .iter()
            .map(|(name, addr)| {
                Record::Alive {
                    name: name.clone(),
                    addr: addr.clone(),
                }
                .line()
            })
            .collect();
        for record in [
            Record::Clock(self.clock),
            Record::EventClock(self.event_clock),
            Record::QueryClock(self.query_clock),
        ] {
            text.push_str(&record.line());
        }
        text
    }
}

/// A change in membership for the snapshot, taken from the core's member events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberChange {
    /// `member-join`.
    Alive {
        /// The member's name.
        name: NodeName,
        /// Its gossip address.
        addr: SocketAddr,
    },
    /// `member-leave` or `member-failed`.
    NotAlive {
        /// The member's name.
        name: NodeName,
    },
}

impl MemberChange {
    /// What a member event means for the snapshot (updates and reaps mean nothing).
    pub fn from_event(event: &MemberEvent) -> Vec<MemberChange> {
        event
            .members
            .iter()
            .filter_map(|member| match event.kind {
                MemberEventKind::Join => Some(MemberChange::Alive {
                    name: member.name.clone(),
                    addr: member.addr,
                }),
                MemberEventKind::Leave | MemberEventKind::Failed => Some(MemberChange::NotAlive {
                    name: member.name.clone(),
                }),
                MemberEventKind::Update | MemberEventKind::Reap => None,
            })
            .collect()
    }
}

/// The core's clocks as the snapshot reads them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Clocks {
    /// The member clock now.
    pub member: LamportTime,
    /// The highest Lamport time of a user event handed out.
    pub last_event: LamportTime,
    /// The highest Lamport time of a query processed.
    pub last_query: LamportTime,
}

/// Decides what to append, as Serf's snapshotter does: the file's state, whether this node is
/// leaving, and how many bytes the file holds.
#[derive(Debug)]
pub struct Recorder {
    state: SnapshotState,
    rejoin_after_leave: bool,
    leaving: bool,
    offset: u64,
}

impl Recorder {
    /// Continues a file holding `offset` bytes that replayed to `state`.
    pub fn new(state: SnapshotState, offset: u64, rejoin_after_leave: bool) -> Recorder {
        Recorder {
            state,
            rejoin_after_leave,
            leaving: false,
            offset,
        }
    }

    /// The lines for a member change, followed by a clock line if the clock moved. Nothing
    /// once this node is leaving.
    pub fn member_change(&mut self, change: MemberChange, clocks: Clocks) -> Vec<Record> {
        if self.leaving {
            return Vec::new();
        }
        let record = match change {
            MemberChange::Alive { name, addr } => {
                let addr = addr.to_string();
                self.state.alive.insert(name.clone(), addr.clone());
                Record::Alive { name, addr }
            }
            MemberChange::NotAlive { name } => {
                self.state.alive.remove(&name);
                Record::NotAlive { name }
            }
        };
        let mut records = vec![record];
        records.extend(self.clocks(clocks));
        records
    }

    /// The clock lines due: the member clock minus one when it grew (even while leaving, as
    /// in Serf), the event and query times when they grew (not while leaving).
    pub fn clocks(&mut self, clocks: Clocks) -> Vec<Record> {
        let mut records = Vec::new();
        let seen = clocks.member.saturating_sub(1);
        if seen > self.state.clock {
            self.state.clock = seen;
            records.push(Record::Clock(seen));
        }
        if self.leaving {
            return records;
        }
        if clocks.last_event > self.state.event_clock {
            self.state.event_clock = clocks.last_event;
            records.push(Record::EventClock(clocks.last_event));
        }
        if clocks.last_query > self.state.query_clock {
            self.state.query_clock = clocks.last_query;
            records.push(Record::QueryClock(clocks.last_query));
        }
        records
    }

    /// A graceful leave: the `leave` line; members are forgotten unless `rejoin_after_leave`,
    /// and later member changes are not recorded.
    pub fn leave(&mut self) -> Record {
        self.leaving = true;
        if !self.rejoin_after_leave {
            self.state.alive.clear();
        }
        Record::Leave
    }

    /// Counts `bytes` appended; returns whether the file should now be compacted.
    pub fn appended(&mut self, bytes: u64) -> bool {
        self.offset += bytes;
        self.offset > self.max_bytes()
    }

    /// The size past which the file is compacted: twice Serf's estimate for the alive
    /// members, and never below [`MIN_COMPACT_BYTES`].
    pub fn max_bytes(&self) -> u64 {
        let estimate = self.state.alive.len() as u64 * BYTES_PER_NODE;
        (estimate * COMPACTION_THRESHOLD).max(MIN_COMPACT_BYTES)
    }

    /// The compacted file's contents.
    pub fn compacted(&self) -> String {
        self.state.compacted()
    }

    /// The compacted file of `bytes` bytes replaced the old one.
    pub fn compacted_to(&mut self, bytes: u64) {
        self.offset = bytes;
    }

    /// The state so far.
    pub fn state(&self) -> &SnapshotState {
        &self.state
    }
}

// ---- the shell: the file and its thread ---------------------------------------------------

/// Why the snapshot could not be opened. The agent does not start.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The file could not be opened, created or read.
    #[error("failed to open snapshot: open {}: {reason}", path.display())]
    Open {
        /// The snapshot file.
        path: PathBuf,
        /// Why, as Go words it.
        reason: String,
    },
    /// The writer thread could not start.
    #[error("failed to start the snapshot writer: {0}")]
    Thread(std::io::Error),
}

/// Snapshot counters for `serf info`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotStats {
    /// The file.
    pub path: PathBuf,
    /// Lines written.
    pub records: u64,
    /// Compactions done.
    pub compactions: u64,
    /// Failed writes, flushes and compactions.
    pub errors: u64,
    /// Member changes dropped because the writer's queue was full.
    pub dropped: u64,
}

/// What the agent task and the writer thread share.
#[derive(Debug, Default)]
struct Shared {
    member_clock: AtomicU64,
    last_event: AtomicU64,
    last_query: AtomicU64,
    /// Set when the leave could not be queued; the writer checks it on every wake-up.
    leave: AtomicBool,
    /// Set when the shutdown could not be queued.
    shutdown: AtomicBool,
    records: AtomicU64,
    compactions: AtomicU64,
    errors: AtomicU64,
    dropped: AtomicU64,
}

impl Shared {
    fn clocks(&self) -> Clocks {
        Clocks {
            member: self.member_clock.load(Ordering::Relaxed),
            last_event: self.last_event.load(Ordering::Relaxed),
            last_query: self.last_query.load(Ordering::Relaxed),
        }
    }
}

enum Message {
    Member(MemberChange),
    Leave,
    Shutdown,
}

/// The agent's end of the snapshot: never waits on the writer.
pub(crate) struct Snapshotter {
    path: PathBuf,
    sender: SyncSender<Message>,
    shared: Arc<Shared>,
    done: Option<oneshot::Receiver<()>>,
}

impl Snapshotter {
    /// Opens (or creates) the file, replays it and starts its writer thread. Returns what the
    /// agent restores.
    pub(crate) fn open(
        path: &Path,
        rejoin_after_leave: bool,
    ) -> Result<(Snapshotter, SnapshotState), SnapshotError> {
        let open_error = |error: std::io::Error| SnapshotError::Open {
            path: path.to_path_buf(),
            reason: serf_rpc::go_text::io_error(&error),
        };
        let mut file = open_append(path).map_err(open_error)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(open_error)?;
        let (state, errors) = SnapshotState::replay(&bytes, rejoin_after_leave);
        for error in &errors {
            tracing::warn!(path = %path.display(), %error, "snapshot line skipped");
        }
        if state.left && rejoin_after_leave {
            tracing::info!("ignoring previous leave in snapshot");
        }
        let shared = Arc::new(Shared::default());
        let (sender, receiver) = std::sync::mpsc::sync_channel(QUEUE_CAPACITY);
        let (done_sender, done) = oneshot::channel();
        let writer = Writer {
            path: path.to_path_buf(),
            file: Some(BufWriter::new(file)),
            recorder: Recorder::new(state.clone(), bytes.len() as u64, rejoin_after_leave),
            shared: Arc::clone(&shared),
            last_flush: Instant::now(),
            last_recovery: None,
        };
        std::thread::Builder::new()
            .name("serf-snapshot".into())
            .spawn(move || {
                writer.run(receiver);
                let _ = done_sender.send(());
            })
            .map_err(SnapshotError::Thread)?;
        let snapshotter = Snapshotter {
            path: path.to_path_buf(),
            sender,
            shared,
            done: Some(done),
        };
        Ok((snapshotter, state))
    }

    /// Publishes the core's clocks; the writer records them on its schedule.
    pub(crate) fn observe(&self, clocks: Clocks) {
        self.shared
            .member_clock
            .store(clocks.member, Ordering::Relaxed);
        self.shared
            .last_event
            .store(clocks.last_event, Ordering::Relaxed);
        self.shared
            .last_query
            .store(clocks.last_query, Ordering::Relaxed);
    }

    /// Hands the member changes of an event to the writer, without waiting.
    pub(crate) fn record(&self, member_event: &MemberEvent) {
        for change in MemberChange::from_event(member_event) {
            self.send(Message::Member(change));
        }
    }

    fn send(&self, message: Message) {
        match self.sender.try_send(message) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                let dropped = self.shared.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if dropped.is_power_of_two() {
                    tracing::warn!(dropped, "snapshot queue full; member change not recorded");
                }
            }
            Err(TrySendError::Disconnected(_)) => {
                let dropped = self.shared.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if dropped.is_power_of_two() {
                    tracing::error!(
                        dropped,
                        "snapshot writer stopped; member change not recorded"
                    );
                }
            }
        }
    }

    /// Records a graceful leave (written and fsynced by the writer).
    pub(crate) fn leave(&self) {
        if self.sender.try_send(Message::Leave).is_err() {
            self.shared.leave.store(true, Ordering::Relaxed);
        }
    }

    /// Stops the writer: the clocks are recorded, pending lines written and the file fsynced.
    /// Waits at most [`CLOSE_TIMEOUT`].
    pub(crate) async fn close(mut self) {
        if self.sender.try_send(Message::Shutdown).is_err() {
            self.shared.shutdown.store(true, Ordering::Relaxed);
        }
        if let Some(done) = self.done.take()
            && tokio::time::timeout(CLOSE_TIMEOUT, done).await.is_err()
        {
            tracing::error!("snapshot writer did not finish in time");
        }
    }

    /// Counters for `serf info`.
    pub(crate) fn stats(&self) -> SnapshotStats {
        SnapshotStats {
            path: self.path.clone(),
            records: self.shared.records.load(Ordering::Relaxed),
            compactions: self.shared.compactions.load(Ordering::Relaxed),
            errors: self.shared.errors.load(Ordering::Relaxed),
            dropped: self.shared.dropped.load(Ordering::Relaxed),
        }
    }
}

/// Opens the snapshot for reading and appending, creating it (mode 0644) if missing.
fn open_append(path: &Path) -> std::io::Result<File> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true).append(true).create(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o644);
    options.open(path)
}

/// The writer thread: owns the file and the [`Recorder`].
struct Writer {
    path: PathBuf,
    /// `None` after a compaction failed to reopen the file; appends fail until one succeeds.
    file: Option<BufWriter<File>>,
    recorder: Recorder,
    shared: Arc<Shared>,
    last_flush: Instant,
    last_recovery: Option<Instant>,
}

impl Writer {
    fn run(mut self, receiver: Receiver<Message>) {
        let mut next_tick = Instant::now() + CLOCK_UPDATE_INTERVAL;
        loop {
            if self.shared.shutdown.load(Ordering::Relaxed) {
                break;
            }
            if self.shared.leave.swap(false, Ordering::Relaxed) {
                self.leave();
            }
            let wait = next_tick.saturating_duration_since(Instant::now());
            match receiver.recv_timeout(wait) {
                Ok(Message::Member(change)) => {
                    let records = self.recorder.member_change(change, self.shared.clocks());
                    self.append(&records);
                }
                Ok(Message::Leave) => self.leave(),
                Ok(Message::Shutdown) | Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {}
            }
            if Instant::now() >= next_tick {
                self.tick();
                next_tick = Instant::now() + CLOCK_UPDATE_INTERVAL;
            }
        }
        self.shutdown(&receiver);
    }

    /// Writes the clock lines due and flushes what is buffered.
    fn tick(&mut self) {
        let records = self.recorder.clocks(self.shared.clocks());
        self.append(&records);
        if self
            .file
            .as_ref()
            .is_some_and(|file| !file.buffer().is_empty())
        {
            self.flush(false);
        }
    }

    fn leave(&mut self) {
        let record = self.recorder.leave();
        self.append(&[record]);
        self.flush(true);
    }

    fn shutdown(&mut self, receiver: &Receiver<Message>) {
        let deadline = Instant::now() + SHUTDOWN_FLUSH_TIMEOUT;
        while Instant::now() < deadline {
            match receiver.try_recv() {
                Ok(Message::Member(change)) => {
                    let records = self.recorder.member_change(change, self.shared.clocks());
                    self.append(&records);
                }
                Ok(Message::Leave) => self.leave(),
                Ok(Message::Shutdown) => {}
                Err(_) => break,
            }
        }
        let records = self.recorder.clocks(self.shared.clocks());
        self.append(&records);
        self.flush(true);
    }

    /// Appends lines; flushes when the last flush is [`FLUSH_INTERVAL`] old; compacts when
    /// the file has grown past its limit.
    fn append(&mut self, records: &[Record]) {
        for record in records {
            if let Err(error) = self.append_line(&record.line()) {
                self.shared.errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(%error, "failed to update snapshot");
                self.recover();
            }
        }
    }

    fn append_line(&mut self, line: &str) -> std::io::Result<()> {
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| std::io::Error::other("snapshot file is not open"))?;
        file.write_all(line.as_bytes())?;
        self.shared.records.fetch_add(1, Ordering::Relaxed);
        if self.last_flush.elapsed() > FLUSH_INTERVAL {
            self.last_flush = Instant::now();
            file.flush()?;
        }
        if self.recorder.appended(line.len() as u64) {
            self.compact()?;
        }
        Ok(())
    }

    /// After a failed append: rewrites the file by compacting it, at most every
    /// [`ERROR_RECOVERY_INTERVAL`].
    fn recover(&mut self) {
        let now = Instant::now();
        if self
            .last_recovery
            .is_some_and(|last| now.duration_since(last) < ERROR_RECOVERY_INTERVAL)
        {
            return;
        }
        self.last_recovery = Some(now);
        tracing::info!("attempting compaction to recover from error");
        match self.compact() {
            Ok(()) => tracing::info!("finished compaction, recovered from error state"),
            Err(error) => {
                self.shared.errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(%error, retry_in = ?ERROR_RECOVERY_INTERVAL, "compaction failed");
            }
        }
    }

    fn flush(&mut self, sync: bool) {
        let Some(file) = self.file.as_mut() else {
            return;
        };
        self.last_flush = Instant::now();
        let result = file.flush().and_then(|()| {
            if sync {
                file.get_ref().sync_all()
            } else {
                Ok(())
            }
        });
        if let Err(error) = result {
            self.shared.errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!(%error, "failed to flush snapshot");
        }
    }

    /// Writes the compacted file beside the snapshot, fsyncs it and renames it over the
    /// snapshot (atomic on Unix), then appends to the new file.
    fn compact(&mut self) -> std::io::Result<()> {
        let text = self.recorder.compacted();
        let mut compact_path = self.path.clone().into_os_string();
        compact_path.push(COMPACT_SUFFIX);
        let compact_path = PathBuf::from(compact_path);
        {
            let mut compact = File::create(&compact_path)?;
            compact.write_all(text.as_bytes())?;
            compact.sync_all()?;
        }
        // What the old file still buffers is in the compacted one already.
        if let Some(mut old) = self.file.take() {
            let _ = old.flush();
        }
        std::fs::rename(&compact_path, &self.path)?;
        self.file = Some(BufWriter::new(open_append(&self.path)?));
        self.recorder.compacted_to(text.len() as u64);
        self.last_flush = Instant::now();
        self.shared.compactions.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(bytes = text.len(), "snapshot compacted");
        Ok(())
    }
}

// ---- the agent's side: hooks, rejoin, tags file -------------------------------------------

impl Shell {
    /// Hands the snapshot what it records: the core's clocks (three atomic stores) and its
    /// member events as they happened, before coalescing.
    pub(super) fn feed_snapshot(&mut self) {
        let Some(snapshot) = &self.snapshot else {
            return;
        };
        snapshot.observe(Clocks {
            member: self.core.member_time(),
            last_event: self.core.last_event_time(),
            last_query: self.core.last_query_time(),
        });
        while let Some(event) = self.core.poll_raw_member_event() {
            snapshot.record(&event);
        }
    }
}

impl NodeHandle {
    /// Joins one node remembered in the snapshot (memberlist's join alone, reference 3.14).
    async fn rejoin(&self, addrs: Vec<SocketAddr>) -> Result<JoinOutcome, NodeError> {
        self.ask(|reply| Command::Rejoin { addrs, reply }).await
    }
}

/// Tries the nodes of the snapshot one at a time, in random order, until one answers, as
/// Serf does at start.
pub(crate) async fn rejoin(handle: NodeHandle, mut previous: Vec<PreviousNode>) {
    use rand::seq::SliceRandom as _;
    previous.shuffle(&mut rand::rng());
    let default_port = handle.gossip_addr().port();
    for node in previous {
        tracing::info!(node = %node.name, addr = %node.addr, "attempting re-join to previously known node");
        let addrs = match crate::join::resolve_join_addr(&node.addr, default_port).await {
            Ok(addrs) => addrs,
            Err(error) => {
                tracing::debug!(node = %node.name, %error, "cannot resolve snapshot address");
                continue;
            }
        };
        match handle.rejoin(addrs).await {
            Ok(outcome) if outcome.joined > 0 => {
                tracing::info!(node = %node.name, addr = %node.addr, "re-joined to previously known node");
                return;
            }
            Ok(outcome) => {
                for (addr, error) in outcome.errors {
                    tracing::debug!(%addr, %error, "re-join failed");
                }
            }
            Err(_) => return,
        }
    }
    tracing::warn!("failed to re-join any previously known node");
}

/// Tags as Serf writes its tags file: JSON indented by two spaces, keys sorted, and `<`, `>`,
/// `&`, U+2028 and U+2029 escaped as Go's encoder escapes them.
pub fn render_tags(tags: &Tags) -> String {
    let text = serde_json::to_string_pretty(tags).expect("a map of strings always serializes");
    // These characters can only occur inside strings, so replacing them everywhere is safe.
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => escaped.push_str("\\u003c"),
            '>' => escaped.push_str("\\u003e"),
            '&' => escaped.push_str("\\u0026"),
            '\u{2028}' => escaped.push_str("\\u2028"),
            '\u{2029}' => escaped.push_str("\\u2029"),
            other => escaped.push(other),
        }
    }
    escaped
}

/// Writes the tags file (mode 0600, tags may be sensitive) before new tags are gossiped, off
/// the agent task. The error reads as Serf's.
pub(crate) async fn write_tags_file(path: &Path, tags: &Tags) -> Result<(), NodeError> {
    let path = path.to_path_buf();
    let text = render_tags(tags);
    let written = tokio::task::spawn_blocking(move || {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        options
            .open(&path)
            .and_then(|mut file| file.write_all(text.as_bytes()))
            .map_err(|error| {
                format!(
                    "open {}: {}",
                    path.display(),
                    serf_rpc::go_text::io_error(&error)
                )
            })
    })
    .await
    .map_err(|error| error.to_string())
    .and_then(|result| result);
    written.map_err(|error| {
        tracing::error!(%error, "failed to write tags file");
        NodeError::TagsFile(error)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file Serf 0.9.4 wrote (agent `a` joined by `b`, two events, a query, then SIGINT).
    const SERF_FILE: &str = "alive: a 127.77.0.1:7946\nalive: b 127.77.0.2:7946\nclock: 1\n\
                             event-clock: 1\nevent-clock: 2\nquery-clock: 1\nclock: 2\n\
                             not-alive: b\nleave\nclock: 3\n";

    fn alive(name: &str, addr: &str) -> Record {
        Record::Alive {
            name: name.into(),
            addr: addr.into(),
        }
    }

    fn clocks(member: LamportTime, last_event: LamportTime, last_query: LamportTime) -> Clocks {
        Clocks {
            member,
            last_event,
            last_query,
        }
    }

    #[test]
    fn every_record_renders_as_serf_writes_it_and_parses_back() {
        let records = [
            alive("a", "127.0.0.1:7946"),
            alive("web 1", "[::1]:7946"),
            Record::NotAlive {
                name: "web 1".into(),
            },
            Record::Clock(7),
            Record::EventClock(18446744073709551615),
            Record::QueryClock(0),
            Record::Leave,
        ];
        let lines: String = records.iter().map(Record::line).collect();
        assert_eq!(
            lines,
            "alive: a 127.0.0.1:7946\nalive: web 1 [::1]:7946\nnot-alive: web 1\nclock: 7\n\
             event-clock: 18446744073709551615\nquery-clock: 0\nleave\n"
        );
        for record in records {
            assert_eq!(
                Record::parse(record.line().trim_end_matches('\n')),
                Ok(Some(record))
            );
        }
    }

    #[test]
    fn a_file_written_by_serf_replays_to_its_clocks_and_members() {
        let (state, errors) = SnapshotState::replay(SERF_FILE.as_bytes(), false);
        assert!(errors.is_empty(), "{errors:?}");
        // The leave forgot everything before it; only the clock written after it counts.
        assert!(state.alive.is_empty());
        assert_eq!(
            state.clocks(),
            RestoredClocks {
                member: 3,
                event: 0,
                query: 0
            }
        );
        assert!(state.left);

        let (state, errors) = SnapshotState::replay(SERF_FILE.as_bytes(), true);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(state.alive.len(), 1);
        assert_eq!(state.alive["a"], "127.77.0.1:7946");
        assert_eq!(
            state.clocks(),
            RestoredClocks {
                member: 3,
                event: 2,
                query: 1
            }
        );
        assert_eq!(state.previous_nodes("a"), []);
        assert_eq!(
            state.previous_nodes("b"),
            [PreviousNode {
                name: "a".into(),
                addr: "127.77.0.1:7946".into()
            }]
        );
    }

    #[test]
    fn a_join_after_a_leave_clears_the_left_mark() {
        let text = "alive: a 1.2.3.4:7946\nleave\nalive: b 1.2.3.5:7946\n";
        let (state, _) = SnapshotState::replay(text.as_bytes(), false);
        assert!(!state.left);
        assert_eq!(state.alive.keys().collect::<Vec<_>>(), ["b"]);
    }

    #[test]
    fn corrupt_lines_are_skipped_with_a_reason_and_never_panic() {
        let text: &[u8] = b"alive: nospace\nclock: x\nclock: +5\nevent-clock: \nquery-clock: 99999999999999999999\n\
                    bogus\n# a comment\ncoordinate: {\"Vec\":[]}\n\xff\xfe\nalive: c 10.0.0.3:7946\n\
                    clock: 4\nnot-alive: nobody\nalive: cut 10.0.0.9:79";
        let (state, errors) = SnapshotState::replay(text, false);
        assert_eq!(state.alive.keys().collect::<Vec<_>>(), ["c"]);
        assert_eq!(state.clock, 4);
        assert_eq!(
            errors,
            [
                LineError::Address("alive: nospace".into()),
                LineError::Time {
                    kind: "clock",
                    value: "x".into()
                },
                LineError::Time {
                    kind: "clock",
                    value: "+5".into()
                },
                LineError::Time {
                    kind: "event clock",
                    value: "".into()
                },
                LineError::Time {
                    kind: "query clock",
                    value: "99999999999999999999".into()
                },
                LineError::Unrecognized("bogus".into()),
                LineError::Unrecognized("\u{fffd}\u{fffd}".into()),
                LineError::Unrecognized("alive: cut 10.0.0.9:79".into()),
            ]
        );
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_replay_without_panicking(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512),
            rejoin in proptest::prelude::any::<bool>(),
        ) {
            let _ = SnapshotState::replay(&bytes, rejoin);
        }
    }

    #[test]
    fn the_recorder_writes_serfs_lines_for_members_and_clocks() {
        let mut recorder = Recorder::new(SnapshotState::default(), 0, false);
        let joined = recorder.member_change(
            MemberChange::Alive {
                name: "a".into(),
                addr: "[::1]:7946".parse().unwrap(),
            },
            clocks(1, 0, 0),
        );
        // A member clock of 1 is Serf's starting value: nothing to record yet.
        assert_eq!(joined, [alive("a", "[::1]:7946")]);
        let failed =
            recorder.member_change(MemberChange::NotAlive { name: "a".into() }, clocks(3, 0, 0));
        assert_eq!(
            failed,
            [Record::NotAlive { name: "a".into() }, Record::Clock(2)]
        );
        assert_eq!(
            recorder.clocks(clocks(3, 5, 2)),
            [Record::EventClock(5), Record::QueryClock(2)]
        );
        assert_eq!(recorder.clocks(clocks(3, 5, 2)), [], "nothing moved");
        assert_eq!(recorder.clocks(clocks(2, 4, 1)), [], "clocks never go back");
    }

    #[test]
    fn after_a_leave_only_the_member_clock_is_recorded() {
        let mut recorder = Recorder::new(SnapshotState::default(), 0, false);
        recorder.member_change(
            MemberChange::Alive {
                name: "b".into(),
                addr: "10.0.0.2:7946".parse().unwrap(),
            },
            clocks(1, 0, 0),
        );
        assert_eq!(recorder.leave(), Record::Leave);
        assert!(recorder.state().alive.is_empty());
        let late = recorder.member_change(
            MemberChange::Alive {
                name: "c".into(),
                addr: "10.0.0.3:7946".parse().unwrap(),
            },
            clocks(5, 9, 9),
        );
        assert_eq!(late, []);
        assert_eq!(recorder.clocks(clocks(5, 9, 9)), [Record::Clock(4)]);

        let mut keeping = Recorder::new(SnapshotState::default(), 0, true);
        keeping.member_change(
            MemberChange::Alive {
                name: "b".into(),
                addr: "10.0.0.2:7946".parse().unwrap(),
            },
            clocks(1, 0, 0),
        );
        keeping.leave();
        assert_eq!(keeping.state().alive.len(), 1, "-rejoin keeps the members");
    }

    #[test]
    fn compaction_starts_past_twice_the_estimate_and_never_below_128_kib() {
        let mut recorder = Recorder::new(SnapshotState::default(), 0, false);
        assert_eq!(recorder.max_bytes(), MIN_COMPACT_BYTES);
        assert!(!recorder.appended(MIN_COMPACT_BYTES));
        assert!(recorder.appended(1));
        let mut state = SnapshotState::default();
        for i in 0..1000 {
            state.alive.insert(
                format!("n{i}"),
                format!("10.0.{}.{}:7946", i / 256, i % 256),
            );
        }
        let big = Recorder::new(state, 0, false);
        assert_eq!(big.max_bytes(), 1000 * 128 * 2);
    }

    #[test]
    fn a_compacted_file_replays_to_the_same_state() {
        let (state, _) = SnapshotState::replay(SERF_FILE.as_bytes(), true);
        let compacted = state.compacted();
        assert_eq!(
            compacted,
            "alive: a 127.77.0.1:7946\nclock: 3\nevent-clock: 2\nquery-clock: 1\n"
        );
        let (again, errors) = SnapshotState::replay(compacted.as_bytes(), false);
        assert!(errors.is_empty());
        assert_eq!(again.alive, state.alive);
        assert_eq!(again.clocks(), state.clocks());
    }

    #[test]
    fn member_events_become_alive_and_not_alive_changes() {
        let member = |name: &str| serf_core::Member {
            name: name.into(),
            addr: "10.0.0.1:7946".parse().unwrap(),
            tags: Tags::new(),
            status: serf_core::MemberStatus::Alive,
            versions: serf_core::ProtocolVersions {
                protocol: [1, 5, 2],
                delegate: [2, 5, 5],
            },
        };
        let event = |kind| MemberEvent {
            kind,
            members: vec![member("a"), member("b")],
        };
        assert_eq!(
            MemberChange::from_event(&event(MemberEventKind::Join))[1],
            MemberChange::Alive {
                name: "b".into(),
                addr: "10.0.0.1:7946".parse().unwrap()
            }
        );
        for kind in [MemberEventKind::Leave, MemberEventKind::Failed] {
            assert_eq!(
                MemberChange::from_event(&event(kind)),
                [
                    MemberChange::NotAlive { name: "a".into() },
                    MemberChange::NotAlive { name: "b".into() }
                ]
            );
        }
        for kind in [MemberEventKind::Update, MemberEventKind::Reap] {
            assert_eq!(MemberChange::from_event(&event(kind)), []);
        }
    }

    #[test]
    fn tags_render_as_serfs_indented_json_with_html_escapes() {
        let tags: Tags = [
            ("role".to_string(), "web".to_string()),
            ("dc".to_string(), "<east & west>".to_string()),
        ]
        .into();
        assert_eq!(
            render_tags(&tags),
            "{\n  \"dc\": \"\\u003ceast \\u0026 west\\u003e\",\n  \"role\": \"web\"\n}"
        );
        assert_eq!(render_tags(&Tags::new()), "{}");
        let back: Tags = serde_json::from_str(&render_tags(&tags)).unwrap();
        assert_eq!(back, tags);
    }

    fn wait_for(path: &Path, needle: &str) -> String {
        let read = || std::fs::read_to_string(path).unwrap_or_default();
        serf_testkit::eventually(Duration::from_secs(5), || {
            Some(read()).filter(|text| text.contains(needle))
        })
        .unwrap_or_else(read)
    }

    #[tokio::test]
    async fn the_writer_appends_flushes_and_fsyncs_a_leave() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snap");
        std::fs::write(&path, "alive: old 10.0.0.9:7946\nevent-clock: 4\n").unwrap();
        let (snapshot, state) = Snapshotter::open(&path, false).unwrap();
        assert_eq!(state.event_clock, 4);
        assert_eq!(state.previous_nodes("me").len(), 1);
        let member = serf_core::Member {
            name: "me".into(),
            addr: "10.0.0.1:7946".parse().unwrap(),
            tags: Tags::new(),
            status: serf_core::MemberStatus::Alive,
            versions: serf_core::ProtocolVersions {
                protocol: [1, 5, 2],
                delegate: [2, 5, 5],
            },
        };
        snapshot.observe(clocks(3, 6, 0));
        snapshot.record(&MemberEvent {
            kind: MemberEventKind::Join,
            members: vec![member],
        });
        // Within the flush interval, without a shutdown: the buffered lines reach the file.
        let text = wait_for(&path, "event-clock: 6\n");
        assert_eq!(
            text,
            "alive: old 10.0.0.9:7946\nevent-clock: 4\nalive: me 10.0.0.1:7946\nclock: 2\n\
             event-clock: 6\n"
        );
        snapshot.leave();
        wait_for(&path, "leave\n");
        snapshot.observe(clocks(5, 7, 0));
        let stats = snapshot.stats();
        snapshot.close().await;
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.ends_with("event-clock: 6\nleave\nclock: 4\n"),
            "{text}"
        );
        assert_eq!(stats.dropped, 0);
        assert_eq!(stats.errors, 0);
        let (state, _) = SnapshotState::replay(text.as_bytes(), false);
        assert!(state.alive.is_empty());
        assert_eq!(state.clock, 4);
    }

    #[tokio::test]
    async fn a_full_file_is_compacted_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snap");
        let mut text = String::from("alive: keep 10.0.0.1:7946\n");
        while text.len() as u64 <= MIN_COMPACT_BYTES {
            text.push_str("alive: gone 10.0.0.2:7946\nnot-alive: gone\n");
        }
        std::fs::write(&path, &text).unwrap();
        let (snapshot, _) = Snapshotter::open(&path, false).unwrap();
        snapshot.observe(clocks(10, 0, 0));
        // Only the compacted file ends with the query clock.
        let compacted = wait_for(&path, "query-clock: 0\n");
        assert_eq!(
            compacted,
            "alive: keep 10.0.0.1:7946\nclock: 9\nevent-clock: 0\nquery-clock: 0\n"
        );
        assert_eq!(snapshot.stats().compactions, 1);
        assert!(!dir.path().join("snap.compact").exists());
        snapshot.close().await;
    }

    mod node {
        use std::net::SocketAddr;
        use std::path::PathBuf;
        use std::time::Duration;

        use crate::{Node, NodeConfig, NodeHandle};
        use serf_core::{MemberStatus, Tags};

        #[derive(Default)]
        struct Options {
            bind: Option<SocketAddr>,
            snapshot: Option<PathBuf>,
            tags_file: Option<PathBuf>,
            tags: Tags,
        }

        async fn start(name: &str, options: Options) -> Node {
            let bind = options
                .bind
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0)));
            let mut config = NodeConfig::local(name, bind, options.tags);
            config.snapshot_path = options.snapshot;
            config.tags_file = options.tags_file;
            Node::start(config).await.unwrap()
        }

        async fn eventually<F, Fut>(check: F) -> bool
        where
            F: FnMut() -> Fut,
            Fut: std::future::Future<Output = bool>,
        {
            serf_testkit::eventually_async(Duration::from_secs(10), check).await
        }

        async fn status_of(handle: &NodeHandle, name: &str) -> Option<MemberStatus> {
            let members = handle.members().await.ok()?;
            members.iter().find(|m| m.name == name).map(|m| m.status)
        }

        #[tokio::test]
        async fn a_restarted_agent_restores_its_clocks_and_rejoins_without_a_join() {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("a.snapshot");
            let with_snapshot = || Options {
                snapshot: Some(path.clone()),
                ..Options::default()
            };
            let b = start("b", Options::default()).await;
            let a = start("a", with_snapshot()).await;
            let (a_handle, b_handle) = (a.handle(), b.handle());
            // A restart keeps its address, or the cluster sees a name conflict.
            let a_addr = a_handle.gossip_addr();
            let seed = b_handle.gossip_addr().to_string();
            assert_eq!(a_handle.join(vec![seed], false).await, Ok(1));
            assert!(
                eventually(|| async {
                    status_of(&b_handle, "a").await == Some(MemberStatus::Alive)
                })
                .await
            );
            for i in 0..3u8 {
                a_handle
                    .user_event("deploy".into(), vec![i], false)
                    .await
                    .unwrap();
            }
            let before = a_handle.stats().await.unwrap();
            assert_eq!(before.snapshot.as_ref().map(|s| s.dropped), Some(0));
            // Stopped without a leave: the others see it fail, the file keeps the members.
            a.shutdown().await;
            let text = std::fs::read_to_string(&path).unwrap();
            assert!(text.contains("event-clock: 3\n"), "{text}");
            assert!(!text.contains("leave"), "{text}");

            let a = start(
                "a",
                Options {
                    bind: Some(a_addr),
                    ..with_snapshot()
                },
            )
            .await;
            let a_handle = a.handle();
            let stats = a_handle.stats().await.unwrap();
            assert!(stats.serf.event_time >= 4, "{:?}", stats.serf);
            assert!(
                stats.serf.member_time >= before.serf.member_time - 1,
                "{:?}",
                stats.serf
            );
            // Nobody asked it to join: the snapshot did.
            assert!(
                eventually(|| async {
                    status_of(&a_handle, "b").await == Some(MemberStatus::Alive)
                        && status_of(&b_handle, "a").await == Some(MemberStatus::Alive)
                })
                .await,
                "the restarted agent never rejoined"
            );
            assert_eq!(
                a_handle.user_event("next".into(), vec![], false).await,
                Ok(4)
            );

            // A graceful leave ends the file with `leave`: the next start rejoins nobody...
            a_handle.leave().await.unwrap();
            a.shutdown().await;
            let text = std::fs::read_to_string(&path).unwrap();
            assert!(text.contains("\nleave\n"), "{text}");
            let (state, _) = super::SnapshotState::replay(text.as_bytes(), false);
            assert!(state.previous_nodes("a").is_empty());
            // ...unless it was started with -rejoin.
            let (state, _) = super::SnapshotState::replay(text.as_bytes(), true);
            assert_eq!(state.previous_nodes("a").len(), 1);
            b.shutdown().await;
        }

        #[tokio::test]
        async fn tag_changes_are_written_to_the_tags_file() {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("tags.json");
            std::fs::write(&path, "{\"role\": \"web\"}").unwrap();
            let web: Tags = [("role".to_owned(), "web".to_owned())].into();
            let agent = start(
                "t",
                Options {
                    tags_file: Some(path.clone()),
                    tags: web,
                    ..Options::default()
                },
            )
            .await;
            let handle = agent.handle();
            let local = handle.stats().await.unwrap().local;
            assert_eq!(local.tags["role"], "web");
            let tags: Tags = [("role", "db"), ("dc", "east")]
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .into();
            handle.set_tags(tags.clone()).await.unwrap();
            assert_eq!(
                std::fs::read_to_string(&path).unwrap(),
                "{\n  \"dc\": \"east\",\n  \"role\": \"db\"\n}"
            );
            assert_eq!(handle.stats().await.unwrap().local.tags, tags);
            // An unwritable file fails the change and leaves the tags alone.
            std::fs::remove_file(&path).unwrap();
            std::fs::create_dir(&path).unwrap();
            let error = handle.set_tags(Tags::new()).await.unwrap_err();
            assert!(
                error.to_string().starts_with(&format!(
                    "Failed to write tags file: open {}: ",
                    path.display()
                )),
                "{error}"
            );
            assert_eq!(handle.stats().await.unwrap().local.tags, tags);
            agent.shutdown().await;
        }
    }

    #[test]
    fn an_unopenable_snapshot_is_an_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing-dir").join("snap");
        let Err(error) = Snapshotter::open(&path, false) else {
            panic!("opened a file in a missing directory");
        };
        assert_eq!(
            error.to_string(),
            format!(
                "failed to open snapshot: open {}: no such file or directory",
                path.display()
            )
        );
    }
}
