//! Effects (ABI v1.2) on the [`MockHost`](super::MockHost): HTTP, state, ticks and metrics,
//! each denied until granted, as in the agent, and recorded for the test to check.
//!
//! ```
//! use serf_plugin_sdk::testing::MockHost;
//! use serf_plugin_sdk::Host;
//!
//! let mut host = MockHost::new();
//! host.effects.grant_http("http://127.0.0.1:8080").grant_state();
//! host.post_json("http://127.0.0.1:8080/hook", b"{}").unwrap();
//! assert!(host.post_json("http://example.com/", b"{}").is_err());
//! host.state_set(b"last", b"1").unwrap();
//! assert_eq!(host.effects.requests[0].url, "http://127.0.0.1:8080/hook");
//! assert_eq!(host.effects.stored(b"last"), Some(&b"1"[..]));
//! ```

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use crate::abi::{self, HttpRequest, HttpResponse, MetricKind, StateKeys};
use crate::error::HostError;

/// A metric a plugin defined on the mock.
#[derive(Debug, Clone, PartialEq)]
pub struct MockMetric {
    /// Its name.
    pub name: String,
    /// Its kind.
    pub kind: MetricKind,
    /// A counter's total, a gauge's value, a histogram's sum.
    pub value: f64,
    /// Observations (histograms).
    pub count: u64,
}

/// What the mock grants and records of the effects.
#[derive(Debug, Clone, Default)]
pub struct MockEffects {
    /// Allowed origins (`scheme://host[:port]`, or `scheme://*.domain`); HTTP is denied while
    /// empty.
    pub http_allow: Vec<String>,
    /// Every request the plugin made to an allowed origin, oldest first.
    pub requests: Vec<HttpRequest>,
    /// Responses to hand out, in order; an empty `200` when none is left.
    pub responses: VecDeque<HttpResponse>,
    /// The store, once granted ([`MockEffects::grant_state`]).
    pub state: Option<BTreeMap<Vec<u8>, Vec<u8>>>,
    /// The store's key quota (default 10000, as the agent's).
    pub max_keys: usize,
    /// Whether ticks are granted, and the period the plugin asked for last.
    pub tick: Option<Duration>,
    /// Whether `set_tick` is granted.
    pub tick_granted: bool,
    /// The metrics defined, once granted ([`MockEffects::grant_metrics`]); ids are positions
    /// plus one.
    pub metrics: Option<Vec<MockMetric>>,
}

impl MockEffects {
    /// Allows requests to `origin`, as `allow = ["..."]` in `[plugins.NAME.http]` does.
    pub fn grant_http(&mut self, origin: &str) -> &mut Self {
        self.http_allow.push(origin.to_owned());
        self
    }

    /// Grants an empty store, as `[plugins.NAME.state]` does.
    pub fn grant_state(&mut self) -> &mut Self {
        self.state.get_or_insert_with(BTreeMap::new);
        if self.max_keys == 0 {
            self.max_keys = 10_000;
        }
        self
    }

    /// Grants `set_tick`, as `tick = "..."` does.
    pub fn grant_tick(&mut self) -> &mut Self {
        self.tick_granted = true;
        self
    }

    /// Grants metrics, as `[plugins.NAME.metrics]` does.
    pub fn grant_metrics(&mut self) -> &mut Self {
        self.metrics.get_or_insert_with(Vec::new);
        self
    }

    /// The value stored under `key`.
    pub fn stored(&self, key: &[u8]) -> Option<&[u8]> {
        self.state.as_ref()?.get(key).map(Vec::as_slice)
    }

    /// The metric called `name`.
    pub fn metric(&self, name: &str) -> Option<&MockMetric> {
        self.metrics.as_ref()?.iter().find(|m| m.name == name)
    }

    /// Whether `url`'s origin is allowed: its scheme and authority match an entry.
    fn allows(&self, url: &str) -> bool {
        let Some((scheme, rest)) = url.split_once("://") else {
            return false;
        };
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        if authority.contains('@') {
            return false;
        }
        self.http_allow.iter().any(|origin| {
            let Some((o_scheme, o_host)) = origin.trim_end_matches('/').split_once("://") else {
                return false;
            };
            o_scheme == scheme
                && match o_host.strip_prefix("*.") {
                    Some(domain) => authority
                        .strip_suffix(domain)
                        .is_some_and(|sub| sub.len() > 1 && sub.ends_with('.')),
                    None => authority.eq_ignore_ascii_case(o_host),
                }
        })
    }

