//! One live plugin instance and the host calls it may make.
//!
//! Every call into the guest runs on an async store under a fuel budget, a memory cap and a
//! wall-clock deadline. The deadline is checked on the engine's epoch ticks
//! ([`super::engine::EPOCH_TICK`]): at every tick the guest yields to the runtime, and once
//! the deadline has passed it traps, however little fuel it burns between ticks (a guest
//! that spends its time in host calls burns almost none). Every host call bounds its own work
//! before it copies or computes anything, so the guest is back in wasm, where the tick is
//! seen, within a bounded time. A trap leaves the instance unusable: the owner drops it and
//! starts a fresh one. Host calls never block and never call back into the guest; a bad
//! pointer from the guest is a status code, never a host panic.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serf_plugin_sdk::abi::{self, LogLevel, Status};
use wasmtime::{Caller, Linker, Memory, ResourceLimiter, Store, Trap, TypedFunc, UpdateDeadline};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtxBuilder, WasiView};

use super::engine::LoadedModule;
use super::grants::Grants;
use super::jobs::{JobCall, JobId};
use super::stdio::LogPipe;
use super::{HostServices, Limits, PluginSpec};
use serf_core::QueryKey;

/// The host functions of ABI v1 and their signatures, as [`super::engine`] checks imports.
pub(crate) const HOST_FUNCTIONS: [(&str, &str); 3] = [
    (abi::IMPORT_LOG, "(i32, i32, i32) -> (i32)"),
    (abi::IMPORT_SET_ERROR, "(i32, i32) -> (i32)"),
    (abi::IMPORT_RESPOND, "(i32, i32) -> (i32)"),
];

/// The error of a refused call whose guest gave no text to `set_error`.
const NO_ERROR_TEXT: &str = "no error text given";
/// Longest log line or error text taken from a plugin, in bytes.
const MAX_TEXT_BYTES: usize = 4096;
/// How long `serf_shutdown` may run at most, whatever the event timeout.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(1);
/// Fuel between two yields to the runtime: well under a millisecond of guest work, so plugins
/// sharing a worker thread take turns finely (the epoch tick is the coarser bound).
const FUEL_YIELD_INTERVAL: u64 = 1_000_000;
/// Bytes one WASI call may copy out of the guest (an `fd_write`'s buffer, a path); a larger
/// request fails with `ENOMEM` before anything is copied.
pub const MAX_WASI_COPY_BYTES: usize = 1 << 20;
/// Bytes one `random_get` call may ask for; a larger request fails with `EINVAL`.
pub const MAX_RANDOM_BYTES: usize = 1 << 20;
/// WASI resources (open files and directories, streams) one instance may hold at once,
/// stdio and granted directories included; past it, opening fails with an error the guest
/// sees, and the agent's own descriptors are untouched.
pub const MAX_WASI_RESOURCES: usize = 128;
/// Linear memories one instance may have. The engine refuses multi-memory modules at
/// compile time; this is the same rule at instantiation.
const MAX_MEMORIES: usize = 1;
/// Tables one instance may have.
const MAX_TABLES: usize = 4;
/// What a table element is counted as against the instance's memory cap, in bytes.
const TABLE_ELEMENT_BYTES: usize = 16;
/// Fuel a call to a `serf.*` host function costs on top of one unit per byte it copies, so
/// that the fuel budget also bounds a guest that does its work through host calls.
const HOST_CALL_FUEL: u64 = 10_000;

/// What every instance of one plugin shares.
pub struct InstanceContext {
    /// The plugin's name.
    pub plugin: Arc<str>,
    /// This node's name (query responses are sized with it).
    pub node: Arc<str>,
    /// The agent's services.
    pub services: Arc<dyn HostServices>,
    /// Serf's limit on an encoded query response, in bytes.
    pub response_limit: usize,
    /// The plugin's rate windows, shared by all its instances so a trap resets none.
    pub rates: Arc<super::rates::PluginRates>,
}

/// The state a plugin's store carries.
pub struct StoreState {
    pub(crate) wasi: WasiP1Ctx,
    limiter: InstanceLimiter,
    /// When the call in progress must end; checked on every epoch tick.
    pub(super) deadline: Instant,
    pub(super) context: Arc<InstanceContext>,
    call: CallState,
    /// Set in a job's instance (ABI v1.1, jobs).
    pub(super) job: Option<JobCall>,
    /// What the plugin is granted (ABI v1.1, capabilities).
    capabilities: CapabilityState,
    /// The result `command_result` hands over, and the plugin's job limit (ABI v1.1, commands).
    pub(super) commands: super::commands::InstanceCommands,
}

impl StoreState {
    /// What the plugin is granted.
    pub(super) fn grants(&self) -> &Grants {
        &self.capabilities.grants
    }
}

