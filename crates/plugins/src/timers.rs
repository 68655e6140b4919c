//! Plugin ticks (ABI v1.2, timers): one task on the plugin runtime for every plugin.
//!
//! A plugin whose table has `tick = "5s"` (or that called `set_tick`) gets a `tick` event
//! (`abi::Event::Tick`) every period through its own queue, in order with its other events
//! and whatever its `events` filter says. At most one tick is ever queued: a tick that falls
//! due while the last one still waits is coalesced into it (counted, and reported in the next
//! tick's `coalesced`), so a slow plugin is never flooded. Periods are at least
//! [`super::effects::MIN_TICK`]; a plugin that asks for less gets `BadArgument`, counted.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::effects::EffectHost;
use super::{DeliverError, PluginHost};

/// The longest the ticker sleeps without looking (a period set meanwhile wakes it anyway).
const IDLE: Duration = Duration::from_secs(1);

/// Starts the ticker of `effects` for the plugins of `host`, until the plugins stop or either
/// is dropped.
pub fn spawn(effects: &Arc<EffectHost>, host: &Arc<PluginHost>) {
    let stop = host.shutdown_token();
    let wake = Arc::clone(&effects.wake);
    let (effects, plugins) = (Arc::downgrade(effects), Arc::downgrade(host));
    host.runtime().spawn(run(effects, plugins, wake, stop));
}

async fn run(
    effects: Weak<EffectHost>,
    host: Weak<PluginHost>,
    wake: Arc<tokio::sync::Notify>,
    stop: CancellationToken,
) {
    loop {
        let next = {
            let (Some(effects), Some(host)) = (effects.upgrade(), host.upgrade()) else {
                return;
            };
            poll(&effects, &host, Instant::now())
        };
        tokio::select! {
            () = stop.cancelled() => return,
            () = wake.notified() => {}
            () = tokio::time::sleep_until(next.into()) => {}
        }
    }
}

/// Queues every tick due at `now`; returns when to look again.
fn poll(effects: &EffectHost, host: &PluginHost, now: Instant) -> Instant {
    let mut next = now + IDLE;
    for plugin in effects.all() {
        let name = plugin.name().to_owned();
        let pending = Arc::clone(&plugin.tick_pending);
        let due = plugin.poll_tick(now, |event| {
            match host.deliver_flagged(&name, &event, pending) {
                Ok(_) => Ok(()),
                Err(DeliverError::UnknownPlugin(_)) => Err(true),
                Err(_) => Err(false),
            }
        });
        if let Some(due) = due {
            next = next.min(due);
        }
    }
    next
}
