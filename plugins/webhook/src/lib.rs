//! Example plugin: posts member failures and one user event as JSON to a webhook.
//!
//! The handler script it replaces is the classic "notify on failure" one: on `member-failed`
//! (and on a chosen user event, such as `deploy`) it POSTs a small JSON document to a chat or
//! incident tool. As a plugin it needs three grants in its `serf.toml` table, and nothing
//! else: the webhook's origin (`[plugins.webhook.http]`), a store for posts that failed
//! (`[plugins.webhook.state]`), and a tick to retry them (`tick = "5s"`); with
//! `[plugins.webhook.metrics]` it also counts what it sent.
//!
//! ```toml
//! [plugins.webhook]
//! events = "member-failed,user:deploy"
//! tick = "5s"
//! config = { url = "https://hooks.example.com/serf", event = "deploy" }
//! [plugins.webhook.http]
//! allow = ["https://hooks.example.com"]
//! [plugins.webhook.state]
//! [plugins.webhook.metrics]
//! ```
//!
//! Each post is `{"event": "member-failed", "node": "...", "members": [{"name": ...,
//! "addr": ..., "port": ..., "status": ...}]}` or `{"event": "user", "node": "...",
//! "name": "deploy", "payload": "...", "ltime": N}`. A post that fails (no answer, or a status
//! of 400 and above) is kept under `pending/` in the plugin's store and tried again on each
//! tick, oldest first, a few at a time; the store survives traps, reloads and restarts.

use serf_plugin_sdk::{
    Error, Event, Host, HostError, InitContext, Member, MetricKind, Plugin, UserEvent,
};

/// Pending posts retried per tick at most, so one tick stays well within its deadline.
const RETRIES_PER_TICK: u32 = 4;
/// The prefix of pending posts in the store; the rest of the key is a zero-padded number.
const PENDING: &str = "pending/";
/// The store key of the next pending post's number.
const NEXT_KEY: &str = "next";

/// The plugin: its settings, and the ids of its metrics (0 when metrics are not granted).
#[derive(Debug, Default)]
pub struct Webhook {
    url: String,
    event: Option<String>,
    node: String,
    sent: u32,
    failed: u32,
    pending: u32,
}

impl Plugin for Webhook {
    fn init(&mut self, ctx: &InitContext, host: &mut dyn Host) -> Result<(), Error> {
        self.url = ctx
            .config_str("url")
            .ok_or("config needs url = \"https://...\"")?
            .to_owned();
        self.event = ctx.config_str("event").map(str::to_owned);
        self.node = ctx.node.clone();
        // Metrics are optional: without the grant the plugin works the same.
        let mut define = |name: &str, kind: MetricKind, help: &str| {
            host.define_metric(name, kind, help).unwrap_or(0)
        };
        self.sent = define(
            "posts_sent",
            MetricKind::Counter,
            "posts the webhook accepted",
        );
        self.failed = define("posts_failed", MetricKind::Counter, "posts that failed");
        self.pending = define(
            "posts_pending",
            MetricKind::Gauge,
            "posts waiting for a retry",
        );
        Ok(())
    }

    fn handle(&mut self, event: Event, host: &mut dyn Host) -> Result<(), Error> {
        match event {
            Event::MemberFailed { members } => {
                let body = failed_json(&self.node, &members);
                self.post_or_keep(&body, host)
            }
            Event::User(user) if self.event.as_deref() == Some(user.name.as_str()) => {
                let body = user_json(&self.node, &user);
                self.post_or_keep(&body, host)
            }
            Event::Tick(_) => self.retry(host),
            _ => Ok(()),
        }
    }
}

impl Webhook {
    /// Posts `body`; whether the webhook accepted it.
    fn post(&self, body: &[u8], host: &mut dyn Host) -> Result<bool, HostError> {
        let response = host.post_json(&self.url, body)?;
        Ok(response.status < 400)
    }

    fn record(&self, id: u32, value: f64, host: &mut dyn Host) {
        if id != 0 {
            let _ = host.record_metric(id, value);
        }
    }

    /// Posts `body`, or keeps it for a later tick if the post fails.
    fn post_or_keep(&self, body: &[u8], host: &mut dyn Host) -> Result<(), Error> {
        match self.post(body, host) {
            Ok(true) => {
                self.record(self.sent, 1.0, host);
                return Ok(());
            }
            Ok(false) => host.warn("webhook refused the post; kept for a retry"),
            Err(HostError::Denied) => {
                return Err(Error::new(format!(
                    "posting to {} is not allowed: add its origin to [plugins.NAME.http] allow",
                    self.url
                )));
            }
            Err(error) => host.warn(&format!("post failed ({error}); kept for a retry")),
        }
        self.record(self.failed, 1.0, host);
        let number = match host.state_get(NEXT_KEY.as_bytes())? {
            Some(bytes) => String::from_utf8_lossy(&bytes).parse::<u64>().unwrap_or(0),
            None => 0,
        };
        host.state_set(format!("{PENDING}{number:020}").as_bytes(), body)?;
        host.state_set(NEXT_KEY.as_bytes(), (number + 1).to_string().as_bytes())?;
        self.count_pending(host)
    }

