//! The agent's listening doors (RPC and gossip TCP): who may come in and how long they may stand
//! in the doorway.
//!
//! - [`Pending`] tracks connections that have not proven themselves yet (an RPC client before
//!   its handshake, a gossip stream before its first byte). It caps them per source address and
//!   in total, and over a cap it evicts the *oldest* pending connection of that source (or of
//!   all) instead of refusing the new one: idle sockets, however many, cannot keep a fresh
//!   client out, while a legitimate client, which proves itself within milliseconds, leaves
//!   the pending set long before it could be evicted. Proven connections are not counted here;
//!   only file descriptors bound them.
//! - [`Acceptor`] accepts with a back-off on errors. When the process is out of file
//!   descriptors (`EMFILE`, `ENFILE`) it gives up a reserved descriptor to accept and close the
//!   waiting connection (so the client gets an answer instead of hanging in the backlog, and the
//!   listener is not woken again for it at once), waits, and logs at most one line per
//!   [`ACCEPT_LOG_INTERVAL`].
//! - [`raise_fd_limit`] lifts the soft `RLIMIT_NOFILE` to the hard limit at start, as Serf
//!   0.9.4's binary does (Go's runtime does it; `/usr/bin/serf` started with 1024:20000 runs
//!   with 20000).
//!
//! It does not read requests or decide what a connection may do: the RPC server and the
//! gossip transport do, and they say when a connection has proven itself.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use serf_gossip::LogLimiter;

/// At most one log line about failed accepts per listener per this interval.
pub const ACCEPT_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// The first pause after a failed accept; it doubles up to [`MAX_ACCEPT_BACKOFF`].
const FIRST_ACCEPT_BACKOFF: Duration = Duration::from_millis(5);
/// The longest pause after failed accepts in a row.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// Connections that have not proven themselves yet, each with a value (`T`) its owner uses to
/// close it (a cancellation token in the agent). Pure bookkeeping: no clock, no sockets.
#[derive(Debug)]
pub struct Pending<T> {
    per_source: usize,
    total: usize,
    next_id: u64,
    /// Every pending connection by id; ids grow, so the first is the oldest.
    by_age: BTreeMap<u64, (IpAddr, T)>,
    by_source: HashMap<IpAddr, BTreeSet<u64>>,
}

impl<T> Pending<T> {
    /// At most `per_source` pending connections from one address and `total` in all (both at
    /// least 1).
    pub fn new(per_source: usize, total: usize) -> Pending<T> {
        Pending {
            per_source: per_source.max(1),
            total: total.max(1),
            next_id: 0,
            by_age: BTreeMap::new(),
            by_source: HashMap::new(),
        }
    }

    /// Adds a connection from `source`; returns its id and the value of the connection evicted
    /// to make room (the oldest from `source` when that source is at its cap, else the oldest
    /// of all when the total is), which the caller closes.
    pub fn admit(&mut self, source: IpAddr, value: T) -> (u64, Option<T>) {
        let from_source = self.by_source.get(&source).map_or(0, BTreeSet::len);
        let evict = if from_source >= self.per_source {
            self.by_source
                .get(&source)
                .and_then(|ids| ids.first().copied())
        } else if self.by_age.len() >= self.total {
            self.by_age.keys().next().copied()
        } else {
            None
        };
        let evicted = evict.and_then(|id| self.settle(id));
        self.next_id += 1;
        let id = self.next_id;
        self.by_age.insert(id, (source, value));
        self.by_source.entry(source).or_default().insert(id);
        (id, evicted)
    }

    /// Removes a connection (it proved itself, or it closed); its value, if it was still here.
    pub fn settle(&mut self, id: u64) -> Option<T> {
        let (source, value) = self.by_age.remove(&id)?;
        if let Some(ids) = self.by_source.get_mut(&source) {
            ids.remove(&id);
            if ids.is_empty() {
                self.by_source.remove(&source);
            }
        }
        Some(value)
    }

    /// Connections pending now.
    pub fn len(&self) -> usize {
        self.by_age.len()
    }

    /// Whether none is pending.
    pub fn is_empty(&self) -> bool {
        self.by_age.is_empty()
    }
}

/// [`Pending`] shared by a listener's connection tasks; a connection evicted from it has its
/// token cancelled.
#[derive(Debug, Clone)]
pub struct Doorway {
    pending: Arc<Mutex<Pending<CancellationToken>>>,
    evicted: Arc<AtomicU64>,
}

impl Doorway {
    /// See [`Pending::new`].
    pub fn new(per_source: usize, total: usize) -> Doorway {
        Doorway {
            pending: Arc::new(Mutex::new(Pending::new(per_source, total))),
            evicted: Arc::default(),
        }
    }

