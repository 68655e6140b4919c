//! The guest side of the ABI, compiled only for wasm: the bodies of the exports that
//! [`register_plugin!`](crate::register_plugin) emits, the `serf.*` imports, the panic hook.
//!
//! All of the SDK's `unsafe` is in this module. It owns the two pieces of per-instance state:
//! the input buffer the host writes payloads into, and the plugin value. It does not decide
//! anything about events; it decodes them and hands them to [`Plugin`]. The host drives it,
//! one export call at a time (a wasm instance is single-threaded).

use std::cell::RefCell;
use std::sync::Once;

use crate::Plugin;
use crate::abi::{LogLevel, Member, QueryRequest};
use crate::error::HostError;
use crate::host::Host;
use crate::input::{self, Input};

pub mod sys {
    //! The raw host calls of ABI v1, exactly as the module imports them (module `serf`).
    //!
    //! Low level: plugins should use [`Host`](crate::Host), which passes valid pointers and
    //! types the result. These exist for code that has to break the contract on purpose, such
    //! as the sandbox tests' misbehaving plugin. Pointers are guest memory offsets and lengths
    //! are byte counts, both as `i32`; the return value is `>= 0` on success or a negative
    //! [`Status`](crate::Status) code. A pointer and length outside guest memory is reported as
    //! `Status::InvalidMemory`, never a crash.

    // SAFETY: the signatures are those of `docs/plugin-abi.md` and `abi::IMPORT_*`, and the
    // host links exactly these. Each call only *reads* guest memory, after the host has
    // checked the range against the memory's size, and never writes to guest memory or calls
    // back into the guest. So no argument values, however wrong, can cause undefined behaviour
    // in the guest, and the functions are declared `safe`.
    #[link(wasm_import_module = "serf")]
    unsafe extern "C" {
        /// `serf.log(level, ptr, len)`: one UTF-8 log line at a [`LogLevel`](crate::LogLevel)
        /// code.
        #[link_name = "log"]
        pub safe fn log(level: i32, ptr: i32, len: i32) -> i32;

        /// `serf.set_error(ptr, len)`: the error text for the export call in progress.
        #[link_name = "set_error"]
        pub safe fn set_error(ptr: i32, len: i32) -> i32;

        /// `serf.respond(ptr, len)`: the response to the query being handled.
        #[link_name = "respond"]
        pub safe fn respond(ptr: i32, len: i32) -> i32;

        // Capability imports (ABI v1.1).

        /// `serf.fire_event(ptr, len)`: fires the user event of a msgpack
        /// [`FireEvent`](crate::abi::FireEvent). Needs the `events` capability.
        #[link_name = "fire_event"]
        pub safe fn fire_event(ptr: i32, len: i32) -> i32;

        /// `serf.query(ptr, len)`: sends the query of a msgpack
        /// [`QueryRequest`](crate::abi::QueryRequest); returns its handle. Needs the
        /// `queries` capability.
        #[link_name = "query"]
        pub safe fn query(ptr: i32, len: i32) -> i32;
    }

    // SAFETY: as above, except that this call *writes* guest memory: up to `out_cap` bytes at
    // `out_ptr`, after checking that range against the memory's size, and only when the
    // whole member list fits. So it is `unsafe`: the caller must own those bytes.
    #[link(wasm_import_module = "serf")]
    unsafe extern "C" {
        /// `serf.members(out_ptr, out_cap)`: writes the msgpack
        /// [`MemberList`](crate::abi::MemberList) at `out_ptr` if it fits in `out_cap` bytes;
        /// returns its length either way (or a negative status). Needs the `members`
        /// capability.
        ///
        /// # Safety
        ///
        /// `out_ptr..out_ptr + out_cap` must be memory the caller may overwrite.
        #[link_name = "members"]
        pub fn members(out_ptr: i32, out_cap: i32) -> i32;
    }

