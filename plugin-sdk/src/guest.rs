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
use crate::abi::LogLevel;
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
    }
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
    };
}