    /// Registers a new connection from `peer`; the returned guard's token is cancelled if the
    /// connection is evicted before [`Admission::settle`], and dropping the guard settles it.
    pub fn admit(&self, peer: SocketAddr) -> Admission {
        let token = CancellationToken::new();
        let (id, evicted) = self.lock().admit(peer.ip(), token.clone());
        if let Some(evicted) = evicted {
            evicted.cancel();
            self.evicted.fetch_add(1, Ordering::Relaxed);
        }
        Admission {
            doorway: self.clone(),
            id: Some(id),
            token,
        }
    }

    /// Pending connections closed to make room for newer ones.
    pub fn num_evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }

    /// Connections pending now.
    pub fn num_pending(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending<CancellationToken>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One pending connection's place in a [`Doorway`].
#[derive(Debug)]
pub struct Admission {
    doorway: Doorway,
    id: Option<u64>,
    token: CancellationToken,
}

impl Admission {
    /// Cancelled when the connection is evicted while pending.
    pub fn evicted(&self) -> &CancellationToken {
        &self.token
    }

    /// The connection has proven itself: it leaves the pending set and can no longer be
    /// evicted. Returns false if it had been evicted already.
    pub fn settle(&mut self) -> bool {
        match self.id.take() {
            Some(id) => self.doorway.lock().settle(id).is_some(),
            None => !self.token.is_cancelled(),
        }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            self.doorway.lock().settle(id);
        }
    }
}

/// The listen backlog asked for (the kernel caps it at `net.core.somaxconn`, as it does Go's,
/// which asks for that value): a burst of connections waits in the kernel, not in SYN retries.
pub const LISTEN_BACKLOG: u32 = 4096;

/// A TCP listener on `addr` with [`LISTEN_BACKLOG`] and `SO_REUSEADDR` (a restarted agent must
/// be able to bind while old connections linger in TIME_WAIT).
pub fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Counters of one [`Acceptor`].
#[derive(Debug, Default)]
pub struct AcceptStats {
    /// Accepts that failed, for any reason.
    pub errors: AtomicU64,
    /// Connections accepted through the reserved descriptor and closed at once, because the
    /// process was out of file descriptors.
    pub closed_out_of_fds: AtomicU64,
}

/// Accepts connections, riding out errors (above all running out of file descriptors) with a
/// back-off, a reserved descriptor and a rate-limited log line.
#[derive(Debug)]
pub struct Acceptor {
    listener: TcpListener,
    /// Opened at start and given up only to accept-and-close when descriptors run out.
    reserve: Option<std::fs::File>,
    what: &'static str,
    log: LogLimiter,
    backoff: Duration,
    stats: Arc<AcceptStats>,
}

impl Acceptor {
    /// Wraps `listener`; `what` names it in log lines (`rpc`, `gossip`).
    pub fn new(listener: TcpListener, what: &'static str, stats: Arc<AcceptStats>) -> Acceptor {
        Acceptor {
            listener,
            reserve: open_reserve(),
            what,
            log: LogLimiter::new(ACCEPT_LOG_INTERVAL),
            backoff: FIRST_ACCEPT_BACKOFF,
            stats,
        }
    }

    /// The next connection; failed accepts are counted, logged (rate-limited) and retried
    /// after a pause that doubles while they keep failing.
    pub async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        loop {
            match self.listener.accept().await {
                Ok(accepted) => {
                    self.backoff = FIRST_ACCEPT_BACKOFF;
                    return accepted;
                }
                Err(error) => {
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    let out_of_fds = is_out_of_fds(&error);
                    let shed = if out_of_fds { self.shed_one().await } else { 0 };
                    if let Some(suppressed) = self.log.check(std::time::Instant::now()) {
                        let errors = self.stats.errors.load(Ordering::Relaxed);
                        if out_of_fds {
                            tracing::warn!(
                                listener = self.what,
                                %error,
                                errors,
                                suppressed,
                                shed,
                                "out of file descriptors; accept paused"
                            );
                        } else {
                            tracing::warn!(
                                listener = self.what,
                                %error,
                                errors,
                                suppressed,
                                "accept failed"
                            );
                        }
                    }
                    tokio::time::sleep(self.backoff).await;
                    self.backoff = (self.backoff * 2).min(MAX_ACCEPT_BACKOFF);
                }
            }
        }
    }

    /// Gives up the reserved descriptor to accept one waiting connection and close it, then
    /// takes the reserve back. Returns how many connections were closed (0 or 1).
    async fn shed_one(&mut self) -> u64 {
        let Some(reserve) = self.reserve.take() else {
            self.reserve = open_reserve();
            return 0;
        };
        drop(reserve);
        let accepted = tokio::time::timeout(Duration::from_millis(1), self.listener.accept()).await;
        let shed = match accepted {
            Ok(Ok((stream, _))) => {
                drop(stream);
                self.stats.closed_out_of_fds.fetch_add(1, Ordering::Relaxed);
                1
            }
            _ => 0,
        };
        self.reserve = open_reserve();
        shed
    }
}

