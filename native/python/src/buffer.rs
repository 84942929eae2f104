//! Any buffer-protocol object (a memoryview of a mapped file, a bytearray) read in place.
//!
//! The abi3 build for Python 3.10 has no buffer protocol in its limited API (it joined the
//! stable ABI in 3.11, with the same struct and functions), so PyO3 leaves it out there; every
//! CPython since 3.0 exports both functions with this layout. Without it a mapped file would
//! be copied into bytes before the core could hash it: as much work as the hash itself.

use std::ffi::{c_char, c_int, c_void};
use std::marker::PhantomData;

use pyo3::exceptions::PyBufferError;
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
}

const PYBUF_SIMPLE: c_int = 0; // one contiguous run of bytes, read-only is fine

/// A buffer held for the length of a call; released (with the GIL, which `'py` proves) on drop.
pub struct BufferView<'py> {
    view: PyBufferStruct,
    _gil: PhantomData<Python<'py>>,
}

impl<'py> BufferView<'py> {
    pub fn get(obj: &Bound<'py, PyAny>) -> PyResult<Self> {
        let mut view = std::mem::MaybeUninit::<PyBufferStruct>::uninit();
        // SAFETY: obj is a live object and the GIL is held (Bound<'py>); on success CPython
        // fills the whole struct, on failure it sets an exception and leaves nothing to release.
        let filled = unsafe { PyObject_GetBuffer(obj.as_ptr(), view.as_mut_ptr(), PYBUF_SIMPLE) };
        if filled != 0 {
            return Err(PyErr::take(obj.py())
                .unwrap_or_else(|| PyBufferError::new_err("the object has no buffer")));
        }
        // SAFETY: filled by the successful call above
        Ok(BufferView { view: unsafe { view.assume_init() }, _gil: PhantomData })
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
}

impl Drop for BufferView<'_> {
    fn drop(&mut self) {
        // SAFETY: got by PyObject_GetBuffer, released once, with the GIL held ('py).
        unsafe { PyBuffer_Release(&mut self.view) }
    }
}
