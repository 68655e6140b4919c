//! Joining: seed addresses as users write them, resolved outside the agent task, Serf's error
//! text when no seed answers, and the `-retry-join` loop.
//!
//! DNS and retries happen here, on the caller's task; the agent task only ever sees
//! `SocketAddr`s (`Command::Join`).

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serf_gossip::JoinOutcome;

/// A seed address split into host and port: `[name/]host[:port]`, `[v6]:port`, `[v6]`, or a
/// bare IPv6 address; the port defaults to `default_port`. The optional node name before `/`
/// is accepted and ignored, as memberlist only uses it for logging.
pub(crate) fn split_join_addr(text: &str, default_port: u16) -> Result<(String, u16), String> {
    let mut addr = text;
    if let Some(slash) = text.find('/') {
        if slash == 0 {
            return Err("empty node name provided".to_owned());
        }
        addr = &text[slash + 1..];
    }
    let (host, port) = if has_port(addr) {
        let (host, port) = match addr.strip_prefix('[') {
            Some(rest) => {
                let (host, after) = rest
                    .split_once(']')
                    .ok_or_else(|| format!("address {addr}: missing ']' in address"))?;
                let port = after
                    .strip_prefix(':')
                    .ok_or_else(|| format!("address {addr}: missing port in address"))?;
                (host, port)
            }
            None => addr
                .rsplit_once(':')
                .ok_or_else(|| format!("address {addr}: missing port in address"))?,
        };
        let port = port
            .parse::<u16>()
            .map_err(|_| format!("invalid port {port:?} in address {addr}"))?;
        (host, port)
    } else {
        (addr.trim_matches(|c| c == '[' || c == ']'), default_port)
    };
    if host.contains('[') || host.contains(']') {
        return Err(format!("address {addr}: unexpected bracket in address"));
    }
    Ok((host.to_owned(), port))
}

/// Whether the address carries a port: after `]` when bracketed, else when it has exactly one
/// colon (an unbracketed IPv6 address cannot have one).
fn has_port(addr: &str) -> bool {
    if addr.rfind('[') == Some(0) {
        return match (addr.rfind(':'), addr.rfind(']')) {
            (Some(colon), Some(bracket)) => colon > bracket,
            (Some(_), None) => true,
            _ => false,
        };
    }
    addr.matches(':').count() == 1
}

/// Resolves one seed address to every address its host names (an IP needs no lookup).
pub(crate) async fn resolve_join_addr(
    text: &str,
    default_port: u16,
) -> Result<Vec<SocketAddr>, String> {
    let (host, port) = split_join_addr(text, default_port)?;
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    if host.is_empty() {
        return Err(format!("address {text}: missing host"));
    }
    let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|error| format!("lookup {host}: {}", serf_rpc::go_text::io_error(&error)))?
        .collect();
    let mut addrs: Vec<SocketAddr> = Vec::with_capacity(found.len());
    for addr in found {
        if !addrs.contains(&addr) {
            addrs.push(addr);
        }
    }
    if addrs.is_empty() {
        return Err(format!("lookup {host}: no such host"));
    }
    Ok(addrs)
}

/// The seeds of one join, resolved; the errors keep the order the user wrote them in.
pub(crate) struct ResolvedSeeds {
    /// Each seed as written, with its addresses or why it did not resolve.
    seeds: Vec<(String, Result<Vec<SocketAddr>, String>)>,
}

impl ResolvedSeeds {
    /// Resolves every seed, one after another (as Serf does).
    pub(crate) async fn resolve(seeds: &[String], default_port: u16) -> ResolvedSeeds {
        let mut resolved = Vec::with_capacity(seeds.len());
        for seed in seeds {
            let addrs = resolve_join_addr(seed, default_port).await;
            if let Err(error) = &addrs {
                tracing::warn!(addr = %seed, %error, "cannot resolve join address");
            }
            resolved.push((seed.clone(), addrs));
        }
        ResolvedSeeds { seeds: resolved }
    }

    /// Every address to contact, in order.
    pub(crate) fn addrs(&self) -> Vec<SocketAddr> {
        self.seeds
            .iter()
            .filter_map(|(_, addrs)| addrs.as_ref().ok())
            .flatten()
            .copied()
            .collect()
    }

