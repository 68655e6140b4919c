//! The shared wasmtime engine: compiling, caching and validating plugin modules.
//!
//! Compiled code is cached on disk under `<data_dir>/plugin-cache`, keyed by the module's
//! SHA-256 and a hash of the engine's compilation settings, so a restart does not recompile
//! and an artifact from other settings is never loaded. Compilation is blocking work: callers
//! run it on a blocking thread, never on the agent's task.
//!
//! A plugin file is read only if it is a regular file no larger than
//! [`CompileBudget::max_module_bytes`] ([`read_module`]). wasmtime cannot interrupt a
//! compilation, so where the `serf` binary is known ([`set_compiler_program`], done by the
//! command line) a module is compiled in a child process, `serf __compile-plugin`, which is
//! killed when it passes [`CompileBudget::timeout`] or [`CompileBudget::max_memory_bytes`] of
//! resident memory; its artifact goes through the same cache path as any other. Without the
//! binary (library tests), compilation runs in-process under the size limit only.

use std::hash::{Hash, Hasher};
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serf_plugin_sdk::abi;
use sha2::{Digest, Sha256};
use wasmtime::{ExternType, FuncType, InstancePre, Linker, Module};

use super::LoadError;
use super::instance::{self, StoreState};

/// A module that passed validation, ready to instantiate as often as needed.
#[derive(Clone)]
pub struct LoadedModule {
    /// The module with every import resolved.
    pub pre: InstancePre<StoreState>,
    /// SHA-256 of the `.wasm` bytes, hex.
    pub sha256: String,
    /// Whether the compiled code came from the cache.
    pub from_cache: bool,
}

impl std::fmt::Debug for LoadedModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedModule")
            .field("sha256", &self.sha256)
            .field("from_cache", &self.from_cache)
            .finish_non_exhaustive()
    }
}

/// One wasmtime engine and linker for every plugin, built on first use: an agent without
/// plugins never starts the compiler, which keeps its code out of memory.
#[derive(Clone)]
pub struct Engine {
    wasm: Arc<OnceLock<Result<Wasm, String>>>,
    cache_dir: Option<PathBuf>,
    cache_hits: Arc<AtomicU64>,
    cache_misses: Arc<AtomicU64>,
    budget: CompileBudget,
}

/// How large a plugin file may be, and what compiling it may cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompileBudget {
    /// The largest `.wasm` file read, in bytes (`plugin_max_size_mib`).
    pub max_module_bytes: u64,
    /// Wall-clock time one compilation may take (`plugin_compile_timeout`).
    pub timeout: Duration,
    /// Resident memory of the compiling process (`plugin_compile_memory_mib`), in bytes.
    pub max_memory_bytes: u64,
}

impl CompileBudget {
    /// 64 MiB files, 30 s and 1 GiB to compile: our Go example plugins (2 to 2.5 MB) take
    /// about 5 s and 80 MB on a busy 2-core machine, the Rust ones (250 kB) about 1 s.
    pub const DEFAULT: CompileBudget = CompileBudget {
        max_module_bytes: 64 << 20,
        timeout: Duration::from_secs(30),
        max_memory_bytes: 1 << 30,
    };
}

/// The `serf` binary, which compiles modules in a child process; unset: compile in-process.
static COMPILER_PROGRAM: OnceLock<PathBuf> = OnceLock::new();

/// Makes every engine compile in a child process running `program __compile-plugin` (the
/// `serf` binary itself), so that the compile budget can stop it. Set once, by the command
/// line; later calls change nothing.
pub fn set_compiler_program(program: PathBuf) {
    let _ = COMPILER_PROGRAM.set(program);
}

/// The hidden subcommand that compiles one module for [`Engine`].
pub const COMPILE_SUBCOMMAND: &str = "__compile-plugin";

/// How often the parent looks at a compiling child's memory.
const COMPILE_POLL: Duration = Duration::from_millis(10);

/// The parts of [`Engine`] that exist once the first plugin is loaded.
struct Wasm {
    engine: wasmtime::Engine,
    linker: Linker<StoreState>,
    settings_hash: u64,
}

