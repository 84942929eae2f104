//! Any read-only buffer-protocol object (a memoryview of a mapped file) read in place.
//!
//! The abi3 build for Python 3.10 has no buffer protocol in its limited API (it joined the
//! stable ABI in 3.11, with the same struct and functions), so PyO3 leaves it out there; every
//! CPython since 3.3 exports both functions with this layout. Without it a mapped file would
//! be copied into bytes before the core could hash it: as much work as the hash itself.

use std::ffi::{c_char, c_int, c_void};
use std::marker::PhantomData;

use pyo3::exceptions::{PyBufferError, PyTypeError};
use pyo3::ffi::{PyObject, Py_ssize_t};
use pyo3::prelude::*;

#[repr(C)]
struct PyBufferStruct {
    buf: *mut c_void,
    obj: *mut PyObject,
    len: Py_ssize_t,
    itemsize: Py_ssize_t,
    readonly: c_int,
    ndim: c_int,
    format: *mut c_char,
    shape: *mut Py_ssize_t,
    strides: *mut Py_ssize_t,
    suboffsets: *mut Py_ssize_t,
    internal: *mut c_void,
}

extern "C" {
    fn PyObject_GetBuffer(obj: *mut PyObject, view: *mut PyBufferStruct, flags: c_int) -> c_int;
    fn PyBuffer_Release(view: *mut PyBufferStruct);
    fn mincore(addr: *mut c_void, length: usize, vec: *mut u8) -> c_int;
}

const PYBUF_SIMPLE: c_int = 0; // one contiguous run of bytes, read-only is fine

/// A read-only buffer held for the length of a call; released (with the GIL, which `'py`
/// proves) on drop. Writable ones (a bytearray) are refused: the core reads the bytes with the
/// GIL released, while another thread could write them. Boxed, as CPython may point into it.
pub struct BufferView<'py> {
    view: Box<PyBufferStruct>,
    _gil: PhantomData<Python<'py>>,
}

impl<'py> BufferView<'py> {
    pub fn get(obj: &Bound<'py, PyAny>) -> PyResult<Self> {
        // SAFETY: all-zero is a valid PyBufferStruct (null pointers, zero lengths)
        let mut view: Box<PyBufferStruct> = Box::new(unsafe { std::mem::zeroed() });
        // SAFETY: obj is a live object and the GIL is held (Bound<'py>); on success CPython
        // fills the struct, on failure it sets an exception and leaves nothing to release.
        if unsafe { PyObject_GetBuffer(obj.as_ptr(), &mut *view, PYBUF_SIMPLE) } != 0 {
            return Err(PyErr::take(obj.py())
                .unwrap_or_else(|| PyBufferError::new_err("the object has no buffer")));
        }
        let held = BufferView { view, _gil: PhantomData };
        if held.view.readonly == 0 {
            return Err(PyTypeError::new_err("a read-only buffer is required (bytes, or a memoryview of one)"));
        }
        Ok(held)
    }

    /// The bytes, valid while this view is held: the exporter keeps them (an mmap refuses to
    /// close while a view is out).
    pub fn bytes(&self) -> &[u8] {
        if self.view.buf.is_null() || self.view.len <= 0 {
            return &[];
        }
        // SAFETY: PYBUF_SIMPLE asks for `len` contiguous bytes at `buf`, kept until release.
        unsafe { std::slice::from_raw_parts(self.view.buf as *const u8, self.view.len as usize) }
    }

    /// Whether every page of this (mapped) buffer is in memory, read whole: a page whose read
    /// failed (an I/O error) is not, and touching it would kill the process (SIGBUS) instead of
    /// failing a read. `page`: the system's page size. False when the kernel cannot tell.
    pub fn resident(&self, page: usize) -> bool {
        let bytes = self.bytes();
        if bytes.is_empty() {
            return true; // nothing to touch
        }
        if page == 0 {
            return false;
        }
        let start = bytes.as_ptr() as usize;
        let first = start - start % page;
        let length = bytes.len() + (start - first);
        let mut pages = vec![0u8; length.div_ceil(page)];
        // SAFETY: [first, first + length) covers only pages of this buffer's mapping; `pages`
        // has one byte per page, as mincore writes.
        let done = unsafe { mincore(first as *mut c_void, length, pages.as_mut_ptr()) };
        done == 0 && pages.iter().all(|p| p & 1 == 1)
    }
}

impl Drop for BufferView<'_> {
    fn drop(&mut self) {
        // SAFETY: got by PyObject_GetBuffer, released once, with the GIL held ('py).
        unsafe { PyBuffer_Release(&mut *self.view) }
    }
}