    /// The join's result as Serf reports it: the number of nodes contacted, or, when none was,
    /// every failure (resolution and contact) in one message.
    pub(crate) fn result(&self, outcome: Option<&JoinOutcome>) -> Result<usize, String> {
        let joined = outcome.map_or(0, |outcome| outcome.joined);
        if joined > 0 {
            return Ok(joined);
        }
        let mut contact_errors: Vec<(SocketAddr, String)> =
            outcome.map(|o| o.errors.clone()).unwrap_or_default();
        let mut errors = Vec::new();
        for (seed, addrs) in &self.seeds {
            match addrs {
                Err(error) => errors.push(format!("Failed to resolve {seed}: {error}")),
                Ok(addrs) => {
                    for addr in addrs {
                        if let Some(at) = contact_errors.iter().position(|(a, _)| a == addr) {
                            let (addr, error) = contact_errors.remove(at);
                            errors.push(format!("Failed to join {}: {error}", addr.ip()));
                        }
                    }
                }
            }
        }
        for (addr, error) in contact_errors {
            errors.push(format!("Failed to join {}: {error}", addr.ip()));
        }
        if errors.is_empty() {
            // Serf reports success with zero nodes when nothing failed (no seeds at all).
            return Ok(0);
        }
        Err(multi_error(&errors))
    }
}

/// Several errors in one message, as Serf's CLI prints them (`1 error occurred:` ...).
pub(crate) fn multi_error(errors: &[String]) -> String {
    if let [only] = errors {
        return format!("1 error occurred:\n\t* {only}\n\n");
    }
    let points: Vec<String> = errors.iter().map(|error| format!("* {error}")).collect();
    format!(
        "{} errors occurred:\n\t{}\n\n",
        errors.len(),
        points.join("\n\t")
    )
}