// Effects (ABI v1.2): what `super::effects` reads of a store.
impl StoreState {
    /// What every instance of the plugin shares.
    pub(super) fn plugin_context(&self) -> &Arc<InstanceContext> {
        &self.context
    }

    /// When the call in progress must end.
    pub(super) fn deadline(&self) -> Instant {
        self.deadline
    }

    /// The result kept for `take_result` during the call in progress.
    pub(super) fn kept_result(&mut self) -> &mut Option<Vec<u8>> {
        &mut self.call.kept_result
    }
}

/// What the export call in progress may do and has done.
#[derive(Default)]
struct CallState {
    /// The query being handled, if any: `respond` is only valid then.
    query: Option<QueryKey>,
    responded: bool,
    error: Option<String>,
    /// Effects (ABI v1.2): a result that did not fit the guest's buffer, for `take_result`.
    kept_result: Option<Vec<u8>>,
}

/// Caps the instance's memory (every linear memory and table together) and remembers
/// whether it had to refuse a growth in the call in progress.
struct InstanceLimiter {
    max_memory_bytes: usize,
    /// Bytes of linear memory, all memories together.
    memory_bytes: usize,
    /// Bytes counted for table elements, all tables together.
    table_bytes: usize,
    refused: bool,
}

impl InstanceLimiter {
    fn new(max_memory_bytes: usize) -> InstanceLimiter {
        InstanceLimiter {
            max_memory_bytes,
            memory_bytes: 0,
            table_bytes: 0,
            refused: false,
        }
    }

    /// Whether growing one of the counted amounts from `current` to `desired` keeps the
    /// instance's total within the cap; if so, counts it.
    fn grow(&mut self, table: bool, current: usize, desired: usize) -> bool {
        let (this, other) = if table {
            (self.table_bytes, self.memory_bytes)
        } else {
            (self.memory_bytes, self.table_bytes)
        };
        let grown = this.saturating_sub(current).saturating_add(desired);
        if grown.saturating_add(other) > self.max_memory_bytes {
            self.refused = true;
            return false;
        }
        if table {
            self.table_bytes = grown;
        } else {
            self.memory_bytes = grown;
        }
        true
    }
}

impl ResourceLimiter for InstanceLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(self.grow(false, current, desired))
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let bytes = |elements: usize| elements.saturating_mul(TABLE_ELEMENT_BYTES);
        Ok(self.grow(true, bytes(current), bytes(desired)))
    }

    fn instances(&self) -> usize {
        1
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }
}

/// The error an epoch tick raises once the call's deadline has passed.
#[derive(Debug, thiserror::Error)]
#[error("wall-clock deadline passed")]
struct DeadlinePassed;

/// Why a call into a plugin failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The fuel budget ran out (an endless or too long computation).
    #[error("fuel budget of {0} exceeded")]
    OutOfFuel(u64),
    /// The wall-clock deadline passed (a spin between yields, or a blocking WASI call).
    #[error("wall-clock timeout after {0:?}")]
    Timeout(Duration),
    /// The guest needed more memory than allowed.
    #[error("memory limit of {0} bytes reached")]
    MemoryLimit(usize),
    /// The guest hit `unreachable`: a Rust panic or Go panic lands here.
    #[error("plugin panicked: {0}")]
    Panicked(String),
    /// Any other trap: out-of-bounds access, stack overflow, a bad indirect call.
    #[error("plugin crashed: {0}")]
    Crashed(String),
    /// The guest called WASI's `proc_exit` (Go's `os.Exit`, Rust's `std::process::exit`).
    #[error("plugin exited with status {0}")]
    Exited(i32),
    /// The guest's input buffer was missing or outside its memory.
    #[error("plugin returned an unusable input buffer ({0})")]
    BadBuffer(String),
    /// The guest refused: a non-zero status, with the text it gave to `set_error`.
    #[error("plugin returned status {code}: {message}")]
    Refused { code: i32, message: String },
}

impl CallError {
    /// Whether the instance must be dropped: everything but a refusal leaves it unusable.
    pub fn is_fatal(&self) -> bool {
        !matches!(self, CallError::Refused { .. })
    }

    /// A stable short name for counters and log fields.
    pub fn kind(&self) -> &'static str {
        match self {
            CallError::OutOfFuel(_) => "fuel",
            CallError::Timeout(_) => "timeout",
            CallError::MemoryLimit(_) => "memory",
            CallError::Panicked(_) => "panic",
            CallError::Crashed(_) => "crash",
            CallError::Exited(_) => "exit",
            CallError::BadBuffer(_) => "bad-buffer",
            CallError::Refused { .. } => "error",
        }
    }
}

/// A live instance of one plugin.
pub struct Instance {
    store: Store<StoreState>,
    memory: Memory,
    input_buffer: TypedFunc<i32, i32>,
    handle: TypedFunc<(i32, i32), i32>,
    shutdown: Option<TypedFunc<(), ()>>,
    limits: Limits,
    /// `serf_job`, looked up in a job's instance only (ABI v1.1, jobs).
    job: Option<TypedFunc<(i32, i32), i32>>,
}

