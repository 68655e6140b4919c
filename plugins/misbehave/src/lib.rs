//! A deliberately badly behaved plugin for the agent's sandbox tests.
//!
//! Config key `mode` picks the misbehaviour, triggered by every user event (any name) and every
//! query:
//!
//! | `mode` | on a user event or query |
//! |---|---|
//! | `loop` | spins forever in a loop the optimiser cannot remove (fuel or the deadline must stop it) |
//! | `alloc` | pushes 1 MiB buffers into a static until allocation fails (the memory cap must stop it; Rust then aborts) |
//! | `trap` | panics with `misbehave: trap mode panics on purpose` (the SDK logs it at error level, then the module traps) |
//! | `garbage` | on a query: calls the raw `respond` import with a range past the end of memory, then with one that wraps around the 32-bit address space, then `respond`s 64 KiB; logs each status at warn level; then fails. On a user event: fails. The failure is `set_error("misbehave: garbage mode fails on purpose")` and a non-zero return |
//! | `sleep` | sleeps for an hour in a blocking WASI `poll_oneoff` (the wall-clock deadline must cancel it) |
//! | `good`, missing, or anything else | behaves well: does nothing (an unknown mode is logged at warn level by `serf_init`) |
//!
//! In every mode it behaves well in `serf_init`, on member events and on `dropped` events, so
//! an agent can start with it loaded.

use std::hint::black_box;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use serf_plugin_sdk::{Error, Event, Host, HostError, InitContext, Plugin};

/// The error text of `garbage` mode.
pub const GARBAGE_ERROR: &str = "misbehave: garbage mode fails on purpose";
/// The panic message of `trap` mode.
pub const TRAP_MESSAGE: &str = "misbehave: trap mode panics on purpose";

/// What the plugin does with user events and queries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Nothing: the plugin is well behaved.
    #[default]
    Good,
    /// Spin forever.
    Loop,
    /// Allocate without bound.
    Alloc,
    /// Panic.
    Trap,
    /// Bad host calls, then an error.
    Garbage,
    /// Block in a WASI sleep for an hour.
    Sleep,
}

impl Mode {
    /// The mode named `name` in config key `mode`, or `None` if it names none.
    pub fn from_name(name: &str) -> Option<Mode> {
        Some(match name {
            "good" => Mode::Good,
            "loop" => Mode::Loop,
            "alloc" => Mode::Alloc,
            "trap" => Mode::Trap,
            "garbage" => Mode::Garbage,
            "sleep" => Mode::Sleep,
            _ => return None,
        })
    }

    /// The mode's name in config key `mode`; `good` for [`Mode::Good`].
    pub fn name(self) -> &'static str {
        match self {
            Mode::Good => "good",
            Mode::Loop => "loop",
            Mode::Alloc => "alloc",
            Mode::Trap => "trap",
            Mode::Garbage => "garbage",
            Mode::Sleep => "sleep",
        }
    }
}

/// Remembers the configured mode.
#[derive(Debug, Default)]
pub struct Misbehave {
    mode: Mode,
}

/// Where `alloc` mode puts its memory, so nothing is ever freed.
static HOARD: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

const MIB: usize = 1 << 20;

impl Plugin for Misbehave {
    fn init(&mut self, ctx: &InitContext, host: &mut dyn Host) -> Result<(), Error> {
        self.mode = match ctx.config_value("mode") {
            None => Mode::Good,
            Some(value) => value.as_str().and_then(Mode::from_name).unwrap_or_else(|| {
                host.warn(&format!("unknown mode {value}; behaving well"));
                Mode::Good
            }),
        };
        host.info(&format!("misbehave mode {}", self.mode.name()));
        Ok(())
    }

    fn handle(&mut self, event: Event, host: &mut dyn Host) -> Result<(), Error> {
        let is_query = match event {
            Event::User(_) => false,
            Event::Query(_) => true,
            _ => return Ok(()),
        };
        match self.mode {
            Mode::Good => Ok(()),
            Mode::Loop => spin(),
            Mode::Alloc => hoard(),
            Mode::Trap => panic!("{TRAP_MESSAGE}"),
            Mode::Garbage => {
                if is_query {
                    respond_garbage(host);
                }
                Err(Error::new(GARBAGE_ERROR))
            }
            Mode::Sleep => {
                std::thread::sleep(Duration::from_secs(3600));
                Ok(())
            }
        }
    }
}

serf_plugin_sdk::register_plugin!(Misbehave);

fn spin() -> ! {
    let mut turns: u64 = 0;
    loop {
        turns = black_box(turns.wrapping_add(1));
    }
}