/// Runs `join` until it succeeds, pausing `interval` between attempts. With `max_attempts`
/// above zero, gives up (returns `None`) once that many attempts *after the first* have failed,
/// as Serf's `-retry-max` counts.
pub async fn retry_join<F, Fut>(mut join: F, interval: Duration, max_attempts: u32) -> Option<usize>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<usize, String>>,
{
    let mut failed: u32 = 0;
    loop {
        tracing::info!("joining cluster");
        match join().await {
            Ok(joined) => {
                tracing::info!(joined, "join completed");
                return Some(joined);
            }
            Err(error) => {
                failed = failed.saturating_add(1);
                if max_attempts > 0 && failed > max_attempts {
                    tracing::error!(
                        attempts = failed,
                        "maximum retry join attempts made, exiting"
                    );
                    return None;
                }
                tracing::warn!(error = %error.trim_end(), retry_in = ?interval, "join failed");
                tokio::time::sleep(interval).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serf_gossip::JoinId;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn split(text: &str) -> Result<(String, u16), String> {
        split_join_addr(text, 7946)
    }

    #[test]
    fn seed_addresses_take_the_default_port_when_they_have_none() {
        assert_eq!(split("10.0.0.1"), Ok(("10.0.0.1".into(), 7946)));
        assert_eq!(split("10.0.0.1:8000"), Ok(("10.0.0.1".into(), 8000)));
        assert_eq!(split("node-a/10.0.0.1:8000"), Ok(("10.0.0.1".into(), 8000)));
        assert_eq!(split("example.com"), Ok(("example.com".into(), 7946)));
        assert_eq!(split("example.com:1"), Ok(("example.com".into(), 1)));
        assert_eq!(split("[::1]:8000"), Ok(("::1".into(), 8000)));
        assert_eq!(split("[::1]"), Ok(("::1".into(), 7946)));
        assert_eq!(split("::1"), Ok(("::1".into(), 7946)));
        assert_eq!(split("fe80::1:2"), Ok(("fe80::1:2".into(), 7946)));
        assert_eq!(
            split_join_addr("10.0.0.1", 8301),
            Ok(("10.0.0.1".into(), 8301))
        );
    }

    #[test]
    fn malformed_seed_addresses_are_refused_with_a_reason() {
        for (text, needle) in [
            ("/10.0.0.1", "empty node name"),
            ("10.0.0.1:http", "invalid port"),
            ("10.0.0.1:70000", "invalid port"),
            ("10.0.0.1:", "invalid port"),
            ("[::1]x:80", "missing port"),
        ] {
            let error = split(text).unwrap_err();
            assert!(error.contains(needle), "{text}: {error}");
        }
    }

    #[tokio::test]
    async fn ip_seeds_resolve_without_a_lookup_and_names_with_one() {
        assert_eq!(
            resolve_join_addr("127.0.0.1", 7946).await,
            Ok(vec!["127.0.0.1:7946".parse().unwrap()])
        );
        assert_eq!(
            resolve_join_addr("[::1]:7000", 7946).await,
            Ok(vec!["[::1]:7000".parse().unwrap()])
        );
        let local = resolve_join_addr("localhost:7001", 7946).await.unwrap();
        assert!(!local.is_empty());
        assert!(
            local
                .iter()
                .all(|a| a.ip().is_loopback() && a.port() == 7001)
        );
        let error = resolve_join_addr("no-such-host.invalid", 7946)
            .await
            .unwrap_err();
        assert!(
            error.starts_with("lookup no-such-host.invalid: "),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_join_reaching_nobody_reports_every_failure_in_order() {
        let seeds = [
            "127.0.0.1".to_owned(),
            "/bad".to_owned(),
            "127.0.0.2:8000".to_owned(),
        ];
        let resolved = ResolvedSeeds::resolve(&seeds, 7946).await;
        let addrs = resolved.addrs();
        assert_eq!(
            addrs,
            [
                "127.0.0.1:7946".parse::<SocketAddr>().unwrap(),
                "127.0.0.2:8000".parse().unwrap()
            ]
        );
        let outcome = JoinOutcome {
            id: JoinId(1),
            joined: 0,
            errors: vec![
                (addrs[1], "dial tcp 127.0.0.2:8000: i/o timeout".into()),
                (
                    addrs[0],
                    "dial tcp 127.0.0.1:7946: connect: connection refused".into(),
                ),
            ],
        };
        assert_eq!(
            resolved.result(Some(&outcome)).unwrap_err(),
            "3 errors occurred:\n\
             \t* Failed to join 127.0.0.1: dial tcp 127.0.0.1:7946: connect: connection refused\n\
             \t* Failed to resolve /bad: empty node name provided\n\
             \t* Failed to join 127.0.0.2: dial tcp 127.0.0.2:8000: i/o timeout\n\n"
        );
        let one = ResolvedSeeds::resolve(&seeds[1..2], 7946).await;
        assert_eq!(
            one.result(None).unwrap_err(),
            "1 error occurred:\n\t* Failed to resolve /bad: empty node name provided\n\n"
        );
        let partly = JoinOutcome {
            joined: 1,
            ..outcome
        };
        assert_eq!(resolved.result(Some(&partly)), Ok(1));
    }

    #[tokio::test(start_paused = true)]
    async fn retry_join_gives_up_after_retry_max_extra_attempts() {
        let attempts = AtomicU32::new(0);
        let started = tokio::time::Instant::now();
        let joined = retry_join(
            || async {
                attempts.fetch_add(1, Ordering::Relaxed);
                Err::<usize, _>("nobody home".to_owned())
            },
            Duration::from_secs(30),
            2,
        )
        .await;
        assert_eq!(joined, None);
        assert_eq!(attempts.load(Ordering::Relaxed), 3);
        assert_eq!(started.elapsed(), Duration::from_secs(60));
    }

    #[tokio::test(start_paused = true)]
    async fn retry_join_keeps_trying_until_a_join_succeeds() {
        let attempts = AtomicU32::new(0);
        let started = tokio::time::Instant::now();
        let joined = retry_join(
            || async {
                match attempts.fetch_add(1, Ordering::Relaxed) {
                    0..5 => Err("not yet".to_owned()),
                    _ => Ok(2),
                }
            },
            Duration::from_secs(1),
            0,
        )
        .await;
        assert_eq!(joined, Some(2));
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }
}
