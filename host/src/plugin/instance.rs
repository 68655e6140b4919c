//! One live plugin instance and the host calls it may make.
//!
//! Every call into the guest runs on an async store under a fuel budget (which also makes
//! the guest yield every million units, so a wall-clock timeout can fire), a memory cap and a
//! wall-clock deadline. A trap leaves the instance unusable: the owner drops it and starts a
//! fresh one. Host calls never block and never call back into the guest; a bad pointer from
//! the guest is a status code, never a host panic.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serf_plugin_sdk::abi::{self, LogLevel, Status};
use wasmtime::{Caller, Linker, Memory, ResourceLimiter, Store, Trap, TypedFunc};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

use super::engine::LoadedModule;
use super::stdio::LogPipe;
use super::{HostServices, Limits, PluginSpec};
use crate::serf::QueryKey;

/// The host functions of ABI v1 and their signatures, as [`super::engine`] checks imports.
pub(crate) const HOST_FUNCTIONS: [(&str, &str); 3] = [
    (abi::IMPORT_LOG, "(i32, i32, i32) -> (i32)"),
    (abi::IMPORT_SET_ERROR, "(i32, i32) -> (i32)"),
    (abi::IMPORT_RESPOND, "(i32, i32) -> (i32)"),
];

/// Longest log line or error text taken from a plugin, in bytes.
const MAX_TEXT_BYTES: usize = 4096;
/// Log lines a plugin may write per second before the rest are dropped (and counted).
const MAX_LOG_LINES_PER_SECOND: u32 = 100;
/// Fuel between two yields to the runtime: about 0.1 ms of guest work.
const FUEL_YIELD_INTERVAL: u64 = 1_000_000;

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
}

/// The state a plugin's store carries.
pub struct StoreState {
    pub(crate) wasi: WasiP1Ctx,
    limiter: MemoryLimiter,
    context: Arc<InstanceContext>,
    call: CallState,
    log_window: (Instant, u32),
}

/// What the export call in progress may do and has done.
#[derive(Default)]
struct CallState {
    /// The query being handled, if any: `respond` is only valid then.
    query: Option<QueryKey>,
    responded: bool,
    error: Option<String>,
}

/// Caps linear memory and remembers whether it had to refuse a growth.
struct MemoryLimiter {
    max_memory_bytes: usize,
    refused: bool,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_memory_bytes {
            self.refused = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

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
        let mut wasi = WasiCtxBuilder::new();
        let (stdout, stderr) = LogPipe::pair(Arc::clone(&context.plugin));
        wasi.stdout(stdout).stderr(stderr);
        for (guest, host) in &spec.dirs {
            // The directory was checked when the plugin loaded; it may vanish since.
            if let Err(error) = wasi.preopened_dir(host, guest, FsPerms::ReadWrite) {
                return Err(CallError::Crashed(format!(
                    "cannot grant directory {} as {guest}: {error:#}",
                    host.display()
                )));
            }
        }
        let state = StoreState {
            wasi: wasi.build_p1(),
            limiter: MemoryLimiter {
                max_memory_bytes: spec.limits.max_memory_bytes,
                refused: false,
            },
            context,
            call: CallState::default(),
            log_window: (Instant::now(), 0),
        };
        let mut store = Store::new(loaded.pre.module().engine(), state);
        store.limiter(|state| &mut state.limiter);
        let limits = spec.limits;
        store
            .fuel_async_yield_interval(Some(FUEL_YIELD_INTERVAL))
            .and_then(|()| store.set_fuel(limits.fuel_init))
            .map_err(|error| CallError::Crashed(format!("{error:#}")))?;
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
        let instance = match started {
            Err(_elapsed) => return Err(CallError::Timeout(limits.event_timeout)),
            Ok(Err(error)) => return Err(classify(&store, error, limits.fuel_init)),
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
        let mut instance = Instance {
            store,
            memory,
            input_buffer,
            handle,
            shutdown,
            limits,
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
        let deadline = self.limits.event_timeout.min(Duration::from_secs(1));
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
        self.store.data_mut().call = CallState {
            query,
            ..CallState::default()
        };
        let timeout = self.limits.event_timeout;
        let store = &mut self.store;
        let memory = self.memory;
        let input_buffer = self.input_buffer.clone();
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
        let call = std::mem::take(&mut self.store.data_mut().call);
        match outcome {
            Err(_elapsed) => Err(CallError::Timeout(timeout)),
            Ok(Err(error)) => Err(classify(&self.store, error, budget)),
            Ok(Ok(Err(error))) => Err(error),
            Ok(Ok(Ok(0))) => Ok(()),
            Ok(Ok(Ok(code))) => Err(CallError::Refused {
                code,
                message: call.error.unwrap_or_else(|| "no error text given".into()),
            }),
        }
    }
}

/// Names a failed call: fuel, memory, panic or crash.
fn classify(store: &Store<StoreState>, error: wasmtime::Error, budget: u64) -> CallError {
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
        None => CallError::Crashed(full.lines().next().unwrap_or_default().to_owned()),
    }
}

/// Copies `len` bytes at `ptr` out of the guest's memory, or says why not.
fn read_guest(caller: &mut Caller<'_, StoreState>, ptr: i32, len: i32) -> Result<Vec<u8>, Status> {
    // Guest pointers and lengths are u32 bit patterns carried in i32s.
    let (start, len) = (ptr as u32, len as u32);
    let Some(memory) = caller.get_export("memory").and_then(|e| e.into_memory()) else {
        return Err(Status::InvalidMemory);
    };
    let (start, len) = (start as usize, len as usize);
    memory
        .data(&*caller)
        .get(start..start.saturating_add(len))
        .map(<[u8]>::to_vec)
        .ok_or(Status::InvalidMemory)
}

/// Text from the guest, cut at [`MAX_TEXT_BYTES`] and made valid UTF-8.
fn read_text(caller: &mut Caller<'_, StoreState>, ptr: i32, len: i32) -> Result<String, Status> {
    let mut bytes = read_guest(caller, ptr, len)?;
    bytes.truncate(MAX_TEXT_BYTES);
    Ok(String::from_utf8_lossy(&bytes).into_owned())
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
            let now = Instant::now();
            if now.duration_since(state.log_window.0) >= Duration::from_secs(1) {
                let dropped = state.log_window.1.saturating_sub(MAX_LOG_LINES_PER_SECOND);
                if dropped > 0 {
                    let plugin = &*state.context.plugin;
                    tracing::warn!(target: "plugin", plugin, dropped, "plugin log lines dropped by the rate limit");
                }
                state.log_window = (now, 0);
            }
            state.log_window.1 += 1;
            if state.log_window.1 > MAX_LOG_LINES_PER_SECOND {
                return Status::RateLimited.code();
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
            let Some(query) = state.call.query else {
                return Status::NotAllowed.code();
            };
            if state.call.responded {
                return Status::NotAllowed.code();
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
            if crate::serf::encoded_response_len(query, &context.node, &payload) > limit {
                return Status::TooLarge.code();
            }
            match context.services.respond(&context.plugin, query, payload) {
                Ok(()) => {
                    caller.data_mut().call.responded = true;
                    Status::Ok.code()
                }
                Err(status) => status.code(),
            }
        },
    )?;
    Ok(())
}