/// What a successful event call cost.
#[derive(Debug, Clone, Copy)]
pub struct CallCost {
    /// Fuel burnt.
    pub fuel: u64,
}

impl Instance {
    /// Instantiates the module, runs `_initialize` and `serf_init` under the init budget.
    pub async fn start(
        loaded: &LoadedModule,
        spec: &PluginSpec,
        context: Arc<InstanceContext>,
        init: &[u8],
    ) -> Result<Instance, CallError> {
        Instance::start_as(loaded, spec, context, init, None).await
    }

    /// [`Instance::start`], for a job's instance when `job` is set.
    async fn start_as(
        loaded: &LoadedModule,
        spec: &PluginSpec,
        context: Arc<InstanceContext>,
        init: &[u8],
        job: Option<JobCall>,
    ) -> Result<Instance, CallError> {
        let mut wasi = WasiCtxBuilder::new();
        let (stdout, stderr) =
            LogPipe::pair(Arc::clone(&context.plugin), Arc::clone(&context.rates));
        wasi.stdout(stdout).stderr(stderr);
        for (key, value) in &spec.grants.env {
            wasi.env(key, value);
        }
        for (guest, host) in &spec.dirs {
            // The directory was checked when the plugin loaded; it may vanish since.
            if let Err(error) = wasi.preopened_dir(host, guest, FsPerms::ReadWrite) {
                return Err(CallError::Crashed(format!(
                    "cannot grant directory {} as {guest}: {error:#}",
                    host.display()
                )));
            }
        }
        let mut wasi = wasi.build_p1();
        wasi.ctx().table.set_max_capacity(MAX_WASI_RESOURCES);
        let state = StoreState {
            wasi,
            limiter: InstanceLimiter::new(spec.limits.max_memory_bytes),
            deadline: Instant::now() + spec.limits.event_timeout,
            context,
            call: CallState::default(),
            job,
            capabilities: CapabilityState::new(spec.grants.clone()),
            commands: super::commands::InstanceCommands::new(spec.limits.max_jobs),
        };
        let mut store = Store::new(loaded.pre.module().engine(), state);
        store.limiter(|state| &mut state.limiter);
        store.set_hostcall_fuel(MAX_WASI_COPY_BYTES);
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|context| {
            if Instant::now() >= context.data().deadline {
                return Err(DeadlinePassed.into());
            }
            Ok(UpdateDeadline::Yield(1))
        });
        let limits = spec.limits;
        store
            .fuel_async_yield_interval(Some(FUEL_YIELD_INTERVAL))
            .and_then(|()| store.set_fuel(limits.fuel_init))
            .map_err(|error| CallError::Crashed(format!("{error:#}")))?;
        let busy = super::engine::epoch_busy();
        let started = tokio::time::timeout(limits.event_timeout, async {
            let instance = loaded.pre.instantiate_async(&mut store).await?;
            if let Ok(initialize) =
                instance.get_typed_func::<(), ()>(&mut store, abi::EXPORT_INITIALIZE)
            {
                initialize.call_async(&mut store, ()).await?;
            }
            wasmtime::Result::Ok(instance)
        })
        .await;
        drop(busy);
        let instance = match started {
            Err(_elapsed) => return Err(CallError::Timeout(limits.event_timeout)),
            Ok(Err(error)) => {
                return Err(classify(
                    &store,
                    error,
                    limits.fuel_init,
                    limits.event_timeout,
                ));
            }
            Ok(Ok(instance)) => instance,
        };
        // The engine validated these exports and their types before the module got here.
        let lookup = |store: &mut Store<StoreState>| -> wasmtime::Result<_> {
            Ok((
                instance
                    .get_memory(&mut *store, "memory")
                    .ok_or_else(|| wasmtime::format_err!("no memory export"))?,
                instance.get_typed_func(&mut *store, abi::EXPORT_INPUT_BUFFER)?,
                instance.get_typed_func(&mut *store, abi::EXPORT_HANDLE)?,
                instance.get_typed_func::<(i32, i32), i32>(&mut *store, abi::EXPORT_INIT)?,
                instance
                    .get_typed_func(&mut *store, abi::EXPORT_SHUTDOWN)
                    .ok(),
            ))
        };
        let (memory, input_buffer, handle, init_func, shutdown) =
            lookup(&mut store).map_err(|error| CallError::Crashed(format!("{error:#}")))?;
        // Jobs (ABI v1.1): a job's instance also calls `serf_job`.
        let job = match store.data().job {
            Some(_) => instance.get_typed_func(&mut store, abi::EXPORT_JOB).ok(),
            None => None,
        };
        let mut instance = Instance {
            store,
            memory,
            input_buffer,
            handle,
            shutdown,
            limits,
            job,
        };
        let budget = instance.store.get_fuel().unwrap_or(0);
        instance
            .call_with_input(init_func, &[], init, None, budget)
            .await?;
        Ok(instance)
    }

    /// Hands one envelope (`header` followed by `body`) to `serf_handle`. A query event names
    /// its key so that `respond` works during the call.
    pub async fn handle(
        &mut self,
        header: &[u8],
        body: &[u8],
        query: Option<QueryKey>,
    ) -> Result<CallCost, CallError> {
        let budget = self.limits.fuel_per_event;
        self.store
            .set_fuel(budget)
            .map_err(|error| CallError::Crashed(format!("{error:#}")))?;
        let handle = self.handle.clone();
        self.call_with_input(handle, header, body, query, budget)
            .await?;
        let left = self.store.get_fuel().unwrap_or(0);
        Ok(CallCost {
            fuel: budget.saturating_sub(left),
        })
    }

    /// Best effort: calls `serf_shutdown` with a small budget and a short deadline.
    pub async fn shutdown(mut self) {
        let Some(shutdown) = self.shutdown.take() else {
            return;
        };
        if self.store.set_fuel(self.limits.fuel_init).is_err() {
            return;
        }
        let deadline = self.limits.event_timeout.min(SHUTDOWN_TIMEOUT);
        self.store.data_mut().deadline = Instant::now() + deadline;
        let _busy = super::engine::epoch_busy();
        let _ = tokio::time::timeout(deadline, shutdown.call_async(&mut self.store, ())).await;
    }

    /// Writes `header ++ body` into the guest's input buffer and calls `func(ptr, len)`.
    async fn call_with_input(
        &mut self,
        func: TypedFunc<(i32, i32), i32>,
        header: &[u8],
        body: &[u8],
        query: Option<QueryKey>,
        budget: u64,
    ) -> Result<(), CallError> {
        let len = header.len() + body.len();
        let len_i32 =
            i32::try_from(len).map_err(|_| CallError::BadBuffer(format!("{len} byte input")))?;
        let timeout = self.limits.event_timeout;
        let state = self.store.data_mut();
        state.call = CallState {
            query,
            ..CallState::default()
        };
        state.deadline = Instant::now() + timeout;
        state.limiter.refused = false;
        let store = &mut self.store;
        let memory = self.memory;
        let input_buffer = self.input_buffer.clone();
        let busy = super::engine::epoch_busy();
        let outcome = tokio::time::timeout(timeout, async {
            let ptr = input_buffer.call_async(&mut *store, len_i32).await?;
            let start = Some(ptr as u32).filter(|&p| p != 0).map(|p| p as usize);
            let Some(start) = start else {
                return Ok(Err(CallError::BadBuffer(format!("pointer {ptr}"))));
            };
            if memory.write(&mut *store, start, header).is_err()
                || memory
                    .write(&mut *store, start + header.len(), body)
                    .is_err()
            {
                return Ok(Err(CallError::BadBuffer(format!(
                    "{len} bytes at {start} lie outside the guest's memory"
                ))));
            }
            let code = func.call_async(&mut *store, (ptr, len_i32)).await?;
            wasmtime::Result::Ok(Ok(code))
        })
        .await;
        drop(busy);
        let call = std::mem::take(&mut self.store.data_mut().call);
        let context = &self.store.data().context;
        super::stdio::report_output_drops(&context.plugin, context.rates.take_unreported_output());
        match outcome {
            Err(_elapsed) => Err(CallError::Timeout(timeout)),
            Ok(Err(error)) => Err(classify(&self.store, error, budget, timeout)),
            Ok(Ok(Err(error))) => Err(error),
            Ok(Ok(Ok(0))) => Ok(()),
            Ok(Ok(Ok(code))) => Err(CallError::Refused {
                code,
                message: call.error.unwrap_or_else(|| NO_ERROR_TEXT.into()),
            }),
        }
    }
}