    // Jobs (ABI v1.1). SAFETY: as for the first block: these only read guest memory, after
    // the host has checked the range.
    #[link(wasm_import_module = "serf")]
    unsafe extern "C" {
        /// `serf.job_start(ptr, len)`: starts the job of a msgpack
        /// [`JobStart`](crate::abi::JobStart); returns its id (or a negative status).
        #[link_name = "job_start"]
        pub safe fn job_start(ptr: i32, len: i32) -> i32;

        /// `serf.job_kill(id)`: kills one of this plugin's jobs.
        #[link_name = "job_kill"]
        pub safe fn job_kill(id: i32) -> i32;

        /// `serf.job_reap(id)`: deletes the record of one of this plugin's ended jobs.
        #[link_name = "job_reap"]
        pub safe fn job_reap(id: i32) -> i32;
    }

    // Commands (ABI v1.1). SAFETY: `command_start` only reads guest memory; the other two also
    // write up to `out_cap` bytes at `out_ptr`, after checking the range, and only when the
    // whole result fits, so they are `unsafe` as `members` is.
    #[link(wasm_import_module = "serf")]
    unsafe extern "C" {
        /// `serf.command_start(ptr, len)`: starts the granted command of a msgpack
        /// [`CommandRequest`](crate::abi::CommandRequest) as a job; returns its id.
        #[link_name = "command_start"]
        pub safe fn command_start(ptr: i32, len: i32) -> i32;

        /// `serf.command_run(ptr, len, out_ptr, out_cap)`: runs the granted command and
        /// writes its msgpack [`CommandResult`](crate::abi::CommandResult) at `out_ptr` if it
        /// fits; returns its length either way (or a negative status).
        ///
        /// # Safety
        ///
        /// `out_ptr..out_ptr + out_cap` must be memory the caller may overwrite.
        #[link_name = "command_run"]
        pub fn command_run(ptr: i32, len: i32, out_ptr: i32, out_cap: i32) -> i32;

        /// `serf.command_result(out_ptr, out_cap)`: the result the last `command_run` could
        /// not fit.
        ///
        /// # Safety
        ///
        /// `out_ptr..out_ptr + out_cap` must be memory the caller may overwrite.
        #[link_name = "command_result"]
        pub fn command_result(out_ptr: i32, out_cap: i32) -> i32;
    }

    // SAFETY: as for `members`: this call writes up to `out_cap` bytes at `out_ptr`, after
    // checking the range, and only when the whole status fits.
    #[link(wasm_import_module = "serf")]
    unsafe extern "C" {
        /// `serf.job_status(id, out_ptr, out_cap)`: writes the msgpack
        /// [`JobInfo`](crate::abi::JobInfo) of one of this plugin's jobs at `out_ptr` if it
        /// fits in `out_cap` bytes; returns its length either way (or a negative status).
        ///
        /// # Safety
        ///
        /// `out_ptr..out_ptr + out_cap` must be memory the caller may overwrite.
        #[link_name = "job_status"]
        pub fn job_status(id: i32, out_ptr: i32, out_cap: i32) -> i32;
    }

    // Effects (ABI v1.2), each with its crate feature: see `guest_effects.rs`.
    #[allow(
        unused_imports,
        unreachable_pub,
        reason = "empty without the effect features"
    )]
    pub use super::effects::sys::*;
}

/// What the SDK's exports return for a refused init or a failed event (the ABI only says
/// "non-zero"); the reason has gone to `set_error` first.
const FAILED: i32 = 1;

thread_local! {
    /// The one input buffer: grown as needed, never shrunk, never freed. The host writes
    /// each payload here; its address is what `serf_input_buffer` returned last.
    static INPUT: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// The plugin, from a successful `serf_init` until `serf_shutdown`.
    static PLUGIN: RefCell<Option<Box<dyn Plugin>>> = const { RefCell::new(None) };
}

/// The host as plugins see it in a wasm build: each method is one import call.
struct WasmHost;