fn open_reserve() -> Option<std::fs::File> {
    std::fs::File::open("/dev/null")
        .inspect_err(|error| tracing::debug!(%error, "cannot open the reserve descriptor"))
        .ok()
}

/// Whether an accept failed because the process or the system is out of file descriptors.
fn is_out_of_fds(error: &std::io::Error) -> bool {
    const EMFILE: i32 = 24;
    const ENFILE: i32 = 23;
    matches!(error.raw_os_error(), Some(EMFILE | ENFILE))
}

/// Raises the soft limit on open files to the hard limit, so that the doors can hold as many
/// connections as the system allows the agent; returns the soft limit in force afterwards
/// (`None`: unlimited).
pub fn raise_fd_limit() -> Option<u64> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    let before = limit.current;
    let below_hard = match (limit.current, limit.maximum) {
        (Some(current), Some(maximum)) => current < maximum,
        (Some(_), None) => true,
        (None, _) => false,
    };
    if below_hard {
        limit.current = limit.maximum;
        if let Err(error) = setrlimit(Resource::Nofile, limit) {
            tracing::debug!(%error, ?before, "cannot raise the open file limit");
            return before;
        }
    }
    getrlimit(Resource::Nofile).current
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[test]
    fn a_source_at_its_cap_loses_its_oldest_pending_connection() {
        let mut pending = Pending::new(3, 100);
        let ids: Vec<u64> = (0..3).map(|n| pending.admit(ip(1), n).0).collect();
        let (_, evicted) = pending.admit(ip(1), 3);
        assert_eq!(evicted, Some(0), "the oldest from that source");
        assert_eq!(pending.len(), 3);
        // Another source is not touched.
        let (_, evicted) = pending.admit(ip(2), 10);
        assert_eq!(evicted, None);
        assert_eq!(pending.settle(ids[0]), None, "evicted already");
        assert_eq!(pending.settle(ids[1]), Some(1));
    }

    #[test]
    fn the_total_cap_evicts_the_oldest_of_all_sources() {
        let mut pending = Pending::new(10, 3);
        pending.admit(ip(1), "a");
        pending.admit(ip(2), "b");
        pending.admit(ip(3), "c");
        assert_eq!(pending.admit(ip(4), "d").1, Some("a"));
        assert_eq!(pending.admit(ip(4), "e").1, Some("b"));
        assert_eq!(pending.len(), 3);
    }

    #[test]
    fn a_settled_connection_is_never_evicted() {
        let mut pending = Pending::new(2, 2);
        let (first, _) = pending.admit(ip(1), 1);
        assert_eq!(pending.settle(first), Some(1));
        // Many newcomers come and go; the settled one is out of reach.
        for n in 0..1000 {
            let (_, evicted) = pending.admit(ip(1), n + 2);
            assert_ne!(evicted, Some(1));
        }
        assert_eq!(pending.len(), 2);
        assert!(!pending.is_empty());
    }

    #[test]
    fn a_newcomer_always_gets_in_however_many_idle_ones_wait() {
        let mut pending = Pending::new(8, 64);
        for n in 0..10_000 {
            pending.admit(ip((n % 200) as u8), n);
        }
        let (newest, _) = pending.admit(ip(1), 99_999);
        assert_eq!(pending.settle(newest), Some(99_999));
        assert!(pending.len() <= 64);
    }

    #[test]
    fn the_open_file_limit_is_raised_to_the_hard_limit() {
        use rustix::process::{Resource, getrlimit, setrlimit};
        let limit = getrlimit(Resource::Nofile);
        let Some(maximum) = limit.maximum else {
            return; // Unlimited: nothing to raise to.
        };
        // One below the hard limit, so that other tests in this process lose nothing.
        let mut lowered = limit;
        lowered.current = Some(maximum - 1);
        setrlimit(Resource::Nofile, lowered).unwrap();
        assert_eq!(raise_fd_limit(), Some(maximum));
        assert_eq!(getrlimit(Resource::Nofile).current, Some(maximum));
    }

    #[tokio::test]
    async fn an_evicted_admission_is_cancelled_and_a_settled_one_is_kept() {
        let doorway = Doorway::new(1, 10);
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let first = doorway.admit(peer);
        let mut second = doorway.admit(peer);
        assert!(first.evicted().is_cancelled());
        assert!(second.settle());
        let third = doorway.admit(peer);
        assert!(!second.evicted().is_cancelled());
        assert_eq!(doorway.num_evicted(), 1);
        assert_eq!(doorway.num_pending(), 1);
        drop(third);
        assert_eq!(doorway.num_pending(), 0);
    }
}