/// How often the engines' epoch advances while a guest runs. On every tick a running guest
/// yields to the plugin runtime and checks its wall-clock deadline, so a deadline is kept to about a tick plus
/// the longest host call ([`instance::MAX_WASI_COPY_BYTES`] and the other per-call caps).
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// The wasmtime settings every plugin runs under: fuel and epoch interruption on, and only
/// the WebAssembly proposals that the plugins' toolchains (Rust and Go for wasm32-wasip1,
/// TinyGo) emit. Multi-memory, memory64, tail calls, relaxed SIMD, the component model and
/// the other proposals are off (threads, GC, function references and exceptions are not even
/// built into the agent), so a module that uses one is refused when it is compiled, with the
/// validator's message.
fn config() -> wasmtime::Config {
    let mut config = wasmtime::Config::new();
    config
        .consume_fuel(true)
        .epoch_interruption(true)
        .wasm_bulk_memory(true)
        .wasm_multi_value(true)
        .wasm_simd(true)
        .wasm_relaxed_simd(false)
        .wasm_multi_memory(false)
        .wasm_memory64(false)
        .wasm_tail_call(false)
        .wasm_gc(false)
        .wasm_extended_const(false)
        .wasm_wide_arithmetic(false)
        .wasm_custom_page_sizes(false)
        .wasm_stack_switching(false)
        .wasm_component_model(false);
    config
}

/// The thread that advances the epoch of every engine every [`EPOCH_TICK`] while a guest runs
/// somewhere, and parks once none has run for a second, so that an idle agent does not wake
/// up a hundred times a second.
struct Ticker {
    engines: Mutex<Vec<wasmtime::EngineWeak>>,
    /// Calls into guests in progress ([`EpochBusy`] guards).
    busy: AtomicUsize,
    /// Set by the ticker before it parks; the guard that finds it set wakes the ticker.
    parked: AtomicBool,
    thread: std::thread::Thread,
}

/// Ticks without a guest running before the ticker parks: a plugin busy with a stream of short
/// events keeps the ticker awake instead of waking it for every event.
const IDLE_TICKS_BEFORE_PARKING: u32 = 100;

static TICKER: OnceLock<Result<Ticker, String>> = OnceLock::new();

fn ticker() -> Result<&'static Ticker, String> {
    TICKER
        .get_or_init(|| {
            std::thread::Builder::new()
                .name("serf-epoch".into())
                .spawn(tick_loop)
                .map(|handle| Ticker {
                    engines: Mutex::default(),
                    busy: AtomicUsize::new(0),
                    parked: AtomicBool::new(false),
                    thread: handle.thread().clone(),
                })
                .map_err(|error| format!("cannot start the epoch thread: {error}"))
        })
        .as_ref()
        .map_err(Clone::clone)
}

fn tick_loop() {
    // The ticker is set once this thread runs (the spawner stores it right after the spawn).
    let ticker = loop {
        match TICKER.get() {
            Some(Ok(ticker)) => break ticker,
            Some(Err(_)) => return,
            None => std::thread::park_timeout(EPOCH_TICK),
        }
    };
    let mut idle_ticks: u32 = 0;
    loop {
        if ticker.busy.load(Ordering::SeqCst) == 0 {
            idle_ticks = idle_ticks.saturating_add(1);
        } else {
            idle_ticks = 0;
        }
        if idle_ticks > IDLE_TICKS_BEFORE_PARKING {
            ticker.parked.store(true, Ordering::SeqCst);
            // A call that started before the flag was set finds it unset and does not wake
            // us: look again before parking.
            if ticker.busy.load(Ordering::SeqCst) == 0 {
                // Woken by the next call's guard; the timeout only bounds a lost wake-up.
                std::thread::park_timeout(Duration::from_secs(1));
            }
            ticker.parked.store(false, Ordering::SeqCst);
            // Still idle: park again at the top of the loop; busy: tick again.
            continue;
        }
        std::thread::sleep(EPOCH_TICK);
        let mut engines = ticker.engines.lock().unwrap_or_else(|e| e.into_inner());
        engines.retain(|weak| match weak.upgrade() {
            Some(engine) => {
                engine.increment_epoch();
                true
            }
            None => false,
        });
    }
}