impl Host for WasmHost {
    fn respond(&mut self, payload: &[u8]) -> Result<(), HostError> {
        let (ptr, len) = raw_parts(payload).ok_or(HostError::TooLarge)?;
        HostError::check(sys::respond(ptr, len))
    }

    fn log(&mut self, level: LogLevel, message: &str) {
        log(level, message);
    }

    // Capabilities (ABI v1.1). Each import is linked only with its crate feature: `Host` is
    // used as a trait object, so every method here ends up in the module, and a module that
    // imports a function an older host lacks cannot load there.

    #[cfg(feature = "members")]
    fn members(&mut self) -> Result<Vec<Member>, HostError> {
        members()
    }

    #[cfg(not(feature = "members"))]
    fn members(&mut self) -> Result<Vec<Member>, HostError> {
        Err(missing_feature("members", "members"))
    }

    #[cfg(feature = "events")]
    fn fire_event(&mut self, name: &str, payload: &[u8], coalesce: bool) -> Result<(), HostError> {
        let request = input::encode_fire_event(name, payload, coalesce);
        let (ptr, len) = raw_parts(&request).ok_or(HostError::TooLarge)?;
        HostError::check(sys::fire_event(ptr, len))
    }

    #[cfg(not(feature = "events"))]
    fn fire_event(&mut self, name: &str, payload: &[u8], coalesce: bool) -> Result<(), HostError> {
        let _ = (name, payload, coalesce);
        Err(missing_feature("fire_event", "events"))
    }

    #[cfg(feature = "queries")]
    fn query(&mut self, request: &QueryRequest) -> Result<u32, HostError> {
        let request = input::encode_query_request(request);
        let (ptr, len) = raw_parts(&request).ok_or(HostError::TooLarge)?;
        let handle = sys::query(ptr, len);
        HostError::check(handle)?;
        Ok(handle as u32)
    }

    #[cfg(not(feature = "queries"))]
    fn query(&mut self, request: &QueryRequest) -> Result<u32, HostError> {
        let _ = request;
        Err(missing_feature("query", "queries"))
    }

    // Jobs (ABI v1.1), linked only with the `jobs` crate feature, for the same reason.

    #[cfg(feature = "jobs")]
    fn start_job(&mut self, name: &str, arg: &[u8]) -> Result<u32, HostError> {
        let request = input::encode_job_start(name, arg);
        let (ptr, len) = raw_parts(&request).ok_or(HostError::TooLarge)?;
        let id = sys::job_start(ptr, len);
        HostError::check(id)?;
        Ok(id as u32)
    }

    #[cfg(feature = "jobs")]
    fn job_status(&mut self, id: u32) -> Result<crate::abi::JobInfo, HostError> {
        job_status(id)
    }

    #[cfg(feature = "jobs")]
    fn kill_job(&mut self, id: u32) -> Result<(), HostError> {
        let id = i32::try_from(id).map_err(|_| HostError::NotFound)?;
        HostError::check(sys::job_kill(id))
    }

    #[cfg(feature = "jobs")]
    fn reap_job(&mut self, id: u32) -> Result<(), HostError> {
        let id = i32::try_from(id).map_err(|_| HostError::NotFound)?;
        HostError::check(sys::job_reap(id))
    }

    #[cfg(not(feature = "jobs"))]
    fn start_job(&mut self, name: &str, arg: &[u8]) -> Result<u32, HostError> {
        let _ = (name, arg);
        Err(jobs_feature_missing("start_job"))
    }

    #[cfg(not(feature = "jobs"))]
    fn job_status(&mut self, id: u32) -> Result<crate::abi::JobInfo, HostError> {
        let _ = id;
        Err(jobs_feature_missing("job_status"))
    }

    #[cfg(not(feature = "jobs"))]
    fn kill_job(&mut self, id: u32) -> Result<(), HostError> {
        let _ = id;
        Err(jobs_feature_missing("kill_job"))
    }

    #[cfg(not(feature = "jobs"))]
    fn reap_job(&mut self, id: u32) -> Result<(), HostError> {
        let _ = id;
        Err(jobs_feature_missing("reap_job"))
    }