/// Names a failed call: fuel, memory, panic or crash.
fn classify(
    store: &Store<StoreState>,
    error: wasmtime::Error,
    budget: u64,
    timeout: Duration,
) -> CallError {
    if let Some(exit) = error.downcast_ref::<I32Exit>() {
        return CallError::Exited(exit.0);
    }
    if error.downcast_ref::<DeadlinePassed>().is_some() {
        return CallError::Timeout(timeout);
    }
    if store.data().limiter.refused {
        return CallError::MemoryLimit(store.data().limiter.max_memory_bytes);
    }
    // The full text carries wasmtime's multi-line wasm backtrace: keep it out of the warning.
    let full = format!("{error:#}");
    tracing::debug!(plugin = %store.data().context.plugin, error = %full, "plugin call failed");
    match error.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => CallError::OutOfFuel(budget),
        Some(trap @ Trap::UnreachableCodeReached) => CallError::Panicked(trap.to_string()),
        Some(trap) => CallError::Crashed(trap.to_string()),
        None if error.chain().any(|cause| {
            cause
                .downcast_ref::<wasmtime::component::ResourceTableError>()
                .is_some()
        }) =>
        {
            CallError::Crashed(format!(
                "more than {MAX_WASI_RESOURCES} WASI resources (open files and directories) at once"
            ))
        }
        // wasmtime's own text starts with a line about the backtrace: the cause says more.
        None => CallError::Crashed(
            error
                .root_cause()
                .to_string()
                .lines()
                .next()
                .unwrap_or_default()
                .to_owned(),
        ),
    }
}