/// Marks a call into a guest in progress, so that the epoch ticks while it runs.
pub(crate) struct EpochBusy(&'static Ticker);

/// Starts the epoch ticking (if it was idle) until the guard is dropped. Without a ticker
/// (its thread could not start, so no engine exists either) there is nothing to do.
pub(crate) fn epoch_busy() -> Option<EpochBusy> {
    let ticker = ticker().ok()?;
    ticker.busy.fetch_add(1, Ordering::SeqCst);
    // A load first: while the ticker is awake (a stream of events) this stays a read.
    if ticker.parked.load(Ordering::SeqCst) && ticker.parked.swap(false, Ordering::SeqCst) {
        ticker.thread.unpark();
    }
    Some(EpochBusy(ticker))
}

impl Drop for EpochBusy {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Wasm {
    fn new() -> wasmtime::Result<Wasm> {
        let engine = wasmtime::Engine::new(&config())?;
        ticker()
            .map_err(|message| wasmtime::format_err!("{message}"))?
            .engines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(engine.weak());
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_async(&mut linker, |state: &mut StoreState| {
            &mut state.wasi
        })?;
        instance::add_wasi_overrides(&mut linker)?;
        instance::add_host_functions(&mut linker)?;
        instance::add_job_functions(&mut linker)?;
        instance::add_capability_functions(&mut linker)?;
        super::commands::add_command_functions(&mut linker)?;
        super::effects::add_effect_functions(&mut linker)?;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Ok(Wasm {
            engine,
            linker,
            settings_hash: hasher.finish(),
        })
    }
}

impl Engine {
    /// An engine with fuel metering; `cache_dir` holds compiled modules (none: always compile).
    /// wasmtime itself starts when the first module is loaded.
    pub fn new(cache_dir: Option<PathBuf>) -> Engine {
        Engine {
            wasm: Arc::default(),
            cache_dir,
            cache_hits: Arc::default(),
            cache_misses: Arc::default(),
            budget: CompileBudget::DEFAULT,
        }
    }

    /// This engine with `budget` for reading and compiling modules.
    pub fn with_budget(mut self, budget: CompileBudget) -> Engine {
        self.budget = budget;
        self
    }

    /// The budget modules are read and compiled under.
    pub fn budget(&self) -> CompileBudget {
        self.budget
    }

    /// Reads a plugin file under this engine's size limit (see [`read_module`]). Blocking.
    pub fn read(&self, path: &Path) -> Result<Vec<u8>, LoadError> {
        read_module(path, self.budget.max_module_bytes)
    }

    /// The wasmtime engine and linker, started on the first call.
    fn wasm(&self, path: &Path) -> Result<&Wasm, LoadError> {
        self.wasm
            .get_or_init(|| Wasm::new().map_err(|error| format!("{error:#}")))
            .as_ref()
            .map_err(|message| LoadError::Compile {
                path: path.to_path_buf(),
                message: format!("the wasm engine cannot start: {message}"),
            })
    }

    /// Whether wasmtime has been started (a plugin was loaded).
    pub fn is_started(&self) -> bool {
        self.wasm.get().is_some()
    }

    /// (cache hits, cache misses) since start.
    pub fn cache_counts(&self) -> (u64, u64) {
        (
            self.cache_hits.load(Ordering::Relaxed),
            self.cache_misses.load(Ordering::Relaxed),
        )
    }

    /// Reads, compiles (or loads from the cache) and validates a plugin. Blocking.
    pub fn load_file(&self, path: &Path) -> Result<LoadedModule, LoadError> {
        let bytes = self.read(path)?;
        self.load(path, &bytes)
    }

    /// Compiles (or loads from the cache) and validates module bytes; `path` names it in
    /// errors. Blocking.
    pub fn load(&self, path: &Path, bytes: &[u8]) -> Result<LoadedModule, LoadError> {
        if !bytes.starts_with(b"\0asm") {
            return Err(LoadError::NotWasm {
                path: path.to_path_buf(),
            });
        }
        let size = bytes.len() as u64;
        if size > self.budget.max_module_bytes {
            return Err(LoadError::TooLarge {
                path: path.to_path_buf(),
                size,
                max: self.budget.max_module_bytes,
            });
        }
        let sha256 = hex(&Sha256::digest(bytes));
        let (module, from_cache) = self.compile(path, bytes, &sha256)?;
        validate(&module).map_err(|reason| LoadError::Abi {
            path: path.to_path_buf(),
            reason,
        })?;
        let pre = self
            .wasm(path)?
            .linker
            .instantiate_pre(&module)
            .map_err(|error| LoadError::Abi {
                path: path.to_path_buf(),
                reason: format!("{error:#}"),
            })?;
        Ok(LoadedModule {
            pre,
            sha256,
            from_cache,
        })
    }

    fn compile(
        &self,
        path: &Path,
        bytes: &[u8],
        sha256: &str,
    ) -> Result<(Module, bool), LoadError> {
        let wasm = self.wasm(path)?;
        let cached = self
            .cache_dir
            .as_ref()
            .map(|dir| dir.join(format!("{sha256}-{:016x}.cwasm", wasm.settings_hash)));
        if let Some(file) = cached.as_deref().filter(|file| file.exists()) {
            match deserialize_cached(&wasm.engine, file) {
                Ok(module) => {
                    self.cache_hits.fetch_add(1, Ordering::Relaxed);
                    return Ok((module, true));
                }
                Err(error) => {
                    tracing::warn!(file = %file.display(), error = %format!("{error:#}"), "ignoring unreadable compiled plugin");
                }
            }
        }
        self.cache_misses.fetch_add(1, Ordering::Relaxed);
        if let Some(program) = COMPILER_PROGRAM.get() {
            return self.compile_in_child(program, path, bytes, cached);
        }
        let module = Module::new(&wasm.engine, bytes).map_err(|error| LoadError::Compile {
            path: path.to_path_buf(),
            message: format!("{error:#}"),
        })?;
        if let Some(file) = cached
            && let Err(error) = store_cached(&module, &file)
        {
            tracing::warn!(file = %file.display(), %error, "cannot cache compiled plugin");
        }
        Ok((module, false))
    }
}

impl Engine {
    /// Compiles `bytes` in a child process under the budget, then loads its artifact through
    /// the cache file (or a private temporary file without a cache).
    fn compile_in_child(
        &self,
        program: &Path,
        path: &Path,
        bytes: &[u8],
        cached: Option<PathBuf>,
    ) -> Result<(Module, bool), LoadError> {
        let wasm = self.wasm(path)?;
        let fail = |message: String| LoadError::Compile {
            path: path.to_path_buf(),
            message,
        };
        // Unique per compilation: two plugins may share a module and compile at once.
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let unique = format!(
            "{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let (artifact, is_temporary) = match &cached {
            Some(file) => {
                ensure_cache_dir(file).map_err(|e| fail(format!("cannot use the cache: {e}")))?;
                (file.with_extension(format!("tmp{unique}")), false)
            }
            None => {
                let name = format!("serf-plugin-{unique}.cwasm");
                (std::env::temp_dir().join(name), true)
            }
        };
        // Created here, exclusively and private; the child only writes into it.
        let _ = std::fs::remove_file(&artifact);
        create_private(&artifact)
            .map_err(|e| fail(format!("cannot create {}: {e}", artifact.display())))?;
        let outcome = run_compiler(program, bytes, &artifact, self.budget);
        let loaded = outcome.map_err(fail).and_then(|()| {
            let file = match &cached {
                Some(file) => {
                    std::fs::rename(&artifact, file)
                        .map_err(|e| fail(format!("cannot cache the compiled module: {e}")))?;
                    file.as_path()
                }
                None => artifact.as_path(),
            };
            deserialize_cached(&wasm.engine, file)
                .map_err(|error| fail(format!("cannot load the compiled module: {error:#}")))
        });
        if is_temporary || loaded.is_err() {
            let _ = std::fs::remove_file(&artifact);
        }
        Ok((loaded?, false))
    }
}

/// Runs `program __compile-plugin` on `bytes` (sent on its stdin), writing the artifact to
/// `artifact`; kills it at the budget's deadline or memory cap. The error says which.
fn run_compiler(
    program: &Path,
    bytes: &[u8],
    artifact: &Path,
    budget: CompileBudget,
) -> Result<(), String> {
    use std::process::{Command, Stdio};
    let mut child = Command::new(program)
        .arg(COMPILE_SUBCOMMAND)
        .arg(bytes.len().to_string())
        .arg(artifact)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|error| format!("cannot start the compiler {}: {error}", program.display()))?;
    let started = Instant::now();
    // The child reads its input at once, then waits on stdin for the end of this process.
    let mut stdin = child.stdin.take();
    if let Some(pipe) = stdin.as_mut()
        && let Err(error) = pipe.write_all(bytes)
    {
        let _ = child.kill();
        let _ = child.wait();
        return Err(format!("cannot hand the module to the compiler: {error}"));
    }
    let mut peak = 0;
    let verdict = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Ok(status),
            Ok(None) => {}
            Err(error) => break Err(format!("cannot wait for the compiler: {error}")),
        }
        let resident = resident_bytes(child.id()).unwrap_or(0);
        peak = peak.max(resident);
        if resident > budget.max_memory_bytes {
            break Err(format!(
                "compiling needs more than the {} MiB budget (plugin_compile_memory_mib); \
                 stopped after {:.1?}",
                budget.max_memory_bytes >> 20,
                started.elapsed()
            ));
        }
        if started.elapsed() > budget.timeout {
            break Err(format!(
                "compiling takes longer than the {:?} budget (plugin_compile_timeout); \
                 stopped at {} MiB",
                budget.timeout,
                peak >> 20
            ));
        }
        std::thread::sleep(COMPILE_POLL);
    };
    drop(stdin);
    let status = match verdict {
        Ok(status) => status,
        Err(reason) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(reason);
        }
    };
    tracing::debug!(elapsed = ?started.elapsed(), peak_mib = peak >> 20, "plugin compiled in a child process");
    if status.success() {
        return Ok(());
    }
    let mut message = String::new();
    if let Some(stderr) = child.stderr.take() {
        let _ = stderr.take(4096).read_to_string(&mut message);
    }
    let message = message.trim();
    Err(if message.is_empty() {
        format!("the compiler stopped: {status}")
    } else {
        message.to_owned()
    })
}