    // Commands (ABI v1.1), linked only with the `commands` crate feature.

    #[cfg(feature = "commands")]
    fn run_command(
        &mut self,
        name: &str,
        args: &[&str],
        stdin: &[u8],
    ) -> Result<crate::abi::CommandResult, HostError> {
        run_command(&input::encode_command_request(name, args, stdin))
    }

    #[cfg(feature = "commands")]
    fn start_command(&mut self, name: &str, args: &[&str], stdin: &[u8]) -> Result<u32, HostError> {
        let request = input::encode_command_request(name, args, stdin);
        let (ptr, len) = raw_parts(&request).ok_or(HostError::TooLarge)?;
        let id = sys::command_start(ptr, len);
        HostError::check(id)?;
        Ok(id as u32)
    }

    #[cfg(not(feature = "commands"))]
    fn run_command(
        &mut self,
        name: &str,
        args: &[&str],
        stdin: &[u8],
    ) -> Result<crate::abi::CommandResult, HostError> {
        let _ = (name, args, stdin);
        Err(missing_feature("run_command", "commands"))
    }

    #[cfg(not(feature = "commands"))]
    fn start_command(&mut self, name: &str, args: &[&str], stdin: &[u8]) -> Result<u32, HostError> {
        let _ = (name, args, stdin);
        Err(missing_feature("start_command", "commands"))
    }

    // Effects (ABI v1.2): each in `guest_effects.rs`, linked only with its crate feature.

    fn http(
        &mut self,
        request: &crate::abi::HttpRequest,
    ) -> Result<crate::abi::HttpResponse, HostError> {
        effects::http(request)
    }

    fn state_get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, HostError> {
        effects::state_get(key)
    }

    fn state_set(&mut self, key: &[u8], value: &[u8]) -> Result<(), HostError> {
        effects::state_set(key, value)
    }

    fn state_delete(&mut self, key: &[u8]) -> Result<bool, HostError> {
        effects::state_delete(key)
    }

    fn state_list(
        &mut self,
        prefix: &[u8],
        after: &[u8],
        limit: u32,
    ) -> Result<crate::abi::StateKeys, HostError> {
        effects::state_list(prefix, after, limit)
    }

    fn set_tick(&mut self, period: std::time::Duration) -> Result<(), HostError> {
        effects::set_tick(period)
    }

    fn define_metric(
        &mut self,
        name: &str,
        kind: crate::abi::MetricKind,
        help: &str,
    ) -> Result<u32, HostError> {
        effects::define_metric(name, kind, help)
    }

    fn record_metric(&mut self, id: u32, value: f64) -> Result<(), HostError> {
        effects::record_metric(id, value)
    }
}

/// Runs a command through `serf.command_run`, and fetches its result with
/// `serf.command_result` when it did not fit the first buffer.
#[cfg(feature = "commands")]
fn run_command(request: &[u8]) -> Result<crate::abi::CommandResult, HostError> {
    let (ptr, len) = raw_parts(request).ok_or(HostError::TooLarge)?;
    let mut buffer: Vec<u8> = Vec::with_capacity(16 << 10);
    let capacity = i32::try_from(buffer.capacity()).map_err(|_| HostError::TooLarge)?;
    let out = buffer.as_mut_ptr() as usize as u32 as i32;
    // SAFETY: `out..out + capacity` is the spare capacity of `buffer`, which this function owns.
    let mut needed = unsafe { sys::command_run(ptr, len, out, capacity) };
    HostError::check(needed)?;
    if needed as usize > buffer.capacity() {
        buffer.reserve_exact(needed as usize);
        let capacity = i32::try_from(buffer.capacity()).map_err(|_| HostError::TooLarge)?;
        let out = buffer.as_mut_ptr() as usize as u32 as i32;
        // SAFETY: as above, with the grown buffer.
        needed = unsafe { sys::command_result(out, capacity) };
        HostError::check(needed)?;
        if needed as usize > buffer.capacity() {
            return Err(HostError::Unavailable);
        }
    }
    // SAFETY: the host wrote `needed` bytes at the start of the buffer (they fit).
    unsafe { buffer.set_len(needed as usize) };
    input::decode_command_result(&buffer).map_err(|_| HostError::Unavailable)
}