/// Copies `len` bytes at `ptr` out of the guest's memory, or says why not.
pub(super) fn read_guest(
    caller: &mut Caller<'_, StoreState>,
    ptr: i32,
    len: i32,
) -> Result<Vec<u8>, Status> {
    // Guest pointers and lengths are u32 bit patterns carried in i32s.
    let (start, len) = (ptr as u32, len as u32);
    let Some(memory) = caller.get_export("memory").and_then(|e| e.into_memory()) else {
        return Err(Status::InvalidMemory);
    };
    let (start, len) = (start as usize, len as usize);
    let bytes = memory
        .data(&*caller)
        .get(start..start.saturating_add(len))
        .map(<[u8]>::to_vec)
        .ok_or(Status::InvalidMemory)?;
    charge(caller, len);
    Ok(bytes)
}

/// Text from the guest, cut at [`MAX_TEXT_BYTES`] before it is copied, made valid UTF-8 and
/// with its control characters escaped, so that it can never forge a log line.
fn read_text(caller: &mut Caller<'_, StoreState>, ptr: i32, len: i32) -> Result<String, Status> {
    let len = (len as u32).min(MAX_TEXT_BYTES as u32) as i32;
    let bytes = read_guest(caller, ptr, len)?;
    Ok(super::stdio::escape_controls(&String::from_utf8_lossy(&bytes)).into_owned())
}

/// Charges a `serf.*` host call to the guest's fuel: [`HOST_CALL_FUEL`] plus one unit per
/// byte. A guest whose fuel runs out traps at its next instruction.
pub(super) fn charge(caller: &mut Caller<'_, StoreState>, bytes: usize) {
    let cost = HOST_CALL_FUEL.saturating_add(bytes as u64);
    if let Ok(left) = caller.get_fuel() {
        let _ = caller.set_fuel(left.saturating_sub(cost));
    }
}

/// WASI's errno values that the host's own WASI functions return.
mod errno {
    pub(super) const SUCCESS: i32 = 0;
    pub(super) const FAULT: i32 = 21;
    pub(super) const INVAL: i32 = 28;
}

