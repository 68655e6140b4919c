//! The settings a reload applies while the agent runs, as Serf's SIGHUP does: the log level,
//! the event handlers and the tags. Each is applied only when the configuration read now
//! differs from the one read last, so a reload for a plugin's sake leaves alone the tags that
//! `serf tags` set since.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::agent::reload::LiveSettings;
use crate::agent::shell::ShellHandlers;
use crate::config::Config;
use crate::logging::LogHub;
use serf_core::Tags;

/// What a reload needs of the agent to apply its live settings.
pub(super) struct AgentSettings {
    pub(super) logs: LogHub,
    pub(super) handlers: Arc<ShellHandlers>,
    pub(super) node: serf_node::NodeHandle,
}

impl AgentSettings {
    /// Makes `tags` this node's (a member-update for everyone) unless they are already;
    /// `Ok(false)` if they were, an error if they do not fit in node meta.
    async fn apply_tags(&self, tags: Tags) -> Result<bool, String> {
        self.node
            .apply_tags(tags)
            .await
            .map_err(|error| error.to_string())
    }
}

impl LiveSettings for AgentSettings {
    fn apply<'a>(
        &'a self,
        old: &'a Config,
        new: &'a Config,
    ) -> Pin<Box<dyn Future<Output = Vec<String>> + Send + 'a>> {
        Box::pin(async move {
            let mut lines = Vec::new();
            if new.log_level != old.log_level {
                let previous = self.logs.set_level(new.log_level);
                tracing::info!(
                    from = previous.as_str(),
                    to = new.log_level.as_str(),
                    "log level changed"
                );
                lines.push(format!(
                    "log level: {} (was {})",
                    new.log_level.as_str(),
                    previous.as_str()
                ));
            }
            if new.handlers != old.handlers {
                let changes = self.handlers.update(new.handlers.clone());
                tracing::info!(%changes, "event handlers reloaded");
                lines.push(format!("event handlers: {changes}"));
            }
            if new.tags != old.tags {
                match self.apply_tags(new.tags.clone()).await {
                    Ok(true) => {
                        tracing::info!(tags = %describe_tags(&new.tags), "tags reloaded");
                        lines.push(format!("tags: {}", describe_tags(&new.tags)));
                    }
                    Ok(false) => {}
                    Err(error) => lines.push(format!("tags: not applied: {error}")),
                }
            }
            lines
        })
    }
}

/// `role=web, dc=east`, or `none`.
fn describe_tags(tags: &Tags) -> String {
    if tags.is_empty() {
        return "none".to_owned();
    }
    let pairs: Vec<String> = tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
    pairs.join(", ")
}