// Effects (ABI v1.2): the imports and the calls behind the methods above.
#[path = "guest_effects.rs"]
mod effects;

/// Says, at warn level, which crate feature a capability call needs, and denies the call.
#[allow(dead_code, reason = "unused when every capability feature is on")]
fn missing_feature(method: &str, feature: &'static str) -> HostError {
    log(
        LogLevel::Warn,
        &format!(
            "host.{method}() needs the serf-plugin-sdk crate feature \"{feature}\" in \
             Cargo.toml (the grant in serf.toml is the other half)"
        ),
    );
    HostError::FeatureMissing(feature)
}

/// The member list through `serf.members`: asks with a buffer, and again with a larger one
/// while the host says the list needs more room (it may grow between two calls).
#[cfg(feature = "members")]
fn members() -> Result<Vec<Member>, HostError> {
    let mut buffer: Vec<u8> = Vec::with_capacity(4096);
    for _ in 0..4 {
        let capacity = i32::try_from(buffer.capacity()).map_err(|_| HostError::TooLarge)?;
        let ptr = buffer.as_mut_ptr() as usize as u32 as i32;
        // SAFETY: `ptr..ptr + capacity` is the spare capacity of `buffer`, which this function
        // owns; the host writes nothing else.
        let len = unsafe { sys::members(ptr, capacity) };
        HostError::check(len)?;
        let len = len as usize;
        if len <= buffer.capacity() {
            // SAFETY: the host wrote `len` bytes at the start of the buffer (it fit).
            unsafe { buffer.set_len(len) };
            // A list the SDK cannot read is the host's fault; report it as unavailable.
            return input::decode_member_list(&buffer).map_err(|_| HostError::Unavailable);
        }
        buffer.reserve_exact(len + len / 8);
    }
    Err(HostError::Unavailable)
}

/// A guest slice as the ABI's `(ptr, len)` pair, or `None` if the length overflows `i32`.
fn raw_parts(bytes: &[u8]) -> Option<(i32, i32)> {
    // wasm32 addresses are 32 bits; the ABI passes them as i32 bit patterns.
    let ptr = bytes.as_ptr() as usize as u32 as i32;
    Some((ptr, i32::try_from(bytes.len()).ok()?))
}

fn log(level: LogLevel, message: &str) {
    // The host truncates long lines anyway; never let a huge one overflow the length.
    let mut end = message.len().min(i32::MAX as usize);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    if let Some((ptr, len)) = raw_parts(&message.as_bytes()[..end]) {
        // A refused log line has nowhere better to go.
        let _ = sys::log(level as i32, ptr, len);
    }
}

/// Hands `message` to `set_error` and returns the failure status for the export.
fn fail(message: &str) -> i32 {
    let bytes = &message.as_bytes()[..message.len().min(i32::MAX as usize)];
    if let Some((ptr, len)) = raw_parts(bytes) {
        let _ = sys::set_error(ptr, len);
    }
    FAILED
}

/// Installs the panic hook, once per instance, before any plugin code runs.
fn install_panic_hook() {
    static INSTALLED: Once = Once::new();
    INSTALLED.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            let message = info.payload_as_str().unwrap_or("non-string panic payload");
            let text = match info.location() {
                Some(at) => format!("plugin panicked at {}:{}: {message}", at.file(), at.line()),
                None => format!("plugin panicked: {message}"),
            };
            log(LogLevel::Error, &text);
        }));
    });
}

