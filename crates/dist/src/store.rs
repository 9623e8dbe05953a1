//! c10d's `TCPStore`: the key-value store PyTorch's jobs meet at (`MASTER_ADDR:MASTER_PORT`).
//! Rank 0 runs the server inside its process; every rank, rank 0 included, is a client. `get`
//! and `wait`-like calls block until the key is set or the store's timeout passes.
use std::ffi::{c_char, c_int, c_void, CString};
use std::time::Duration;

use crate::{DistError, Result};

extern "C" {
    fn selfsup_store_new(
        host: *const c_char,
        port: u16,
        is_server: c_int,
        world_size: i64,
        timeout_ms: i64,
        err: *mut c_char,
        err_len: usize,
    ) -> *mut c_void;
    fn selfsup_store_free(h: *mut c_void);
    fn selfsup_store_port(h: *mut c_void) -> c_int;
    fn selfsup_store_set(
        h: *mut c_void,
        key: *const c_char,
        data: *const u8,
        len: usize,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
    fn selfsup_store_get(
        h: *mut c_void,
        key: *const c_char,
        out: *mut *mut u8,
        out_len: *mut usize,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
    fn selfsup_store_free_buf(buf: *mut u8);
    fn selfsup_store_add(
        h: *mut c_void,
        key: *const c_char,
        delta: i64,
        out: *mut i64,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
    fn selfsup_store_delete(
        h: *mut c_void,
        key: *const c_char,
        deleted: *mut c_int,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
}

const ERR_LEN: usize = 1024;

/// A connection to a c10d `TCPStore` (and, on rank 0, the server itself).
#[derive(Debug)]
pub struct TcpStore {
    handle: *mut c_void,
    addr: String,
}

impl TcpStore {
    /// The C handle (a `selfsup::StoreHandle*`), for the NCCL shim's rendezvous.
    #[cfg_attr(not(feature = "nccl"), allow(dead_code))]
    pub(crate) fn raw(&self) -> *mut c_void {
        self.handle
    }
}

// SAFETY: c10d's TCPStore serialises its client calls with an internal lock (it is shared
// between threads in PyTorch, e.g. by ProcessGroupNCCL's watchdog), and the handle is only
// freed in `drop`.
unsafe impl Send for TcpStore {}
// SAFETY: as above.
unsafe impl Sync for TcpStore {}

/// The first line of a C++ exception message that a shim's `guarded` (`selfsup/guard.h`) wrote
/// into `buf`, up to its NUL (libtorch and c10d append a C++ stack trace).
pub fn shim_message(buf: &[u8]) -> String {
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let text = String::from_utf8_lossy(&buf[..end]);
    text.lines().next().unwrap_or("").trim().to_string()
}

impl TcpStore {
    /// Connects to the store at `host:port`; with `is_server`, starts it first (port 0 picks a
    /// free one, see [`TcpStore::port`]). With `world_size` > 0, returns only once that many
    /// processes have connected. `timeout` bounds the connection and every later blocking call.
    pub fn connect(
        host: &str,
        port: u16,
        is_server: bool,
        world_size: usize,
        timeout: Duration,
    ) -> Result<Self> {
        let addr = format!("{host}:{port}");
        let c_host = CString::new(host)
            .map_err(|_| DistError::Store { addr: addr.clone(), msg: "NUL in host".into() })?;
        let mut err = [0u8; ERR_LEN];
        // SAFETY: a NUL-terminated host and an error buffer of `ERR_LEN` bytes; the shim
        // catches every C++ exception.
        let handle = unsafe {
            selfsup_store_new(
                c_host.as_ptr(),
                port,
                c_int::from(is_server),
                world_size as i64,
                timeout.as_millis().min(i64::MAX as u128) as i64,
                err.as_mut_ptr().cast(),
                ERR_LEN,
            )
        };
        if handle.is_null() {
            return Err(DistError::Store { addr, msg: shim_message(&err) });
        }
        let mut store = TcpStore { handle, addr };
        if port == 0 {
            store.addr = format!("{host}:{}", store.port());
        }
        Ok(store)
    }

    /// The port the store listens on.
    pub fn port(&self) -> u16 {
        // SAFETY: a live handle.
        unsafe { selfsup_store_port(self.handle) as u16 }
    }

    fn key(&self, key: &str) -> Result<CString> {
        CString::new(key).map_err(|_| self.error(format!("NUL in key `{key}`")))
    }

    fn error(&self, msg: String) -> DistError {
        DistError::Store { addr: self.addr.clone(), msg }
    }

    fn check(&self, rc: c_int, what: &str, err: &[u8]) -> Result<()> {
        if rc == 0 {
            Ok(())
        } else {
            Err(self.error(format!("{what}: {}", shim_message(err))))
        }
    }

    /// Sets `key` to `value`.
    pub fn set(&self, key: &str, value: &[u8]) -> Result<()> {
        let k = self.key(key)?;
        let mut err = [0u8; ERR_LEN];
        // SAFETY: a live handle, a NUL-terminated key, `value` valid for its length.
        let rc = unsafe {
            selfsup_store_set(
                self.handle,
                k.as_ptr(),
                value.as_ptr(),
                value.len(),
                err.as_mut_ptr().cast(),
                ERR_LEN,
            )
        };
        self.check(rc, &format!("set `{key}`"), &err)
    }

    /// The value of `key`, waiting for it to be set (up to the store's timeout).
    pub fn get(&self, key: &str) -> Result<Vec<u8>> {
        let k = self.key(key)?;
        let mut err = [0u8; ERR_LEN];
        let (mut ptr, mut len) = (std::ptr::null_mut::<u8>(), 0usize);
        // SAFETY: a live handle, a NUL-terminated key and valid out-pointers; on success the
        // shim hands over a malloc'd buffer of `len` bytes, copied and freed below.
        let rc = unsafe {
            selfsup_store_get(
                self.handle,
                k.as_ptr(),
                &mut ptr,
                &mut len,
                err.as_mut_ptr().cast(),
                ERR_LEN,
            )
        };
        self.check(rc, &format!("get `{key}`"), &err)?;
        // SAFETY: `ptr` holds `len` initialised bytes from the shim, freed once, here.
        let value = unsafe {
            let v = std::slice::from_raw_parts(ptr, len).to_vec();
            selfsup_store_free_buf(ptr);
            v
        };
        Ok(value)
    }

    /// Adds `delta` to the counter at `key` (created at 0) and returns its new value.
    pub fn add(&self, key: &str, delta: i64) -> Result<i64> {
        let k = self.key(key)?;
        let mut err = [0u8; ERR_LEN];
        let mut out = 0i64;
        // SAFETY: a live handle, a NUL-terminated key and a valid out-pointer.
        let rc = unsafe {
            selfsup_store_add(
                self.handle,
                k.as_ptr(),
                delta,
                &mut out,
                err.as_mut_ptr().cast(),
                ERR_LEN,
            )
        };
        self.check(rc, &format!("add to `{key}`"), &err)?;
        Ok(out)
    }

    /// Deletes `key`; whether it existed.
    pub fn delete(&self, key: &str) -> Result<bool> {
        let k = self.key(key)?;
        let mut err = [0u8; ERR_LEN];
        let mut deleted: c_int = 0;
        // SAFETY: a live handle, a NUL-terminated key and a valid out-pointer.
        let rc = unsafe {
            selfsup_store_delete(
                self.handle,
                k.as_ptr(),
                &mut deleted,
                err.as_mut_ptr().cast(),
                ERR_LEN,
            )
        };
        self.check(rc, &format!("delete `{key}`"), &err)?;
        Ok(deleted == 1)
    }

    /// `host:port`.
    pub fn addr(&self) -> &str {
        &self.addr
    }
}

impl Drop for TcpStore {
    fn drop(&mut self) {
        // SAFETY: the handle came from `selfsup_store_new` and is freed once.
        unsafe { selfsup_store_free(self.handle) }
    }
}

/// A port that was free a moment ago on `127.0.0.1` (bound and released; a launcher's usual
/// race, as torchrun's standalone mode has).
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port())
}