/// Replaces the WASI functions whose stock versions do unbounded work in one call. Must be
/// called after the stock WASI functions are on the linker (it shadows them).
pub(crate) fn add_wasi_overrides(linker: &mut Linker<StoreState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    // `random_get`: at most MAX_RANDOM_BYTES a call, written straight into the guest's memory
    // (the stock one allocates whatever length the guest names, then copies it).
    linker.func_wrap(
        "wasi_snapshot_preview1",
        "random_get",
        |mut caller: Caller<'_, StoreState>, ptr: i32, len: i32| -> i32 {
            use rand::RngCore as _;
            let (start, len) = (ptr as u32 as usize, len as u32 as usize);
            if len > MAX_RANDOM_BYTES {
                return errno::INVAL;
            }
            let Some(memory) = caller.get_export("memory").and_then(|e| e.into_memory()) else {
                return errno::FAULT;
            };
            let Some(buffer) = memory
                .data_mut(&mut caller)
                .get_mut(start..start.saturating_add(len))
            else {
                return errno::FAULT;
            };
            rand::rng().fill_bytes(buffer);
            charge(&mut caller, len);
            errno::SUCCESS
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

/// Defines the `serf.*` imports on the linker.
pub(crate) fn add_host_functions(linker: &mut Linker<StoreState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        abi::IMPORT_MODULE,
        abi::IMPORT_LOG,
        |mut caller: Caller<'_, StoreState>, level: i32, ptr: i32, len: i32| -> i32 {
            let Some(level) = LogLevel::from_code(level) else {
                return Status::BadArgument.code();
            };
            let text = match read_text(&mut caller, ptr, len) {
                Ok(text) => text,
                Err(status) => return status.code(),
            };
            let state = caller.data_mut();
            // The window is the plugin's, not this instance's: a trap does not reset it.
            let allowance = state.context.rates.take_log_line(Instant::now());
            if allowance.refused_before > 0 {
                let (plugin, dropped) = (&*state.context.plugin, allowance.refused_before);
                tracing::warn!(target: "plugin", plugin, dropped, "plugin log lines dropped by the rate limit");
            }
            if !allowance.allowed {
                return Status::RateLimited.code();
            }
            // Jobs (ABI v1.1): a job's lines also go to its output tail.
            if let Some(job) = &state.job {
                job.jobs.append_output(job.id, &text);
            }
            let plugin = &*state.context.plugin;
            match level {
                LogLevel::Trace => tracing::trace!(target: "plugin", plugin, "{text}"),
                LogLevel::Debug => tracing::debug!(target: "plugin", plugin, "{text}"),
                LogLevel::Info => tracing::info!(target: "plugin", plugin, "{text}"),
                LogLevel::Warn => tracing::warn!(target: "plugin", plugin, "{text}"),
                LogLevel::Error => tracing::error!(target: "plugin", plugin, "{text}"),
            }
            Status::Ok.code()
        },
    )?;
    linker.func_wrap(
        abi::IMPORT_MODULE,
        abi::IMPORT_SET_ERROR,
        |mut caller: Caller<'_, StoreState>, ptr: i32, len: i32| -> i32 {
            match read_text(&mut caller, ptr, len) {
                Ok(text) => {
                    caller.data_mut().call.error = Some(text);
                    Status::Ok.code()
                }
                Err(status) => status.code(),
            }
        },
    )?;
    linker.func_wrap(
        abi::IMPORT_MODULE,
        abi::IMPORT_RESPOND,
        |mut caller: Caller<'_, StoreState>, ptr: i32, len: i32| -> i32 {
            let state = caller.data();
            let refused = || {
                state
                    .context
                    .rates
                    .refused_responses
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Status::NotAllowed.code()
            };
            let Some(query) = state.call.query else {
                return refused();
            };
            if state.call.responded {
                return refused();
            }
            let limit = state.context.response_limit;
            if usize::try_from(len).is_ok_and(|len| len > limit) {
                return Status::TooLarge.code();
            }
            let payload = match read_guest(&mut caller, ptr, len) {
                Ok(payload) => payload,
                Err(status) => return status.code(),
            };
            let context = Arc::clone(&caller.data().context);
            if serf_core::encoded_response_len(query, &context.node, &payload) > limit {
                return Status::TooLarge.code();
            }
            match context.services.respond(&context.plugin, query, payload) {
                Ok(()) => {
                    caller.data_mut().call.responded = true;
                    Status::Ok.code()
                }
                Err(status) => {
                    if status == Status::NotAllowed {
                        context
                            .rates
                            .refused_responses
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    status.code()
                }
            }
        },
    )?;
    Ok(())
}

// --- Jobs (ABI v1.1): a job's own instance, and the `serf.job_*` host calls. -----------------

/// The job host functions and their signatures, as [`super::engine`] checks imports.
pub(crate) const JOB_HOST_FUNCTIONS: [(&str, &str); 4] = [
    (abi::IMPORT_JOB_START, "(i32, i32) -> (i32)"),
    (abi::IMPORT_JOB_STATUS, "(i32, i32, i32) -> (i32)"),
    (abi::IMPORT_JOB_KILL, "(i32) -> (i32)"),
    (abi::IMPORT_JOB_REAP, "(i32) -> (i32)"),
];

/// How a job's `serf_job` call returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobExit {
    /// What it returned: the job's exit status.
    pub status: i32,
    /// What it gave `set_error`; empty if nothing.
    pub error: String,
}

impl Instance {
    /// Starts the instance a job runs in: as [`Instance::start`], marked as `job`'s.
    pub async fn start_job(
        loaded: &LoadedModule,
        spec: &PluginSpec,
        context: Arc<InstanceContext>,
        init: &[u8],
        job: JobCall,
    ) -> Result<Instance, CallError> {
        Instance::start_as(loaded, spec, context, init, Some(job)).await
    }

    /// Runs `serf_job` with the encoded [`abi::Job`] under `fuel` and `timeout`. Any return
    /// value is an exit status; only traps and exceeded budgets are errors.
    pub async fn run_job(
        &mut self,
        job: &[u8],
        fuel: u64,
        timeout: Duration,
    ) -> Result<JobExit, CallError> {
        let Some(func) = self.job.clone() else {
            return Err(CallError::Crashed(format!(
                "no {} export in a job's instance",
                abi::EXPORT_JOB
            )));
        };
        self.limits.event_timeout = timeout;
        self.store
            .set_fuel(fuel)
            .map_err(|error| CallError::Crashed(format!("{error:#}")))?;
        match self.call_with_input(func, &[], job, None, fuel).await {
            Ok(()) => Ok(JobExit {
                status: 0,
                error: String::new(),
            }),
            Err(CallError::Refused { code, message }) => Ok(JobExit {
                status: code,
                error: if message == NO_ERROR_TEXT {
                    String::new()
                } else {
                    message
                },
            }),
            Err(error) => Err(error),
        }
    }
}