/// Body of `serf_input_buffer`: a pointer to at least `size` writable bytes, or 0.
pub fn input_buffer(size: i32) -> i32 {
    install_panic_hook();
    let Ok(size) = usize::try_from(size) else {
        return 0;
    };
    INPUT.with_borrow_mut(|buffer| {
        if buffer.len() < size {
            // Refuse instead of aborting: the host treats 0 as "cannot allocate".
            if buffer.try_reserve_exact(size - buffer.len()).is_err() {
                return 0;
            }
            buffer.resize(size, 0);
        }
        if buffer.capacity() == 0 {
            // An empty Vec's pointer is dangling; give the host a real address even for 0.
            buffer.reserve(1);
        }
        buffer.as_mut_ptr() as usize as u32 as i32
    })
}

/// Decodes the payload the host wrote at `ptr..ptr + len`, which must lie inside the input
/// buffer (the only memory the host was handed).
fn read_input<T>(ptr: i32, len: i32, decode: impl FnOnce(&[u8]) -> T) -> Result<T, String> {
    INPUT.with_borrow(|buffer| {
        let start = buffer.as_ptr() as usize as u32;
        let len_ok = usize::try_from(len).ok().filter(|&len| len <= buffer.len());
        match len_ok {
            Some(len) if ptr as u32 == start => Ok(decode(&buffer[..len])),
            _ => Err(format!(
                "input {ptr:#x}+{len} is not inside the input buffer ({start:#x}+{})",
                buffer.len()
            )),
        }
    })
}

/// Body of `serf_init`: builds the plugin with `Default` and runs [`Plugin::init`].
pub fn init<P: Plugin + Default + 'static>(ptr: i32, len: i32) -> i32 {
    install_panic_hook();
    let ctx = match read_input(ptr, len, input::decode_init) {
        Ok(Ok(ctx)) => ctx,
        Ok(Err(message)) | Err(message) => return fail(&message),
    };
    // A second init (the host never sends one) starts over with a fresh value.
    PLUGIN.set(None);
    let mut plugin = P::default();
    match plugin.init(&ctx, &mut WasmHost) {
        Ok(()) => {
            PLUGIN.set(Some(Box::new(plugin)));
            0
        }
        Err(error) => fail(error.message()),
    }
}

/// Body of `serf_handle`: decodes one envelope and runs [`Plugin::handle`].
pub fn handle(ptr: i32, len: i32) -> i32 {
    install_panic_hook();
    let envelope = match read_input(ptr, len, input::decode_envelope) {
        Ok(Ok(Input::Envelope(envelope))) => envelope,
        Ok(Ok(Input::UnknownKind(kind))) => {
            // New kinds may appear within v1; a plugin cannot know them, so it skips them.
            log(
                LogLevel::Debug,
                &format!("skipped event of unknown kind {kind}"),
            );
            return 0;
        }
        Ok(Err(message)) | Err(message) => return fail(&message),
    };
    PLUGIN.with_borrow_mut(|plugin| match plugin {
        None => fail("serf_handle called before a successful serf_init"),
        Some(plugin) => match plugin.handle(envelope.event, &mut WasmHost) {
            Ok(()) => 0,
            Err(error) => fail(error.message()),
        },
    })
}

/// Body of `serf_shutdown`: runs [`Plugin::shutdown`] and drops the plugin.
pub fn shutdown() {
    install_panic_hook();
    if let Some(mut plugin) = PLUGIN.take() {
        plugin.shutdown(&mut WasmHost);
    }
}

// --- Jobs (ABI v1.1).

/// Says, at warn level, that a job call needs the `jobs` crate feature, and refuses it.
#[cfg(not(feature = "jobs"))]
fn jobs_feature_missing(method: &str) -> HostError {
    log(
        LogLevel::Warn,
        &format!("host.{method}() needs the serf-plugin-sdk crate feature \"jobs\" in Cargo.toml"),
    );
    HostError::FeatureMissing("jobs")
}

