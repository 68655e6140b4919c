//! Effects (ABI v1.2) in a wasm build: the `serf` imports of HTTP, state, timers and metrics,
//! each linked only with its crate feature, and the calls `WasmHost` makes with them.
//!
//! A call whose result does not fit the buffer it passed gets the result's length; the host
//! keeps the result, and `take_result` fetches it into a buffer that large (the request is
//! not made twice).

#![allow(
    dead_code,
    unused_imports,
    reason = "each part is used only with its crate feature"
)]

use super::raw_parts;
use crate::abi::{HttpRequest, HttpResponse, MetricKind, StateKeys};
use crate::error::HostError;

#[allow(
    unreachable_pub,
    reason = "its items are re-exported through crate::sys"
)]
pub mod sys {
    //! The raw effect imports (ABI v1.2). Like `sys`, for code that must break the rules on
    //! purpose; plugins use [`Host`](crate::Host).

    // SAFETY: these calls *write* guest memory: up to `out_cap` bytes at `out_ptr`, after the
    // host has checked the range, and only when the whole result fits; the rest only read it.
    // So the writing ones are `unsafe`: the caller must own those bytes.
    #[cfg(feature = "http")]
    #[link(wasm_import_module = "serf")]
    unsafe extern "C" {
        /// `serf.http_request(ptr, len, out_ptr, out_cap)`: makes a msgpack
        /// [`HttpRequest`](crate::abi::HttpRequest); returns the length of the
        /// [`HttpResponse`](crate::abi::HttpResponse).
        ///
        /// # Safety
        ///
        /// `out_ptr..out_ptr + out_cap` must be memory the caller may overwrite.
        #[link_name = "http_request"]
        pub fn http_request(ptr: i32, len: i32, out_ptr: i32, out_cap: i32) -> i32;
    }

    #[cfg(feature = "state")]
    #[link(wasm_import_module = "serf")]
    unsafe extern "C" {
        /// `serf.state_get(key_ptr, key_len, out_ptr, out_cap)`: the value's length.
        ///
        /// # Safety
        ///
        /// `out_ptr..out_ptr + out_cap` must be memory the caller may overwrite.
        #[link_name = "state_get"]
        pub fn state_get(key_ptr: i32, key_len: i32, out_ptr: i32, out_cap: i32) -> i32;

        /// `serf.state_set(key_ptr, key_len, value_ptr, value_len)`.
        #[link_name = "state_set"]
        pub safe fn state_set(key_ptr: i32, key_len: i32, value_ptr: i32, value_len: i32) -> i32;

        /// `serf.state_delete(key_ptr, key_len)`.
        #[link_name = "state_delete"]
        pub safe fn state_delete(key_ptr: i32, key_len: i32) -> i32;

        /// `serf.state_list(ptr, len, out_ptr, out_cap)`: the length of the
        /// [`StateKeys`](crate::abi::StateKeys).
        ///
        /// # Safety
        ///
        /// `out_ptr..out_ptr + out_cap` must be memory the caller may overwrite.
        #[link_name = "state_list"]
        pub fn state_list(ptr: i32, len: i32, out_ptr: i32, out_cap: i32) -> i32;
    }

    #[cfg(any(feature = "http", feature = "state"))]
    #[link(wasm_import_module = "serf")]
    unsafe extern "C" {
        /// `serf.take_result(out_ptr, out_cap)`: the result the last call kept.
        ///
        /// # Safety
        ///
        /// `out_ptr..out_ptr + out_cap` must be memory the caller may overwrite.
        #[link_name = "take_result"]
        pub fn take_result(out_ptr: i32, out_cap: i32) -> i32;
    }

    #[cfg(feature = "timers")]
    #[link(wasm_import_module = "serf")]
    unsafe extern "C" {
        /// `serf.set_tick(period_ms)`: 0 stops the ticks.
        #[link_name = "set_tick"]
        pub safe fn set_tick(period_ms: i64) -> i32;
    }

    #[cfg(feature = "metrics")]
    #[link(wasm_import_module = "serf")]
    unsafe extern "C" {
        /// `serf.metric_define(ptr, len)`: a msgpack
        /// [`MetricDefine`](crate::abi::MetricDefine); returns its id.
        #[link_name = "metric_define"]
        pub safe fn metric_define(ptr: i32, len: i32) -> i32;

        /// `serf.metric_record(id, value)`.
        #[link_name = "metric_record"]
        pub safe fn metric_record(id: i32, value: f64) -> i32;
    }
}

/// Calls `call(out_ptr, out_cap)` with a buffer of `first` bytes; if the result is longer,
/// fetches it with `take_result` into a buffer of its length.
#[cfg(any(feature = "http", feature = "state"))]
fn with_result(first: usize, call: impl FnOnce(i32, i32) -> i32) -> Result<Vec<u8>, HostError> {
    let mut buffer: Vec<u8> = Vec::with_capacity(first);
    let capacity = i32::try_from(buffer.capacity()).map_err(|_| HostError::TooLarge)?;
    let len = call(buffer.as_mut_ptr() as usize as u32 as i32, capacity);
    HostError::check(len)?;
    let len = len as usize;
    if len > buffer.capacity() {
        buffer.reserve_exact(len);
        let capacity = i32::try_from(buffer.capacity()).map_err(|_| HostError::TooLarge)?;
        // SAFETY: the spare capacity of `buffer`, which this function owns.
        let taken =
            unsafe { sys::take_result(buffer.as_mut_ptr() as usize as u32 as i32, capacity) };
        HostError::check(taken)?;
        if taken as usize > buffer.capacity() {
            return Err(HostError::Unavailable);
        }
    }
    // SAFETY: the host wrote `len` bytes at the start of the buffer (it fit).
    unsafe { buffer.set_len(len) };
    Ok(buffer)
}