fn hoard() -> ! {
    loop {
        let chunk = black_box(vec![0xa5_u8; MIB]);
        HOARD
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(chunk);
    }
}

/// Calls `respond` with two ranges outside memory, then with 64 KiB, logging each status.
fn respond_garbage(host: &mut dyn Host) {
    #[cfg(target_arch = "wasm32")]
    {
        use serf_plugin_sdk::sys;
        let pages = core::arch::wasm32::memory_size(0) as u64;
        let memory_end = (pages * 65536).min(u64::from(u32::MAX)) as u32 as i32;
        let status = sys::respond(memory_end, 16);
        host.warn(&format!("respond past the end of memory returned {status}"));
        // 0xffff_fff0 + 32 wraps around: a host adding in 32 bits would see a small range.
        let status = sys::respond(-16, 32);
        host.warn(&format!(
            "respond wrapping the address space returned {status}"
        ));
    }
    let status = host
        .respond(&vec![b'x'; 64 * 1024])
        .map_or_else(HostError::code, |()| 0);
    host.warn(&format!("respond with 65536 bytes returned {status}"));
}

#[cfg(test)]
mod tests {
    use std::panic::{AssertUnwindSafe, catch_unwind};

    use serf_plugin_sdk::LogLevel;
    use serf_plugin_sdk::testing::{
        MockHost, dropped, init_context, member, member_failed, member_join, query, user_event,
    };

    use super::*;

    fn plugin_in(mode: &str) -> (Misbehave, MockHost) {
        let mut plugin = Misbehave::default();
        let mut host = MockHost::new();
        host.init(&mut plugin, &init_context([("mode", mode.into())]))
            .unwrap();
        (plugin, host)
    }

    #[test]
    fn modes_are_read_from_config() {
        for (name, mode) in [
            ("good", Mode::Good),
            ("loop", Mode::Loop),
            ("alloc", Mode::Alloc),
            ("trap", Mode::Trap),
            ("garbage", Mode::Garbage),
            ("sleep", Mode::Sleep),
        ] {
            let (plugin, host) = plugin_in(name);
            assert_eq!(plugin.mode, mode);
            assert_eq!(mode.name(), name);
            assert!(host.logged(LogLevel::Info, &format!("misbehave mode {name}")));
        }
    }

    #[test]
    fn no_mode_or_an_unknown_one_behaves_well() {
        let mut plugin = Misbehave::default();
        let mut host = MockHost::new();
        host.init(&mut plugin, &init_context([])).unwrap();
        assert_eq!(plugin.mode, Mode::Good);

        let (mut plugin, mut host) = plugin_in("explode");
        assert_eq!(plugin.mode, Mode::Good);
        assert!(host.logged(LogLevel::Warn, r#"unknown mode "explode""#));
        host.deliver(&mut plugin, user_event("x", b"")).unwrap();
        host.deliver(&mut plugin, query("x", b"")).unwrap();
        assert!(host.responses.is_empty());
    }

    #[test]
    fn member_and_dropped_events_are_harmless_in_every_mode() {
        for mode in ["loop", "alloc", "trap", "garbage", "sleep"] {
            let (mut plugin, mut host) = plugin_in(mode);
            for event in [
                member_join([member("node-a", "127.0.0.1")]),
                member_failed([member("node-b", "127.0.0.2")]),
                dropped(1),
            ] {
                host.deliver(&mut plugin, event).unwrap();
            }
        }
    }

    #[test]
    fn garbage_fails_user_events_without_host_calls() {
        let (mut plugin, mut host) = plugin_in("garbage");
        let error = host.deliver(&mut plugin, user_event("x", b"")).unwrap_err();
        assert_eq!(error.message(), GARBAGE_ERROR);
        assert!(!host.logged(LogLevel::Warn, "respond"));
    }

    #[test]
    fn garbage_queries_send_an_oversized_response_then_fail() {
        let (mut plugin, mut host) = plugin_in("garbage");
        let error = host.deliver(&mut plugin, query("x", b"")).unwrap_err();
        assert_eq!(error.message(), GARBAGE_ERROR);
        assert!(host.responses.is_empty());
        assert!(host.logged(LogLevel::Warn, "respond with 65536 bytes returned -4"));
    }

    #[test]
    fn trap_panics_with_its_message() {
        let (mut plugin, mut host) = plugin_in("trap");
        let panic = catch_unwind(AssertUnwindSafe(|| {
            host.deliver(&mut plugin, user_event("x", b""))
        }))
        .unwrap_err();
        assert_eq!(
            panic.downcast_ref::<String>().map(String::as_str),
            Some(TRAP_MESSAGE)
        );
    }
}