/// A job's status through `serf.job_status`: asks with a buffer, and again with a larger one
/// while the host says the status needs more room (its output tail may grow in between).
#[cfg(feature = "jobs")]
fn job_status(id: u32) -> Result<crate::abi::JobInfo, HostError> {
    let id = i32::try_from(id).map_err(|_| HostError::NotFound)?;
    let mut buffer: Vec<u8> = Vec::with_capacity(4096);
    for _ in 0..4 {
        let capacity = i32::try_from(buffer.capacity()).map_err(|_| HostError::TooLarge)?;
        let ptr = buffer.as_mut_ptr() as usize as u32 as i32;
        // SAFETY: `ptr..ptr + capacity` is the spare capacity of `buffer`, which this function
        // owns; the host writes nothing else.
        let len = unsafe { sys::job_status(id, ptr, capacity) };
        HostError::check(len)?;
        let len = len as usize;
        if len <= buffer.capacity() {
            // SAFETY: the host wrote `len` bytes at the start of the buffer (it fit).
            unsafe { buffer.set_len(len) };
            // A status the SDK cannot read is the host's fault; report it as unavailable.
            return input::decode_job_info(&buffer).map_err(|_| HostError::Unavailable);
        }
        buffer.reserve_exact(len + len / 8);
    }
    Err(HostError::Unavailable)
}

/// Body of `serf_job`: decodes the job and runs [`Plugin::run_job`] on the plugin that
/// `serf_init` built in this instance. The return value is the job's exit status.
#[cfg(feature = "jobs")]
pub fn job(ptr: i32, len: i32) -> i32 {
    install_panic_hook();
    let job = match read_input(ptr, len, input::decode_job) {
        Ok(Ok(job)) => job,
        Ok(Err(message)) | Err(message) => return fail(&message),
    };
    PLUGIN.with_borrow_mut(|plugin| match plugin {
        None => fail("serf_job called before a successful serf_init"),
        Some(plugin) => match plugin.run_job(job, &mut WasmHost) {
            Ok(status) => status,
            Err(error) => fail(error.message()),
        },
    })
}

/// The `serf_job` export, emitted only with the `jobs` crate feature.
#[cfg(feature = "jobs")]
#[doc(hidden)]
#[macro_export]
macro_rules! __export_job {
    ($plugin:ty) => {
        const _: () = {
            // SAFETY: as for the exports of `__export_plugin!`.
            #[unsafe(export_name = "serf_job")]
            extern "C" fn serf_job(ptr: i32, len: i32) -> i32 {
                $crate::guest::job(ptr, len)
            }
        };
    };
}

/// Without the `jobs` crate feature the module exports no `serf_job`.
#[cfg(not(feature = "jobs"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __export_job {
    ($plugin:ty) => {};
}

/// The exports of [`register_plugin!`](crate::register_plugin) for wasm builds.
#[doc(hidden)]
#[macro_export]
macro_rules! __export_plugin {
    ($plugin:ty) => {
        const _: () = {
            // SAFETY (every `unsafe(export_name)` below): these are the ABI's export names,
            // which nothing else in a plugin module defines; `register_plugin!` is used once
            // per crate, so each symbol is defined exactly once, and each signature is the
            // one the host calls it with (`docs/plugin-abi.md`).
            #[unsafe(export_name = "serf_plugin_abi_v1")]
            extern "C" fn serf_plugin_abi_v1() {}

            #[unsafe(export_name = "serf_input_buffer")]
            extern "C" fn serf_input_buffer(size: i32) -> i32 {
                $crate::guest::input_buffer(size)
            }

            #[unsafe(export_name = "serf_init")]
            extern "C" fn serf_init(ptr: i32, len: i32) -> i32 {
                $crate::guest::init::<$plugin>(ptr, len)
            }

            #[unsafe(export_name = "serf_handle")]
            extern "C" fn serf_handle(ptr: i32, len: i32) -> i32 {
                $crate::guest::handle(ptr, len)
            }

            #[unsafe(export_name = "serf_shutdown")]
            extern "C" fn serf_shutdown() {
                $crate::guest::shutdown()
            }
        };
        // Jobs (ABI v1.1).
        $crate::__export_job!($plugin);
    };
}