/// The plugin's name and the agent's job pool, or the status to return without one.
fn job_pool(
    caller: &Caller<'_, StoreState>,
) -> Result<(Arc<InstanceContext>, super::jobs::Jobs), Status> {
    let context = Arc::clone(&caller.data().context);
    let jobs = context
        .services
        .jobs()
        .cloned()
        .ok_or(Status::Unavailable)?;
    Ok((context, jobs))
}

/// A job id from the guest; negative ids name no job.
fn job_id(id: i32) -> Result<JobId, Status> {
    JobId::try_from(id).map_err(|_| Status::NotFound)
}

/// Defines the `serf.job_*` imports on the linker.
pub(crate) fn add_job_functions(linker: &mut Linker<StoreState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        abi::IMPORT_MODULE,
        abi::IMPORT_JOB_START,
        |mut caller: Caller<'_, StoreState>, ptr: i32, len: i32| -> i32 {
            if caller.data().job.is_some() {
                return Status::NotAllowed.code();
            }
            if !granted(&caller, abi::Capability::Jobs) {
                return Status::Denied.code();
            }
            // Room for the largest argument, a name and the msgpack around them.
            let max = abi::MAX_JOB_ARG_BYTES + abi::MAX_JOB_NAME_BYTES + 64;
            if usize::try_from(len).is_ok_and(|len| len > max) {
                return Status::TooLarge.code();
            }
            let bytes = match read_guest(&mut caller, ptr, len) {
                Ok(bytes) => bytes,
                Err(status) => return status.code(),
            };
            let Ok(request) = abi::decode::<abi::JobStart>(&bytes) else {
                return Status::BadArgument.code();
            };
            let (context, jobs) = match job_pool(&caller) {
                Ok(pool) => pool,
                Err(status) => return status.code(),
            };
            match jobs.start(&context.plugin, request) {
                // Ids fit an i32: the table gives out no more.
                Ok(id) => i32::try_from(id).unwrap_or(Status::Unavailable.code()),
                Err(error) => {
                    tracing::debug!(plugin = %context.plugin, %error, "job not started");
                    error.status().code()
                }
            }
        },
    )?;
    linker.func_wrap(
        abi::IMPORT_MODULE,
        abi::IMPORT_JOB_STATUS,
        |mut caller: Caller<'_, StoreState>, id: i32, out_ptr: i32, out_cap: i32| -> i32 {
            let (context, jobs) = match job_pool(&caller) {
                Ok(pool) => pool,
                Err(status) => return status.code(),
            };
            let record = match job_id(id).and_then(|id| {
                jobs.get(id, Some(&context.plugin))
                    .map_err(|error| error.status())
            }) {
                Ok(record) => record,
                Err(status) => return status.code(),
            };
            let bytes = abi::encode(&record.info());
            let Ok(len) = i32::try_from(bytes.len()) else {
                return Status::TooLarge.code();
            };
            if len > out_cap {
                return len;
            }
            let Some(memory) = caller.get_export("memory").and_then(|e| e.into_memory()) else {
                return Status::InvalidMemory.code();
            };
            // Guest pointers are u32 bit patterns carried in i32s.
            match memory.write(&mut caller, out_ptr as u32 as usize, &bytes) {
                Ok(()) => len,
                Err(_) => Status::InvalidMemory.code(),
            }
        },
    )?;
    linker.func_wrap(
        abi::IMPORT_MODULE,
        abi::IMPORT_JOB_KILL,
        |caller: Caller<'_, StoreState>, id: i32| -> i32 {
            let outcome = job_pool(&caller).and_then(|(context, jobs)| {
                jobs.kill(job_id(id)?, Some(&context.plugin))
                    .map_err(|error| error.status())
            });
            outcome.map_or_else(Status::code, |()| Status::Ok.code())
        },
    )?;
    linker.func_wrap(
        abi::IMPORT_MODULE,
        abi::IMPORT_JOB_REAP,
        |caller: Caller<'_, StoreState>, id: i32| -> i32 {
            let outcome = job_pool(&caller).and_then(|(context, jobs)| {
                jobs.reap(Some(job_id(id)?), Some(&context.plugin))
                    .map_err(|error| error.status())
            });
            outcome.map_or_else(Status::code, |_| Status::Ok.code())
        },
    )?;
    Ok(())
}

// --- Capabilities (ABI v1.1): `members`, `fire_event` and `query`, each denied unless the
// plugin's table grants it. None waits: the member list is a snapshot the agent keeps, events
// and queries are queued for the agent task, and query answers come back later as events.

/// The capability host functions and their signatures, checked like [`HOST_FUNCTIONS`].
pub(crate) const CAPABILITY_FUNCTIONS: [(&str, &str); 3] = [
    (abi::IMPORT_MEMBERS, "(i32, i32) -> (i32)"),
    (abi::IMPORT_FIRE_EVENT, "(i32, i32) -> (i32)"),
    (abi::IMPORT_QUERY, "(i32, i32) -> (i32)"),
];