    pub(super) fn http(&mut self, request: &HttpRequest) -> Result<HttpResponse, HostError> {
        if !self.allows(&request.url) {
            return Err(HostError::Denied);
        }
        if !["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"].contains(&request.method.as_str()) {
            return Err(HostError::BadArgument);
        }
        self.requests.push(request.clone());
        Ok(self.responses.pop_front().unwrap_or(HttpResponse {
            status: 200,
            headers: Vec::new(),
            body: Vec::new(),
        }))
    }

    fn store(&mut self) -> Result<&mut BTreeMap<Vec<u8>, Vec<u8>>, HostError> {
        self.state.as_mut().ok_or(HostError::Denied)
    }

    fn check_key(key: &[u8]) -> Result<(), HostError> {
        if key.is_empty() || key.len() > abi::MAX_STATE_KEY_BYTES {
            return Err(HostError::TooLarge);
        }
        Ok(())
    }

    pub(super) fn state_get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, HostError> {
        let store = self.store()?;
        Self::check_key(key)?;
        Ok(store.get(key).cloned())
    }

    pub(super) fn state_set(&mut self, key: &[u8], value: &[u8]) -> Result<(), HostError> {
        let max_keys = self.max_keys;
        let store = self.store()?;
        Self::check_key(key)?;
        if value.len() > abi::MAX_STATE_VALUE_BYTES
            || (!store.contains_key(key) && store.len() >= max_keys)
        {
            return Err(HostError::TooLarge);
        }
        store.insert(key.to_vec(), value.to_vec());
        Ok(())
    }

    pub(super) fn state_delete(&mut self, key: &[u8]) -> Result<bool, HostError> {
        let store = self.store()?;
        Self::check_key(key)?;
        Ok(store.remove(key).is_some())
    }

    pub(super) fn state_list(
        &mut self,
        prefix: &[u8],
        after: &[u8],
        limit: u32,
    ) -> Result<StateKeys, HostError> {
        let store = self.store()?;
        let limit = match limit {
            0 => abi::MAX_STATE_LIST_KEYS,
            n => n.min(abi::MAX_STATE_LIST_KEYS),
        } as usize;
        let mut matching = store
            .keys()
            .filter(|key| key.starts_with(prefix) && (after.is_empty() || key.as_slice() > after));
        let keys: Vec<serde_bytes::ByteBuf> = matching
            .by_ref()
            .take(limit)
            .map(|key| serde_bytes::ByteBuf::from(key.clone()))
            .collect();
        let more = matching.next().is_some();
        Ok(StateKeys { keys, more })
    }

    pub(super) fn set_tick(&mut self, period: Duration) -> Result<(), HostError> {
        if !self.tick_granted {
            return Err(HostError::Denied);
        }
        if !period.is_zero() && period < Duration::from_millis(abi::MIN_TICK_MS) {
            return Err(HostError::BadArgument);
        }
        self.tick = Some(period);
        Ok(())
    }

    pub(super) fn define_metric(&mut self, name: &str, kind: MetricKind) -> Result<u32, HostError> {
        let metrics = self.metrics.as_mut().ok_or(HostError::Denied)?;
        let valid = abi::MetricDefine::is_valid_name(name);
        if !valid {
            return Err(HostError::BadArgument);
        }
        if let Some(index) = metrics.iter().position(|m| m.name == name) {
            return if metrics[index].kind == kind {
                Ok(index as u32 + 1)
            } else {
                Err(HostError::NotAllowed)
            };
        }
        metrics.push(MockMetric {
            name: name.to_owned(),
            kind,
            value: 0.0,
            count: 0,
        });
        Ok(metrics.len() as u32)
    }

    pub(super) fn record_metric(&mut self, id: u32, value: f64) -> Result<(), HostError> {
        let metrics = self.metrics.as_mut().ok_or(HostError::Denied)?;
        if !value.is_finite() {
            return Err(HostError::BadArgument);
        }
        let metric = (id as usize)
            .checked_sub(1)
            .and_then(|index| metrics.get_mut(index))
            .ok_or(HostError::NotFound)?;
        match metric.kind {
            MetricKind::Counter if value < 0.0 => return Err(HostError::BadArgument),
            MetricKind::Counter => metric.value += value,
            MetricKind::Gauge => metric.value = value,
            MetricKind::Histogram => {
                metric.value += value;
                metric.count += 1;
            }
        }
        Ok(())
    }
}