/// A process's resident memory, from `/proc` (Linux); `None` elsewhere or once it is gone.
fn resident_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// `serf __compile-plugin LEN OUT`: reads LEN bytes of a module from stdin, compiles it with
/// the agent's engine settings and writes the artifact into OUT (created by the parent).
/// Exits when stdin closes, so it never outlives the agent. Returns the exit code.
pub fn compile_child(len: usize, out: &Path) -> u8 {
    let mut bytes = vec![0; len];
    let mut stdin = std::io::stdin().lock();
    if let Err(error) = stdin.read_exact(&mut bytes) {
        let _ = writeln!(std::io::stderr(), "cannot read the module: {error}");
        return 1;
    }
    drop(stdin);
    std::thread::spawn(|| {
        // The parent holds our stdin open while it waits for us; its end ends us.
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        std::process::exit(2);
    });
    let compiled = Wasm::new().and_then(|wasm| wasm.engine.precompile_module(&bytes));
    let artifact = match compiled {
        Ok(artifact) => artifact,
        Err(error) => {
            let _ = write!(std::io::stderr(), "{error:#}");
            return 1;
        }
    };
    let written = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(out)
        .and_then(|mut file| file.write_all(&artifact));
    match written {
        Ok(()) => 0,
        Err(error) => {
            let _ = write!(std::io::stderr(), "cannot write {}: {error}", out.display());
            1
        }
    }
}