#[cfg(feature = "http")]
pub(super) fn http(request: &HttpRequest) -> Result<HttpResponse, HostError> {
    let bytes = crate::effects_wire::encode_http_request(request);
    let (ptr, len) = raw_parts(&bytes).ok_or(HostError::TooLarge)?;
    // SAFETY: `with_result` hands over the spare capacity of a buffer it owns.
    let response = with_result(16 * 1024, |out, cap| unsafe {
        sys::http_request(ptr, len, out, cap)
    })?;
    crate::effects_wire::decode_http_response(&response).map_err(|_| HostError::Unavailable)
}

#[cfg(not(feature = "http"))]
pub(super) fn http(request: &HttpRequest) -> Result<HttpResponse, HostError> {
    let _ = request;
    Err(super::missing_feature("http", "http"))
}

#[cfg(feature = "state")]
pub(super) fn state_get(key: &[u8]) -> Result<Option<Vec<u8>>, HostError> {
    let (ptr, len) = raw_parts(key).ok_or(HostError::TooLarge)?;
    // SAFETY: as in `http`.
    match with_result(1024, |out, cap| unsafe {
        sys::state_get(ptr, len, out, cap)
    }) {
        Ok(value) => Ok(Some(value)),
        Err(HostError::NotFound) => Ok(None),
        Err(error) => Err(error),
    }
}

#[cfg(feature = "state")]
pub(super) fn state_set(key: &[u8], value: &[u8]) -> Result<(), HostError> {
    let (kp, kl) = raw_parts(key).ok_or(HostError::TooLarge)?;
    let (vp, vl) = raw_parts(value).ok_or(HostError::TooLarge)?;
    HostError::check(sys::state_set(kp, kl, vp, vl))
}

#[cfg(feature = "state")]
pub(super) fn state_delete(key: &[u8]) -> Result<bool, HostError> {
    let (ptr, len) = raw_parts(key).ok_or(HostError::TooLarge)?;
    match HostError::check(sys::state_delete(ptr, len)) {
        Ok(()) => Ok(true),
        Err(HostError::NotFound) => Ok(false),
        Err(error) => Err(error),
    }
}

#[cfg(feature = "state")]
pub(super) fn state_list(prefix: &[u8], after: &[u8], limit: u32) -> Result<StateKeys, HostError> {
    let request = crate::effects_wire::encode_state_list(prefix, after, limit);
    let (ptr, len) = raw_parts(&request).ok_or(HostError::TooLarge)?;
    // SAFETY: as in `http`.
    let keys = with_result(4096, |out, cap| unsafe {
        sys::state_list(ptr, len, out, cap)
    })?;
    crate::effects_wire::decode_state_keys(&keys).map_err(|_| HostError::Unavailable)
}

#[cfg(not(feature = "state"))]
pub(super) fn state_get(key: &[u8]) -> Result<Option<Vec<u8>>, HostError> {
    let _ = key;
    Err(super::missing_feature("state_get", "state"))
}

#[cfg(not(feature = "state"))]
pub(super) fn state_set(key: &[u8], value: &[u8]) -> Result<(), HostError> {
    let _ = (key, value);
    Err(super::missing_feature("state_set", "state"))
}

#[cfg(not(feature = "state"))]
pub(super) fn state_delete(key: &[u8]) -> Result<bool, HostError> {
    let _ = key;
    Err(super::missing_feature("state_delete", "state"))
}

#[cfg(not(feature = "state"))]
pub(super) fn state_list(prefix: &[u8], after: &[u8], limit: u32) -> Result<StateKeys, HostError> {
    let _ = (prefix, after, limit);
    Err(super::missing_feature("state_list", "state"))
}

#[cfg(feature = "timers")]
pub(super) fn set_tick(period: std::time::Duration) -> Result<(), HostError> {
    let ms = i64::try_from(period.as_millis()).map_err(|_| HostError::BadArgument)?;
    HostError::check(sys::set_tick(ms))
}

#[cfg(not(feature = "timers"))]
pub(super) fn set_tick(period: std::time::Duration) -> Result<(), HostError> {
    let _ = period;
    Err(super::missing_feature("set_tick", "timers"))
}

#[cfg(feature = "metrics")]
pub(super) fn define_metric(name: &str, kind: MetricKind, help: &str) -> Result<u32, HostError> {
    let request = crate::effects_wire::encode_metric_define(name, kind.as_str(), help);
    let (ptr, len) = raw_parts(&request).ok_or(HostError::TooLarge)?;
    let id = sys::metric_define(ptr, len);
    HostError::check(id)?;
    Ok(id as u32)
}

#[cfg(feature = "metrics")]
pub(super) fn record_metric(id: u32, value: f64) -> Result<(), HostError> {
    let id = i32::try_from(id).map_err(|_| HostError::NotFound)?;
    HostError::check(sys::metric_record(id, value))
}

#[cfg(not(feature = "metrics"))]
pub(super) fn define_metric(name: &str, kind: MetricKind, help: &str) -> Result<u32, HostError> {
    let _ = (name, kind, help);
    Err(super::missing_feature("define_metric", "metrics"))
}

#[cfg(not(feature = "metrics"))]
pub(super) fn record_metric(id: u32, value: f64) -> Result<(), HostError> {
    let _ = (id, value);
    Err(super::missing_feature("record_metric", "metrics"))
}