pub use super::rates::MAX_CLUSTER_MESSAGES_PER_SECOND;
/// Longest `fire_event` or `query` request read from a guest; Serf's own limits are far lower.
const MAX_REQUEST_BYTES: usize = 64 << 10;

/// One instance's grants (its rate window is the plugin's: `InstanceContext::rates`).
struct CapabilityState {
    grants: Grants,
}

impl CapabilityState {
    fn new(grants: Grants) -> CapabilityState {
        CapabilityState { grants }
    }
}

/// Whether the plugin holds `capability` (a denial is logged once per plugin).
fn granted(caller: &Caller<'_, StoreState>, capability: abi::Capability) -> bool {
    let state = caller.data();
    state
        .capabilities
        .grants
        .check(&state.context.plugin, capability)
}

/// Checks the grant, reads and decodes a request of the guest, then counts it against the
/// rate limit.
fn read_request<T: serde::de::DeserializeOwned>(
    caller: &mut Caller<'_, StoreState>,
    capability: abi::Capability,
    ptr: i32,
    len: i32,
) -> Result<T, Status> {
    if !granted(caller, capability) {
        return Err(Status::Denied);
    }
    if len as u32 as usize > MAX_REQUEST_BYTES {
        return Err(Status::TooLarge);
    }
    let bytes = read_guest(caller, ptr, len)?;
    let request = abi::decode(&bytes).map_err(|_| Status::BadArgument)?;
    if !caller.data().context.rates.take_message(Instant::now()) {
        return Err(Status::RateLimited);
    }
    Ok(request)
}

/// Copies `bytes` to `ptr` in the guest's memory, or says why not.
pub(super) fn write_guest(
    caller: &mut Caller<'_, StoreState>,
    ptr: i32,
    bytes: &[u8],
) -> Result<(), Status> {
    let start = ptr as u32 as usize;
    let Some(memory) = caller.get_export("memory").and_then(|e| e.into_memory()) else {
        return Err(Status::InvalidMemory);
    };
    memory
        .data_mut(&mut *caller)
        .get_mut(start..start.saturating_add(bytes.len()))
        .ok_or(Status::InvalidMemory)?
        .copy_from_slice(bytes);
    charge(caller, bytes.len());
    Ok(())
}

/// `members`: writes the encoded member list at `out_ptr` if it fits in `out_cap` bytes;
/// returns its length either way.
fn members(caller: &mut Caller<'_, StoreState>, out_ptr: i32, out_cap: i32) -> Result<i32, Status> {
    if !granted(caller, abi::Capability::Members) {
        return Err(Status::Denied);
    }
    let list = caller
        .data()
        .context
        .services
        .members()
        .ok_or(Status::Unavailable)?;
    let len = i32::try_from(list.len()).map_err(|_| Status::TooLarge)?;
    if list.len() <= out_cap as u32 as usize {
        write_guest(caller, out_ptr, &list)?;
    }
    Ok(len)
}

/// Defines the capability imports on the linker.
pub(crate) fn add_capability_functions(linker: &mut Linker<StoreState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        abi::IMPORT_MODULE,
        abi::IMPORT_MEMBERS,
        |mut caller: Caller<'_, StoreState>, out_ptr: i32, out_cap: i32| -> i32 {
            members(&mut caller, out_ptr, out_cap).unwrap_or_else(Status::code)
        },
    )?;
    linker.func_wrap(
        abi::IMPORT_MODULE,
        abi::IMPORT_FIRE_EVENT,
        |mut caller: Caller<'_, StoreState>, ptr: i32, len: i32| -> i32 {
            let event: abi::FireEvent =
                match read_request(&mut caller, abi::Capability::Events, ptr, len) {
                    Ok(event) => event,
                    Err(status) => return status.code(),
                };
            let context = &caller.data().context;
            match context.services.fire_event(&context.plugin, event) {
                Ok(()) => Status::Ok.code(),
                Err(status) => status.code(),
            }
        },
    )?;
    linker.func_wrap(
        abi::IMPORT_MODULE,
        abi::IMPORT_QUERY,
        |mut caller: Caller<'_, StoreState>, ptr: i32, len: i32| -> i32 {
            let request: abi::QueryRequest =
                match read_request(&mut caller, abi::Capability::Queries, ptr, len) {
                    Ok(request) => request,
                    Err(status) => return status.code(),
                };
            let context = &caller.data().context;
            match context.services.query(&context.plugin, request) {
                // The agent hands out handles below 2^31, so they read as positive i32s.
                Ok(handle) => i32::try_from(handle).unwrap_or(Status::Unavailable.code()),
                Err(status) => status.code(),
            }
        },
    )?;
    Ok(())
}