    /// Tries the oldest pending posts again; each that goes through is deleted.
    fn retry(&self, host: &mut dyn Host) -> Result<(), Error> {
        let keys = host.state_list(PENDING.as_bytes(), b"", RETRIES_PER_TICK)?;
        for key in keys.keys {
            let Some(body) = host.state_get(&key)? else {
                continue;
            };
            if let Ok(true) = self.post(&body, host) {
                host.state_delete(&key)?;
                self.record(self.sent, 1.0, host);
            } else {
                // The webhook is still down: the rest waits for the next tick.
                break;
            }
        }
        self.count_pending(host)
    }

    fn count_pending(&self, host: &mut dyn Host) -> Result<(), Error> {
        if self.pending != 0 {
            let keys = host.state_list(PENDING.as_bytes(), b"", 0)?;
            self.record(self.pending, keys.keys.len() as f64, host);
        }
        Ok(())
    }
}

/// `text` as a JSON string, quotes included.
fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The post for a `member-failed` event.
pub fn failed_json(node: &str, members: &[Member]) -> Vec<u8> {
    let members: Vec<String> = members
        .iter()
        .map(|m| {
            format!(
                "{{\"name\":{},\"addr\":{},\"port\":{},\"status\":{}}}",
                json_string(&m.name),
                json_string(&m.addr),
                m.port,
                json_string(&m.status)
            )
        })
        .collect();
    format!(
        "{{\"event\":\"member-failed\",\"node\":{},\"members\":[{}]}}",
        json_string(node),
        members.join(",")
    )
    .into_bytes()
}

/// The post for the chosen user event; the payload as text (bytes that are not UTF-8
/// replaced).
pub fn user_json(node: &str, user: &UserEvent) -> Vec<u8> {
    format!(
        "{{\"event\":\"user\",\"node\":{},\"name\":{},\"payload\":{},\"ltime\":{}}}",
        json_string(node),
        json_string(&user.name),
        json_string(&String::from_utf8_lossy(&user.payload)),
        user.ltime
    )
    .into_bytes()
}

serf_plugin_sdk::register_plugin!(Webhook);

#[cfg(test)]
mod tests {
    use super::*;
    use serf_plugin_sdk::HttpResponse;
    use serf_plugin_sdk::testing::{
        MockHost, init_context, member, member_failed, tick, user_event,
    };

    const URL: &str = "http://127.0.0.1:8080/hook";

    fn started(host: &mut MockHost) -> Webhook {
        host.effects
            .grant_http("http://127.0.0.1:8080")
            .grant_state()
            .grant_metrics();
        let mut plugin = Webhook::default();
        let ctx = init_context([("url", URL.into()), ("event", "deploy".into())]);
        host.init(&mut plugin, &ctx).unwrap();
        plugin
    }

    #[test]
    fn a_member_failure_is_posted_as_json() {
        let mut host = MockHost::new();
        let mut plugin = started(&mut host);
        host.deliver(&mut plugin, member_failed([member("web-1", "10.0.0.1")]))
            .unwrap();
        let request = &host.effects.requests[0];
        assert_eq!(
            (request.method.as_str(), request.url.as_str()),
            ("POST", URL)
        );
        let body = String::from_utf8(request.body.clone()).unwrap();
        assert!(body.starts_with("{\"event\":\"member-failed\""), "{body}");
        assert!(body.contains("\"name\":\"web-1\""), "{body}");
        assert_eq!(host.effects.metric("posts_sent").unwrap().value, 1.0);
    }

    #[test]
    fn only_the_chosen_user_event_is_posted() {
        let mut host = MockHost::new();
        let mut plugin = started(&mut host);
        host.deliver(&mut plugin, user_event("other", b"x"))
            .unwrap();
        host.deliver(&mut plugin, user_event("deploy", b"v\"2"))
            .unwrap();
        assert_eq!(host.effects.requests.len(), 1);
        let body = String::from_utf8(host.effects.requests[0].body.clone()).unwrap();
        assert!(body.contains("\"payload\":\"v\\\"2\""), "{body}");
    }

    #[test]
    fn a_failed_post_is_stored_and_retried_on_a_tick() {
        let mut host = MockHost::new();
        let mut plugin = started(&mut host);
        host.effects.responses.push_back(HttpResponse {
            status: 503,
            ..Default::default()
        });
        host.deliver(&mut plugin, user_event("deploy", b"v1"))
            .unwrap();
        let kept = format!("{PENDING}{:020}", 0);
        assert!(host.effects.stored(kept.as_bytes()).is_some());
        assert_eq!(host.effects.metric("posts_pending").unwrap().value, 1.0);
        host.deliver(&mut plugin, tick()).unwrap();
        assert_eq!(host.effects.requests.len(), 2);
        assert_eq!(host.effects.stored(kept.as_bytes()), None);
        assert_eq!(host.effects.metric("posts_pending").unwrap().value, 0.0);
    }

    #[test]
    fn an_origin_not_granted_is_an_error_the_agent_logs() {
        let mut host = MockHost::new();
        host.effects
            .grant_http("http://127.0.0.1:9999")
            .grant_state();
        let mut plugin = Webhook::default();
        let ctx = init_context([("url", URL.into())]);
        host.init(&mut plugin, &ctx).unwrap();
        let error = host
            .deliver(&mut plugin, member_failed([member("a", "10.0.0.2")]))
            .unwrap_err();
        assert!(error.message().contains("not allowed"), "{error}");
        assert!(host.effects.requests.is_empty());
    }
}