/// Creates `file` for writing by this user only; fails if it exists.
fn create_private(file: &Path) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(file).map(drop)
}

/// Makes `options` open non-blocking (opening a FIFO then never waits), where `O_NONBLOCK`
/// has the generic Linux value; elsewhere the type checks around the open stand alone.
fn open_nonblocking(options: &mut std::fs::OpenOptions) {
    let _ = &options;
    #[cfg(all(
        target_os = "linux",
        any(
            target_arch = "x86_64",
            target_arch = "x86",
            target_arch = "aarch64",
            target_arch = "arm",
            target_arch = "riscv64"
        )
    ))]
    {
        use std::os::unix::fs::OpenOptionsExt;
        const O_NONBLOCK: i32 = 0o4000;
        options.custom_flags(O_NONBLOCK);
    }
}

/// Reads a plugin file: only a regular file (a symlink is followed) of at most `max_bytes`.
/// The type and size are checked before opening and again on the opened file, which is
/// opened non-blocking (a FIFO swapped in cannot hang the reader) and read through a bounded
/// reader (a file that grows is refused, not read to its end). Blocking.
pub fn read_module(path: &Path, max_bytes: u64) -> Result<Vec<u8>, LoadError> {
    let read_error = |source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    };
    let check = |metadata: &std::fs::Metadata| -> Result<(), LoadError> {
        if !metadata.is_file() {
            return Err(LoadError::NotRegular {
                path: path.to_path_buf(),
                kind: file_kind(&metadata.file_type()),
            });
        }
        if metadata.len() > max_bytes {
            return Err(LoadError::TooLarge {
                path: path.to_path_buf(),
                size: metadata.len(),
                max: max_bytes,
            });
        }
        Ok(())
    };
    check(&std::fs::metadata(path).map_err(read_error)?)?;
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    open_nonblocking(&mut options);
    let file = options.open(path).map_err(read_error)?;
    check(&file.metadata().map_err(read_error)?)?;
    let mut bytes = Vec::new();
    file.take(max_bytes.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    let size = bytes.len() as u64;
    if size > max_bytes {
        return Err(LoadError::TooLarge {
            path: path.to_path_buf(),
            size,
            max: max_bytes,
        });
    }
    Ok(bytes)
}

/// A file type as an error message names it.
fn file_kind(file_type: &std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if file_type.is_fifo() {
            return "a FIFO";
        }
        if file_type.is_socket() {
            return "a socket";
        }
        if file_type.is_char_device() {
            return "a character device";
        }
        if file_type.is_block_device() {
            return "a block device";
        }
    }
    if file_type.is_dir() {
        "a directory"
    } else {
        "not a regular file"
    }
}

/// Loads a compiled module written by [`store_cached`].
#[allow(unsafe_code)]
fn deserialize_cached(engine: &wasmtime::Engine, file: &Path) -> wasmtime::Result<Module> {
    // SAFETY: wasmtime runs deserialized code as-is, so the file must be one that wasmtime
    // itself produced. Only this agent writes the cache directory (created 0700, written
    // through a temporary file and a rename), and the file name carries the engine's settings
    // hash, so wasmtime's own compatibility check sees only artifacts of this engine's kind.
    unsafe { Module::deserialize_file(engine, file) }
}

/// Creates the cache directory of `file` (0700) if it does not exist.
fn ensure_cache_dir(file: &Path) -> std::io::Result<()> {
    let dir = file
        .parent()
        .expect("cache files live in the cache directory");
    if !dir.exists() {
        std::fs::create_dir_all(dir)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
    }
    Ok(())
}

fn store_cached(module: &Module, file: &Path) -> std::io::Result<()> {
    ensure_cache_dir(file)?;
    let bytes = module.serialize().map_err(std::io::Error::other)?;
    let temp = file.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&temp, bytes)?;
    std::fs::rename(&temp, file)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn signature(ty: &FuncType) -> String {
    let list = |types: Vec<String>| types.join(", ");
    let params = list(ty.params().map(|t| t.to_string()).collect());
    let results = list(ty.results().map(|t| t.to_string()).collect());
    format!("({params}) -> ({results})")
}

/// Checks the module against ABI v1 before anything runs; the error says what to fix.
fn validate(module: &Module) -> Result<(), String> {
    let export = |name: &str| module.get_export(name);
    if export(abi::EXPORT_MARKER).is_none() {
        let marker = module.exports().find_map(|e| {
            e.name()
                .strip_prefix("serf_plugin_abi_v")
                .map(str::to_owned)
        });
        return Err(match marker.as_deref().map(str::parse::<u32>) {
            Some(Ok(version)) if version > abi::ABI_VERSION => format!(
                "it was built with a newer plugin SDK, for ABI v{version}; this agent (serf {}) \
                 runs ABI v{} plugins: upgrade the agent, or build the plugin with an SDK of \
                 ABI v{} (serf-plugin-sdk {})",
                env!("CARGO_PKG_VERSION"),
                abi::ABI_VERSION,
                abi::ABI_VERSION,
                env!("CARGO_PKG_VERSION"),
            ),
            Some(_) => format!(
                "missing export {} (it has serf_plugin_abi_v{}: a different ABI version): \
                 rebuild it with serf-plugin-sdk {}",
                abi::EXPORT_MARKER,
                marker.unwrap_or_default(),
                env!("CARGO_PKG_VERSION"),
            ),
            None => format!(
                "missing export {}: build it with the serf plugin SDK",
                abi::EXPORT_MARKER
            ),
        });
    }
    if !matches!(export("memory"), Some(ExternType::Memory(_))) {
        return Err("missing export memory".into());
    }
    if export("_start").is_some() && export(abi::EXPORT_INITIALIZE).is_none() {
        return Err(
            "it is a command (exports _start), not a reactor: build Rust plugins as \
                    crate-type cdylib and Go plugins with -buildmode=c-shared"
                .into(),
        );
    }
    let required: [(&str, &str, bool); 6] = [
        (abi::EXPORT_INPUT_BUFFER, "(i32) -> (i32)", true),
        (abi::EXPORT_INIT, "(i32, i32) -> (i32)", true),
        (abi::EXPORT_HANDLE, "(i32, i32) -> (i32)", true),
        (abi::EXPORT_SHUTDOWN, "() -> ()", false),
        (abi::EXPORT_INITIALIZE, "() -> ()", false),
        (abi::EXPORT_JOB, "(i32, i32) -> (i32)", false),
    ];
    for (name, expected, required) in required {
        match export(name) {
            Some(ExternType::Func(ty)) if signature(&ty) == expected => {}
            Some(ExternType::Func(ty)) => {
                return Err(format!(
                    "export {name} has signature {}, expected {expected}",
                    signature(&ty)
                ));
            }
            Some(_) => return Err(format!("export {name} is not a function")),
            None if required => return Err(format!("missing export {name}")),
            None => {}
        }
    }
    for import in module.imports() {
        match import.module() {
            abi::IMPORT_MODULE => {
                let known = instance::HOST_FUNCTIONS
                    .iter()
                    .chain(&instance::JOB_HOST_FUNCTIONS)
                    .chain(&instance::CAPABILITY_FUNCTIONS)
                    .chain(&super::commands::COMMAND_FUNCTIONS)
                    .chain(&super::effects::EFFECT_FUNCTIONS)
                    .find(|(name, _)| *name == import.name());
                let Some((_, expected)) = known else {
                    return Err(format!(
                        "it needs serf.{}, which this agent (serf {}) does not provide: it was \
                         built with a newer plugin SDK; upgrade the agent, or build the plugin \
                         without the SDK feature that needs it",
                        import.name(),
                        env!("CARGO_PKG_VERSION"),
                    ));
                };
                match import.ty() {
                    ExternType::Func(ty) if signature(&ty) == *expected => {}
                    ExternType::Func(ty) => {
                        return Err(format!(
                            "import serf.{} has signature {}, expected {expected}",
                            import.name(),
                            signature(&ty)
                        ));
                    }
                    _ => return Err(format!("import serf.{} is not a function", import.name())),
                }
            }
            "wasi_snapshot_preview1" => {}
            other => {
                return Err(format!(
                    "it imports {other}.{}: only serf and wasi_snapshot_preview1 are available",
                    import.name()
                ));
            }
        }
    }
    // Jobs (ABI v1.1): a job runs in `serf_job`, so a module that starts jobs must export it.
    let starts_jobs = module
        .imports()
        .any(|i| i.module() == abi::IMPORT_MODULE && i.name() == abi::IMPORT_JOB_START);
    if starts_jobs && export(abi::EXPORT_JOB).is_none() {
        return Err(format!(
            "it imports serf.{} but does not export {} (Rust: the SDK's jobs feature)",
            abi::IMPORT_JOB_START,
            abi::EXPORT_JOB
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"(module
        (import "serf" "log" (func (param i32 i32 i32) (result i32)))
        (memory (export "memory") 1)
        (func (export "serf_plugin_abi_v1"))
        (func (export "serf_input_buffer") (param i32) (result i32) i32.const 1024)
        (func (export "serf_init") (param i32 i32) (result i32) i32.const 0)
        (func (export "serf_handle") (param i32 i32) (result i32) i32.const 0))"#;

    fn load(engine: &Engine, wat: &str) -> Result<LoadedModule, LoadError> {
        engine.load(Path::new("p.wasm"), &wat::parse_str(wat).unwrap())
    }

    #[test]
    fn accepts_a_minimal_plugin() {
        let engine = Engine::new(None);
        assert!(!engine.is_started(), "wasmtime waits for the first plugin");
        let loaded = load(&engine, GOOD).unwrap();
        assert!(engine.is_started());
        assert!(!loaded.from_cache);
        assert_eq!(loaded.sha256.len(), 64);
    }

    #[test]
    fn refuses_non_wasm_with_a_clear_error() {
        let engine = Engine::new(None);
        let error = engine
            .load(Path::new("notes.wasm"), b"#!/bin/sh\n")
            .unwrap_err();
        assert_eq!(error.to_string(), "notes.wasm is not a WebAssembly module");
        let error = engine
            .load(Path::new("bad.wasm"), b"\0asm\x01\0\0\0\x99")
            .unwrap_err();
        assert!(
            error.to_string().starts_with("cannot compile bad.wasm"),
            "{error}"
        );
    }

    #[test]
    fn refuses_modules_with_the_wrong_abi() {
        let engine = Engine::new(None);
        let cases = [
            (
                GOOD.replace("serf_plugin_abi_v1", "serf_plugin_abi_v2"),
                "built with a newer plugin SDK, for ABI v2; this agent",
            ),
            (
                GOOD.replace("serf_plugin_abi_v1", "serf_plugin_abi_v0"),
                "(it has serf_plugin_abi_v0: a different ABI version)",
            ),
            (
                GOOD.replace("(export \"memory\")", ""),
                "missing export memory",
            ),
            (
                GOOD.replace(
                    "(func (export \"serf_handle\") (param i32 i32)",
                    "(func (export \"serf_handle\") (param i32)",
                ),
                "export serf_handle has signature (i32) -> (i32)",
            ),
            (
                GOOD.replace("\"serf\" \"log\"", "\"serf\" \"teleport\""),
                "serf.teleport",
            ),
            (
                GOOD.replace("\"serf\" \"log\"", "\"env\" \"log\""),
                "it imports env.log",
            ),
            (
                GOOD.replace(
                    "(func (export \"serf_plugin_abi_v1\"))",
                    "(func (export \"serf_plugin_abi_v1\")) (func (export \"_start\"))",
                ),
                "not a reactor",
            ),
        ];
        for (wat, needle) in cases {
            let error = load(&engine, &wat).expect_err(needle).to_string();
            assert!(error.contains("is not a serf plugin"), "{error}");
            assert!(error.contains(needle), "{error} lacks {needle}");
        }
    }

    #[test]
    fn a_module_that_starts_jobs_must_export_serf_job() {
        let engine = Engine::new(None);
        let starts_jobs = GOOD.replace(
            "(memory",
            "(import \"serf\" \"job_start\" (func (param i32 i32) (result i32))) (memory",
        );
        let error = load(&engine, &starts_jobs).unwrap_err().to_string();
        assert!(error.contains("does not export serf_job"), "{error}");
        let job = "(func (export \"serf_job\") (param i32 i32) (result i32) i32.const 0))";
        let runs_jobs = starts_jobs.replace("i32.const 0))", &format!("i32.const 0) {job}"));
        load(&engine, &runs_jobs).unwrap();
        let wrong = GOOD.replace(
            "i32.const 0))",
            "i32.const 0) (func (export \"serf_job\") (param i32) (result i32) i32.const 0))",
        );
        let error = load(&engine, &wrong).unwrap_err().to_string();
        assert!(
            error.contains("export serf_job has signature (i32) -> (i32)"),
            "{error}"
        );
    }

    #[test]
    fn only_regular_files_under_the_size_limit_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("x.wasm");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        assert!(made.is_ok_and(|status| status.success()), "mkfifo failed");
        let error = read_module(&fifo, 1 << 20).unwrap_err().to_string();
        assert!(
            error.ends_with("x.wasm: it is a FIFO, not a regular file"),
            "{error}"
        );
        let zero = dir.path().join("zero.wasm");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        let error = read_module(&zero, 1 << 20).unwrap_err().to_string();
        assert!(
            error.ends_with("it is a character device, not a regular file"),
            "{error}"
        );
        let error = read_module(dir.path(), 1 << 20).unwrap_err().to_string();
        assert!(
            error.ends_with("it is a directory, not a regular file"),
            "{error}"
        );
        let big = dir.path().join("big.wasm");
        std::fs::write(&big, vec![0u8; 2048]).unwrap();
        let error = read_module(&big, 1024).unwrap_err().to_string();
        assert!(
            error.contains("2048 bytes exceed the limit of 1024 bytes (plugin_max_size_mib)"),
            "{error}"
        );
        assert_eq!(read_module(&big, 2048).unwrap().len(), 2048);
        let engine = Engine::new(None).with_budget(CompileBudget {
            max_module_bytes: 16,
            ..CompileBudget::DEFAULT
        });
        let error = load(&engine, GOOD).unwrap_err().to_string();
        assert!(error.contains("exceed the limit of 16 bytes"), "{error}");
    }

    #[test]
    fn a_compiler_past_its_deadline_is_stopped_and_the_module_refused() {
        let dir = tempfile::tempdir().unwrap();
        let program = dir.path().join("slow-compiler");
        std::fs::write(&program, "#!/bin/sh\nexec sleep 30\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
        let budget = CompileBudget {
            timeout: Duration::from_millis(200),
            ..CompileBudget::DEFAULT
        };
        let started = Instant::now();
        let error = run_compiler(&program, b"", &dir.path().join("out"), budget).unwrap_err();
        assert!(
            error.contains("longer than the 200ms budget (plugin_compile_timeout)"),
            "{error}"
        );
        assert!(started.elapsed() < Duration::from_secs(20), "not stopped");
        let failing = dir.path().join("failing-compiler");
        std::fs::write(&failing, "#!/bin/sh\necho 'no good' >&2\nexit 1\n").unwrap();
        std::fs::set_permissions(&failing, std::fs::Permissions::from_mode(0o755)).unwrap();
        let error = run_compiler(&failing, b"", &dir.path().join("out"), budget).unwrap_err();
        assert_eq!(error, "no good");
    }

    #[test]
    fn compiled_modules_are_cached_per_engine_settings() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("plugin-cache");
        let engine = Engine::new(Some(cache.clone()));
        assert!(!load(&engine, GOOD).unwrap().from_cache);
        let restarted = Engine::new(Some(cache.clone()));
        assert!(load(&restarted, GOOD).unwrap().from_cache);
        assert_eq!(restarted.cache_counts(), (1, 0));
        // A damaged artifact is recompiled, not trusted.
        for entry in std::fs::read_dir(&cache).unwrap() {
            std::fs::write(entry.unwrap().path(), b"garbage").unwrap();
        }
        let third = Engine::new(Some(cache));
        assert!(!load(&third, GOOD).unwrap().from_cache);
    }
}
