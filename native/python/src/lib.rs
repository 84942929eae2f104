//! `archcheck._native`: the core's Python face. Each call hands the core a buffer and releases
//! the GIL while it works; results come back in batches, never a call per member or page.
//! A panic in the core surfaces as `NativePanic`, never as a dead process.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::Hasher;
use std::sync::LazyLock;
use std::panic::{catch_unwind, AssertUnwindSafe};

use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};

use archcheck_core::digest::DigestKind;
use archcheck_core::finding::{Fields, Finding, Found, Value};
use archcheck_core::scan::listed::Listed;
use archcheck_core::scan::postgres::DataDir;
use archcheck_core::scan::{self, Router};
use archcheck_core::tar::{self, ContentScanner, Member};
use archcheck_core::stream;
use archcheck_core::zstd::{decode, walk};
use archcheck_core::text::bounded;

mod buffer;
use buffer::BufferView;

create_exception!(_native, NativePanic, PyException, "The native core failed (a bug in archcheck).");

thread_local! {
    static PANIC_AT: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// A panic is reported once, as NativePanic with where it happened, not printed to stderr.
fn quiet_panics() {
    std::panic::set_hook(Box::new(|info| {
        let at = info.location().map(|l| format!("{}:{}", l.file(), l.line()));
        PANIC_AT.with(|p| *p.borrow_mut() = at);
    }));
}

/// Run core code, turning a panic into NativePanic.
fn guarded<T>(f: impl FnOnce() -> T) -> PyResult<T> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|cause| {
        let text = cause.downcast_ref::<&str>().map(|s| s.to_string())
            .or_else(|| cause.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic".into());
        let at = PANIC_AT.with(|p| p.borrow_mut().take()).map_or(String::new(), |at| format!(" at {at}"));
        NativePanic::new_err(format!("{text}{at}"))
    })
}

/// ARCHCHECK_FAILPOINT=native-panic makes the walker panic on its first piece, as a bug in the
/// core would: how the tests reach the path a panic takes.
fn failpoint(name: &str) -> bool {
    static FAILPOINT: LazyLock<Option<String>> = LazyLock::new(|| std::env::var("ARCHCHECK_FAILPOINT").ok());
    FAILPOINT.as_deref() == Some(name)
}

fn value_to_py<'py>(py: Python<'py>, value: &Value) -> PyResult<Bound<'py, PyAny>> {
    Ok(match value {
        Value::Int(i) => i.into_pyobject(py)?.into_any(),
        Value::Text(s) => s.into_pyobject(py)?.into_any(),
        Value::Bool(b) => b.into_pyobject(py)?.to_owned().into_any(),
        Value::List(items) => {
            let list = PyList::empty(py);
            for item in items {
                list.append(value_to_py(py, item)?)?;
            }
            list.into_any()
        }
        Value::Null => py.None().into_bound(py),
    })
}

fn fields_to_dict<'py>(py: Python<'py>, fields: &Fields) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    for (key, value) in fields {
        dict.set_item(key, value_to_py(py, value)?)?;
    }
    Ok(dict)
}

/// (code, start, end, member, member_offset, place, details)
fn finding_to_py<'py>(py: Python<'py>, f: &Finding) -> PyResult<Bound<'py, PyTuple>> {
    (f.code, f.start, f.end, f.member.as_deref(), f.member_offset, fields_to_dict(py, &f.place)?,
     fields_to_dict(py, &f.details)?)
        .into_pyobject(py)
}

/// (code, offset, length, place, details): a scanner's finding in member coordinates.
fn found_to_py<'py>(py: Python<'py>, f: &Found) -> PyResult<Bound<'py, PyTuple>> {
    (f.code, f.offset, f.length, fields_to_dict(py, &f.place)?, fields_to_dict(py, &f.details)?).into_pyobject(py)
}

fn members_json(members: &[Member]) -> String {
    let mut out = String::with_capacity(members.len() * 120 + 2);
    out.push('[');
    for (i, m) in members.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        m.write_json(&mut out);
    }
    out.push(']');
    out
}

fn value_error(e: impl std::fmt::Display) -> PyErr {
    PyValueError::new_err(e.to_string())
}

// --- decoded bytes ------------------------------------------------------------------------------

/// Decoded bytes owned by the core: Python hands the object from a decode thread to the walker
/// and back for reuse, and never copies what it holds.
#[pyclass(module = "archcheck._native")]
struct Chunk {
    data: Vec<u8>,
}

#[pymethods]
impl Chunk {
    #[new]
    fn new(capacity: usize) -> Self {
        Chunk { data: Vec::with_capacity(capacity) }
    }

    fn __len__(&self) -> usize {
        self.data.len()
    }

    fn clear(&mut self) {
        self.data.clear();
    }

    #[getter]
    fn capacity(&self) -> usize {
        self.data.capacity()
    }

    /// A copy, for tests and small things.
    fn tobytes<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.data)
    }

    /// Fill from bytes (a plain tar read from the file goes through the same walker).
    fn fill(&mut self, data: &Bound<'_, PyBytes>) {
        self.data.clear();
        self.data.extend_from_slice(data.as_bytes());
    }
}

/// Bytes for the core: a Chunk's, a bytes object's, or any other buffer's read in place (a
/// memoryview of a mapped file).
enum Input<'a> {
    Chunk(PyRef<'a, Chunk>),
    Bytes(Bound<'a, PyBytes>),
    Buffer(BufferView<'a>),
}

impl<'a> Input<'a> {
    fn extract(obj: &Bound<'a, PyAny>) -> PyResult<Self> {
        if let Ok(chunk) = obj.cast::<Chunk>() {
            return Ok(Input::Chunk(chunk.borrow()));
        }
        if let Ok(bytes) = obj.cast::<PyBytes>() {
            return Ok(Input::Bytes(bytes.clone()));
        }
        Ok(Input::Buffer(BufferView::get(obj)?))
    }

    fn bytes(&self) -> &[u8] {
        match self {
            Input::Chunk(c) => &c.data,
            Input::Bytes(b) => b.as_bytes(),
            Input::Buffer(v) => v.bytes(),
        }
    }
}

// --- zstd ---------------------------------------------------------------------------------------

/// A Python reader (pread(offset, length), size) as the walk's byte source. A short read
/// fetches `READ_AHEAD` bytes and later reads inside them are served from there: a frame's
/// header and its first block header (or a checksum and the next frame's header) cost one call
/// into Python, not two; each call hands the GIL over, which dominates on small frames.
struct PyReader<'py> {
    reader: Bound<'py, PyAny>,
    size: u64,
    error: Option<PyErr>,
    ahead: Vec<u8>,
    ahead_at: u64,
}

const READ_AHEAD: usize = 4096;

impl<'py> PyReader<'py> {
    fn new(reader: Bound<'py, PyAny>) -> PyResult<Self> {
        let size: u64 = reader.getattr("size")?.extract()?;
        Ok(PyReader { reader, size, error: None, ahead: Vec::new(), ahead_at: 0 })
    }

    fn pread(&mut self, offset: u64, length: usize) -> Vec<u8> {
        if self.error.is_some() {
            return Vec::new();
        }
        match self.reader.call_method1("pread", (offset, length)).and_then(|b| Ok(b.cast::<PyBytes>()?.as_bytes().to_vec())) {
            Ok(data) => data,
            Err(e) => {
                self.error = Some(e);
                Vec::new()
            }
        }
    }
}

impl walk::ByteSource for PyReader<'_> {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&mut self, offset: u64, length: usize) -> Vec<u8> {
        if offset >= self.size {
            return Vec::new();
        }
        let end = (offset + length as u64).min(self.size);
        if offset >= self.ahead_at && end <= self.ahead_at + self.ahead.len() as u64 {
            let from = (offset - self.ahead_at) as usize;
            return self.ahead[from..from + (end.saturating_sub(offset)) as usize].to_vec();
        }
        if length >= READ_AHEAD {
            return self.pread(offset, length);
        }
        let want = READ_AHEAD.min(self.size.saturating_sub(offset) as usize).max(length);
        self.ahead = self.pread(offset, want);
        self.ahead_at = offset;
        let got = self.ahead.len().min(length);
        self.ahead[..got].to_vec()
    }
}

/// A frame as a tuple, in the field order of layers.zstd.Frame.
fn frame_tuple<'py>(py: Python<'py>, f: &walk::Frame) -> PyResult<Bound<'py, PyTuple>> {
    let items: Vec<Bound<'py, PyAny>> = vec![
        f.index.into_pyobject(py)?.into_any(), f.kind.name().into_pyobject(py)?.into_any(),
        f.offset.into_pyobject(py)?.into_any(), f.end.into_pyobject(py)?.into_any(),
        f.window.into_pyobject(py)?.into_any(), f.content_size.into_pyobject(py)?.into_any(),
        f.has_checksum.into_pyobject(py)?.to_owned().into_any(), f.dictionary_id.into_pyobject(py)?.into_any(),
        f.intact.into_pyobject(py)?.to_owned().into_any(), f.seek_checksum.into_pyobject(py)?.into_any(),
        f.seek_size.into_pyobject(py)?.into_any(), f.walked.into_pyobject(py)?.to_owned().into_any(),
        f.window_ok.into_pyobject(py)?.to_owned().into_any(), f.header_length.into_pyobject(py)?.into_any(),
    ];
    PyTuple::new(py, items)
}

fn walk_finding_to_py<'py>(py: Python<'py>, f: &walk::WalkFinding) -> PyResult<Bound<'py, PyTuple>> {
    (f.code, f.start, f.end, f.frame, fields_to_dict(py, &f.details)?).into_pyobject(py)
}

/// Walk every frame of a zstd file through `reader` (its pread and size): (frames, findings).
/// Frames as tuples in the field order of layers.zstd.Frame; findings as (code, start, end,
/// frame, details).
#[pyfunction]
fn walk_frames<'py>(py: Python<'py>, reader: Bound<'py, PyAny>, max_window: u64)
    -> PyResult<(Bound<'py, PyList>, Bound<'py, PyList>)> {
    let mut source = PyReader::new(reader)?;
    let (frames, findings) = guarded(|| walk::FrameWalk::new(&mut source, max_window).run())?;
    if let Some(e) = source.error {
        return Err(e);
    }
    let (frame_list, finding_list) = (PyList::empty(py), PyList::empty(py));
    for f in &frames {
        frame_list.append(frame_tuple(py, f)?)?;
    }
    for f in &findings {
        finding_list.append(walk_finding_to_py(py, f)?)?;
    }
    Ok((frame_list, finding_list))
}

/// Walk a zstd file's frames, handing each to `on_frame(frame, findings so far, whole)` as
/// FrameWalk::run_with does, keeping none: (findings, whether the seek table the file ends in
/// holds for its frames). `seekable`: whether the file ends in a seekable footer (when it does
/// not, nothing at all is kept of the frames). `start`: (offset, index) of the frame to begin at
/// (a walk begun past the first checks no seek table).
#[pyfunction]
#[pyo3(signature = (reader, max_window, seekable, on_frame, start=(0, 0)))]
fn hand_frames_on<'py>(py: Python<'py>, reader: Bound<'py, PyAny>, max_window: u64, seekable: bool,
                       on_frame: Bound<'py, PyAny>, start: (u64, u64)) -> PyResult<(Bound<'py, PyList>, bool)> {
    let mut source = PyReader::new(reader)?;
    let mut handed_error: Option<PyErr> = None;
    let end = guarded(|| {
        let walk = walk::FrameWalk::new(&mut source, max_window).seekable(seekable).starting_at(start.0, start.1);
        walk.run_with(|frame, found, whole| {
            let handed = frame_tuple(py, frame).and_then(|t| on_frame.call1((t, found, whole)));
            handed.map_err(|e| handed_error = Some(e)).is_ok()
        })
    })?;
    if let Some(e) = source.error.or(handed_error) {
        return Err(e);
    }
    let finding_list = PyList::empty(py);
    for f in &end.findings {
        finding_list.append(walk_finding_to_py(py, f)?)?;
    }
    Ok((finding_list, end.seek_table.is_some()))
}

/// The block walk of a frame whose end came from pzstd's note: None, or (code, start, end,
/// details).
#[pyfunction]
#[allow(clippy::type_complexity)]
fn unwalked_problem<'py>(py: Python<'py>, reader: Bound<'py, PyAny>, offset: u64, end: u64)
    -> PyResult<Option<(&'static str, u64, u64, Bound<'py, PyDict>)>> {
    let mut source = PyReader::new(reader)?;
    let frame = walk::Frame {
        index: 0, kind: walk::Kind::Zstd, offset, end, window: 0, content_size: None, has_checksum: false,
        dictionary_id: 0, intact: true, seek_checksum: None, seek_size: None, walked: false, window_ok: true,
        header_length: 0,
    };
    let problem = guarded(|| walk::unwalked_problem(&mut source, &frame))?;
    if let Some(e) = source.error {
        return Err(e);
    }
    problem.map(|(code, start, end, details)| Ok((code, start, end, fields_to_dict(py, &details)?))).transpose()
}

/// The block walk of a frame whose end came from pzstd's note, fed the bytes its decoder is
/// fed (walk::BlockTrail).
#[pyclass(module = "archcheck._native")]
struct BlockTrail {
    inner: walk::BlockTrail,
}

#[pymethods]
impl BlockTrail {
    #[new]
    fn new(offset: u64, noted_end: u64, header_length: u64, window: u64, has_checksum: bool) -> Self {
        BlockTrail { inner: walk::BlockTrail::new(offset, noted_end, header_length, window, has_checksum) }
    }

    /// The frame's bytes from archive offset `pos`, in order; cheap: three bytes per block are read.
    fn feed(&mut self, pos: u64, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let input = Input::extract(data)?;
        guarded(|| self.inner.feed(pos, input.bytes()))
    }

    /// (settled, problem): the problem as unwalked_problem gives it, once the blocks have ended
    /// or one was bad; (False, None) while the trail cannot tell.
    #[allow(clippy::type_complexity)]
    fn settled<'py>(&self, py: Python<'py>) -> PyResult<(bool, Option<(&'static str, u64, u64, Bound<'py, PyDict>)>)> {
        match self.inner.settled() {
            None => Ok((false, None)),
            Some(None) => Ok((true, None)),
            Some(Some((code, start, end, details))) => Ok((true, Some((code, *start, *end, fields_to_dict(py, details)?)))),
        }
    }
}

/// Decodes one frame at a time, fed its compressed bytes in order (a lane reuses it).
#[pyclass(module = "archcheck._native")]
struct FrameDecoder {
    inner: decode::FrameDecoder,
}

#[pymethods]
impl FrameDecoder {
    #[new]
    fn new(max_window: u64, header_length: u64) -> PyResult<Self> {
        decode::FrameDecoder::new(max_window, header_length)
            .map(|inner| FrameDecoder { inner })
            .map_err(|e| value_error(e.message))
    }

    fn reset(&mut self, header_length: u64) {
        self.inner.reset(header_length);
    }

    /// Whether the caller checks the content checksum of the frames from the next one on,
    /// against `stored_checksum` (libzstd skips it then).
    fn check_checksum_outside(&mut self, outside: bool) -> PyResult<()> {
        self.inner.check_checksum_outside(outside).map_err(|e| value_error(e.message))
    }

    /// The content checksum the frame stores, once decoded to its end, when the caller checks it.
    #[getter]
    fn stored_checksum(&self) -> Option<u32> {
        self.inner.stored_checksum()
    }

    /// The caller checks the content checksum of the frame being decoded.
    #[getter]
    fn checksum_outside(&self) -> bool {
        self.inner.checksum_outside()
    }

    /// Decode from `data[start:]` into `chunk` until the chunk is full, the input is used up,
    /// or the frame ends: (input taken, frame finished, error). The error, when there is one,
    /// is (message, finding code, block index, block start, block end), block offsets
    /// relative to the frame's first byte.
    #[allow(clippy::type_complexity)]
    fn decode(&mut self, py: Python<'_>, data: &Bound<'_, PyBytes>, start: usize, chunk: &Bound<'_, Chunk>)
        -> PyResult<(usize, bool, Option<DecodeFailure>)> {
        let inner = &mut self.inner;
        Ok(match decode_into(py, data, start, chunk, |input, out| inner.decode(input, out))? {
            Ok(taken) => (taken, self.inner.finished(), None),
            Err(e) => {
                let code = if e.checksum { "ZSTD_CHECKSUM_MISMATCH" } else { "ZSTD_DECODE_ERROR" };
                (0, false, Some((e.message, code, e.block.map(|b| b.index), e.block.map(|b| b.start),
                                 e.block.map(|b| b.end))))
            }
        })
    }

    /// The frame's bytes ran out: a frame cut short is the frame walk's finding, not the decoder's.
    fn finish(&self) -> Option<DecodeFailure> {
        None
    }

    /// Bytes after the last frame are the frame walk's finding.
    #[getter]
    fn trailing(&self) -> Option<(u64, u64, u64)> {
        None
    }

    /// A frame without its checksum is the frame walk's finding.
    #[getter]
    fn unchecked(&self) -> Option<(u64, u64, u64)> {
        None
    }

    /// libzstd hands on each block as it decodes: nothing is held back for a check.
    #[getter]
    fn withheld(&self) -> u64 {
        0
    }

    #[getter]
    fn produced(&self) -> u64 {
        self.inner.produced
    }

    #[getter]
    fn consumed(&self) -> u64 {
        self.inner.consumed()
    }
}

/// Run a decoder over `data[start:]` into the chunk's spare room, the GIL released.
fn decode_into<T: Send>(py: Python<'_>, data: &Bound<'_, PyBytes>, start: usize, chunk: &Bound<'_, Chunk>,
                        decode: impl FnOnce(&[u8], &mut Vec<u8>) -> T + Send) -> PyResult<T> {
    let input = data.as_bytes();
    let input = &input[start.min(input.len())..];
    let mut chunk = chunk.borrow_mut();
    let out = &mut chunk.data;
    py.detach(|| guarded(|| decode(input, out)))
}

/// Why a decoder stopped: (message, finding code, unit index, unit start, unit end), the unit
/// being a zstd block or a stream's member (gzip member, xz stream, ...), its offsets relative to the frame's first byte.
type DecodeFailure = (String, &'static str, Option<u64>, Option<u64>, Option<u64>);

fn stream_failure(e: stream::StreamError) -> DecodeFailure {
    (e.message, e.code, Some(e.member), Some(e.start), Some(e.end))
}

/// Decodes a gzip, xz, lz4 or bzip2 file member after member, fed its bytes in order
/// (formats.md 7); the unit of an error is the member (gzip member, xz stream, ...).
#[pyclass(module = "archcheck._native")]
struct StreamDecoder {
    inner: Box<dyn stream::StreamDecoder>,
}

#[pymethods]
impl StreamDecoder {
    #[new]
    #[pyo3(signature = (codec, memory_limit, params=Vec::new()))]
    fn new(codec: &str, memory_limit: u64, params: Vec<u64>) -> PyResult<Self> {
        stream::decoder(codec, memory_limit, &params).map(|inner| StreamDecoder { inner })
            .ok_or_else(|| PyValueError::new_err(format!("no stream decoder for {codec:?}")))
    }

    /// As FrameDecoder.decode.
    fn decode(&mut self, py: Python<'_>, data: &Bound<'_, PyBytes>, start: usize, chunk: &Bound<'_, Chunk>)
        -> PyResult<(usize, bool, Option<DecodeFailure>)> {
        let inner = &mut self.inner;
        Ok(match decode_into(py, data, start, chunk, |input, out| inner.decode(input, out))? {
            Ok(taken) => (taken, self.inner.counts().finished, None),
            Err(e) => (0, false, Some(stream_failure(e))),
        })
    }

    /// The file ends here: None after a whole member, else the member cut short.
    fn finish(&mut self) -> Option<DecodeFailure> {
        self.inner.finish().err().map(stream_failure)
    }

    /// Bytes after the last member that are no member: (offset, length, non-zero bytes).
    #[getter]
    fn trailing(&self) -> Option<(u64, u64, u64)> {
        self.inner.trailing()
    }

    /// Members no check covers: (the first's index, its first byte, how many).
    #[getter]
    fn unchecked(&self) -> Option<(u64, u64, u64)> {
        self.inner.unchecked()
    }

    /// Output of a unit that failed its check, not handed on: how long it was, about.
    #[getter]
    fn withheld(&self) -> u64 {
        self.inner.withheld()
    }

    /// Each codec checks its own content: no checksum is left to the caller.
    #[getter]
    fn stored_checksum(&self) -> Option<u32> {
        None
    }

    #[getter]
    fn checksum_outside(&self) -> bool {
        false
    }

    #[getter]
    fn members(&self) -> u64 {
        self.inner.counts().members
    }

    /// A member ended at the last byte taken and nothing after it was taken.
    #[getter]
    fn at_member_end(&self) -> bool {
        self.inner.at_member_end()
    }

    #[getter]
    fn produced(&self) -> u64 {
        self.inner.counts().produced
    }

    #[getter]
    fn consumed(&self) -> u64 {
        self.inner.counts().consumed
    }
}

/// The block and end-of-stream magics of a bzip2 file fed in order (stream::bzip2::BlockScan),
/// the GIL released while it scans.
#[pyclass(module = "archcheck._native")]
struct Bzip2Scan {
    inner: stream::bzip2::BlockScan,
}

#[pymethods]
impl Bzip2Scan {
    #[new]
    fn new() -> Self {
        Bzip2Scan { inner: stream::bzip2::BlockScan::default() }
    }

    fn feed(&mut self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let inner = &mut self.inner;
        released(py, data, |bytes| inner.feed(bytes))
    }

    /// How many magics were found so far.
    #[getter]
    fn count(&self) -> usize {
        self.inner.marks.len()
    }

    /// (is the end of a stream, its first bit, the CRC after it) of each magic found so far.
    #[getter]
    fn marks(&self) -> Vec<(bool, u64, u32)> {
        self.inner.marks.iter().map(|m| (m.end, m.bit, m.crc)).collect()
    }
}

/// The deflate blocks of one gzip member fed from its first byte in order
/// (stream::deflate::BlockWalk), the GIL released while it walks.
#[pyclass(module = "archcheck._native")]
struct DeflateBlocks {
    inner: stream::deflate::BlockWalk,
}

#[pymethods]
impl DeflateBlocks {
    #[new]
    fn new() -> Self {
        DeflateBlocks { inner: stream::deflate::BlockWalk::new() }
    }

    fn feed(&mut self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let input = Input::extract(data)?;
        let (inner, bytes) = (&mut self.inner, input.bytes());
        py.detach(|| guarded(|| inner.feed(bytes)))
    }

    fn finish(&mut self) -> PyResult<()> {
        guarded(|| self.inner.finish())
    }

    /// Whether the walk has stopped (the member's deflate data ended, or failed).
    #[getter]
    fn stopped(&self) -> bool {
        self.inner.stop().is_some()
    }

    /// The block the walk stopped in, once it has stopped there (failed, or cut where the bytes
    /// given end): (index, type, first byte, output before it); None if the member ended whole.
    #[getter]
    fn located(&self) -> Option<(u64, &'static str, u64, u64)> {
        if matches!(self.inner.stop()?, stream::deflate::Stop::Ended) {
            return None;
        }
        let block = self.inner.block()?;
        Some((block.index, block.kind.name(), block.start, block.output))
    }
}

/// XXH64 over chunks (the seekable format's per-frame checksum), the GIL released.
#[pyclass(module = "archcheck._native")]
struct Xxh64 {
    inner: twox_hash::XxHash64,
}

#[pymethods]
impl Xxh64 {
    #[new]
    fn new() -> Self {
        Xxh64 { inner: twox_hash::XxHash64::with_seed(0) }
    }

    fn update(&mut self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let inner = &mut self.inner;
        released(py, data, |bytes| inner.write(bytes))
    }

    fn intdigest(&self) -> u64 {
        self.inner.finish()
    }
}

/// `work` on the bytes of a buffer, the GIL released.
fn released(py: Python<'_>, data: &Bound<'_, PyAny>, work: impl FnOnce(&[u8]) + Send) -> PyResult<()> {
    let input = Input::extract(data)?;
    let bytes = input.bytes();
    py.detach(|| work(bytes));
    Ok(())
}

/// A member digest (xxh3-128 or BLAKE3) over chunks, the GIL released: the same digests as the
/// members log, for a whole file (the gate's expected checksums).
#[pyclass(module = "archcheck._native")]
struct ContentDigest {
    inner: archcheck_core::digest::MemberDigest,
}

#[pymethods]
impl ContentDigest {
    #[new]
    fn new(kind: &str) -> PyResult<Self> {
        let kind = DigestKind::parse(kind).ok_or_else(|| value_error(format!("unknown digest {kind}")))?;
        Ok(ContentDigest { inner: kind.start() })
    }

    fn update(&mut self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let inner = &mut self.inner;
        released(py, data, |bytes| inner.update(bytes))
    }

    fn hexdigest(&self) -> String {
        self.inner.hex()
    }
}

// --- raw ----------------------------------------------------------------------------------------

/// Whether every page of a mapped buffer is in memory, read whole (mincore): the caller reads
/// the range instead when not, so an I/O error is a failed read, not SIGBUS.
#[pyfunction]
fn resident(data: &Bound<'_, PyAny>, page: usize) -> PyResult<bool> {
    Ok(BufferView::get(data)?.resident(page))
}

/// BLAKE3 of each `leaf_size` piece of `data`, in hex.
#[pyfunction]
fn leaf_digests(py: Python<'_>, data: &Bound<'_, PyAny>, leaf_size: usize) -> PyResult<Vec<String>> {
    let input = Input::extract(data)?;
    let bytes = input.bytes();
    let leaves = py.detach(|| archcheck_core::raw::leaf_digests(bytes, leaf_size));
    Ok(leaves.iter().map(|l| l.iter().map(|b| format!("{b:02x}")).collect()).collect())
}

// --- tar ----------------------------------------------------------------------------------------

fn parse_listed(listed: Option<&Bound<'_, PyDict>>) -> PyResult<Option<HashMap<String, Listed>>> {
    let Some(listed) = listed else { return Ok(None) };
    let mut out = HashMap::new();
    for (path, entry) in listed.iter() {
        let (size, algorithm, checksum): (u64, Option<String>, Option<String>) = entry.extract()?;
        out.insert(path.extract::<String>()?, Listed { size, algorithm, checksum });
    }
    Ok(Some(out))
}

/// The tar walk over decoded chunks fed in order (archcheck_core::tar::TarWalker), with the
/// database scanners when `scan` is true: `listed` (path -> (size, algorithm, checksum)) from a
/// backup_manifest, `prefix` of a tablespace tar, `known` data-directory facts (JSON).
#[pyclass(module = "archcheck._native")]
struct TarWalker {
    inner: tar::TarWalker,
    dirs: Option<scan::postgres::DataDirs>,
}

#[pymethods]
impl TarWalker {
    #[new]
    #[pyo3(signature = (digest=None, scan=false, listed=None, prefix="", known=None))]
    fn new(digest: Option<&str>, scan: bool, listed: Option<&Bound<'_, PyDict>>, prefix: &str, known: Option<&str>)
        -> PyResult<Self> {
        let digest = digest.map(|name| DigestKind::parse(name).ok_or_else(|| value_error(format!("unknown digest {name}"))))
            .transpose()?;
        if !scan {
            return Ok(TarWalker { inner: tar::TarWalker::new(digest, None), dirs: None });
        }
        let known: Option<DataDir> = known.map(serde_json::from_str).transpose().map_err(value_error)?;
        let router = Router::new(parse_listed(listed)?, prefix, known);
        let dirs = router.data_dirs();
        Ok(TarWalker { inner: tar::TarWalker::new(digest, Some(Box::new(router))), dirs: Some(dirs) })
    }

    /// Walk `data` (a Chunk or bytes), which starts at uncompressed `offset`, from byte `skip`
    /// on (what comes before was walked by an earlier run).
    #[pyo3(signature = (data, offset, skip=0))]
    fn feed(&mut self, py: Python<'_>, data: &Bound<'_, PyAny>, offset: u64, skip: usize) -> PyResult<()> {
        let input = Input::extract(data)?;
        let bytes = input.bytes();
        let skip = skip.min(bytes.len());
        let inner = &mut self.inner;
        py.detach(|| guarded(|| {
            if failpoint("native-panic") {
                panic!("failpoint native-panic");
            }
            inner.feed(&bytes[skip..], offset + skip as u64)
        }))
    }

    fn first_member_after(&self, offset: u64) -> Option<(String, u64)> {
        self.inner.first_member_after(offset)
    }

    fn lost(&mut self, offset: u64) -> PyResult<(Option<String>, Option<u64>)> {
        guarded(|| self.inner.lost(offset))
    }

    #[pyo3(signature = (end, upstream_damage=false))]
    fn finish(&mut self, end: u64, upstream_damage: bool) -> PyResult<()> {
        guarded(|| self.inner.finish(end, upstream_damage))
    }

    fn flush(&mut self) {
        self.inner.flush();
    }

    /// The findings made since the last call.
    fn take_findings<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let list = PyList::empty(py);
        for f in std::mem::take(&mut self.inner.findings) {
            list.append(finding_to_py(py, &f)?)?;
        }
        Ok(list)
    }

    fn has_findings(&self) -> bool {
        !self.inner.findings.is_empty()
    }

    /// Members flushed since the last call: (one JSON line, an array of arrays in MEMBER_FIELDS
    /// order; how many; the restore hazards among them as (what, path, how, name,
    /// header_offset)); None when there are none.
    #[allow(clippy::type_complexity)]
    fn take_members<'py>(&mut self, py: Python<'py>)
        -> Option<(Bound<'py, PyBytes>, usize, Vec<(&'static str, String, String, String, u64)>)> {
        let members = self.inner.take_members();
        if members.is_empty() {
            return None;
        }
        let hazards = members.iter()
            .filter_map(|m| m.restore_hazard().map(|(what, path, how)| (what, bounded(path).into_owned(), how, bounded(&m.name).into_owned(), m.header_offset)))
            .collect();
        Some((PyBytes::new(py, members_json(&members).as_bytes()), members.len(), hazards))
    }

    /// Members handed to Python whole (SQLite databases): (kind, name, data_offset, size,
    /// received, complete, head, data or None, limit).
    #[allow(clippy::type_complexity)]
    fn take_handoffs<'py>(&mut self, py: Python<'py>)
        -> Vec<(&'static str, String, u64, u64, u64, bool, Bound<'py, PyBytes>, Option<Bound<'py, PyBytes>>, u64)> {
        std::mem::take(&mut self.inner.handoffs).into_iter().map(|h| {
            let data = h.handoff.data.as_ref().map(|d| PyBytes::new(py, d));
            (h.handoff.kind, h.name, h.data_offset, h.handoff.size, h.handoff.received, h.handoff.complete,
             PyBytes::new(py, &h.handoff.head), data, h.handoff.limit)
        }).collect()
    }

    /// The last members flushed (at most `limit`) whose content ends after `offset`, as JSON.
    fn recent_json(&self, offset: u64, limit: usize) -> String {
        let recent: Vec<Member> =
            self.inner.recent().filter(|m| m.data_offset + m.size > offset).take(limit).cloned().collect();
        members_json(&recent)
    }

    fn member_at(&self, offset: u64) -> (Option<String>, Option<u64>) {
        self.inner.member_at(offset)
    }

    fn members_since(&self, start: u64, first_count: u64) -> (Vec<String>, u64) {
        self.inner.members_since(start, first_count)
    }

    #[getter]
    fn count(&self) -> u64 {
        self.inner.count
    }

    #[getter]
    fn position(&self) -> u64 {
        self.inner.position()
    }

    /// What the scanners learnt of each data directory, as JSON ({} without scanners).
    fn data_dirs(&self) -> PyResult<String> {
        let Some(dirs) = &self.dirs else { return Ok("{}".into()) };
        let dirs = dirs.lock().unwrap_or_else(|p| p.into_inner());
        serde_json::to_string(&*dirs).map_err(value_error)
    }

    /// JSON: where a later walk can take over; None while there is no such point.
    fn checkpoint(&self) -> PyResult<Option<String>> {
        self.inner.checkpoint().map(|cp| serde_json::to_string(&cp)).transpose().map_err(value_error)
    }

    /// Go on from `checkpoint()`'s JSON, with the recent members (a JSON array of arrays).
    fn restore(&mut self, checkpoint: &str, recent: &str) -> PyResult<()> {
        let cp: tar::Checkpoint = serde_json::from_str(checkpoint).map_err(|e| value_error(format!("walker checkpoint: {e}")))?;
        let recent: serde_json::Value = serde_json::from_str(recent).map_err(|e| value_error(format!("recent members: {e}")))?;
        let members = recent.as_array().map(|a| a.iter().filter_map(Member::from_json).collect()).unwrap_or_default();
        self.inner.restore(&cp, members).map_err(|e| value_error(format!("walker checkpoint: {e}")))
    }
}

/// A text from the archive cut where it is reported (text::bounded): findings.py's, for every
/// layer, so that there is one form of the cut.
#[pyfunction]
fn bounded_text(text: &str) -> String {
    bounded(text).into_owned()
}

/// Whether a 512-byte block is a tar header: its checksum holds, or one damaged byte away.
#[pyfunction]
fn is_tar_header(block: &[u8]) -> bool {
    tar::header::is_valid_header(block) || tar::header::is_damaged_header(block)
}

// --- database files, one at a time (tests and tools) ----------------------------------------------

/// (kind, size, received, complete, head, data or None, limit) of a handed-off member.
type HandoffTuple<'py> = (&'static str, u64, u64, bool, Bound<'py, PyBytes>, Option<Bound<'py, PyBytes>>, u64);

/// One database file read on its own: kind "innodb", "wal" (a WAL segment; `seg_size`,
/// `pg_major`, `sysid`), "sqlite" (collected for Python's b-tree walk, up to `limit` bytes) or
/// "sqlite-wal".
#[pyclass(module = "archcheck._native")]
struct Scanner {
    kind: String,
    inner: Box<dyn ContentScanner + Send + Sync>,
    found: Vec<Found>,
}

#[pymethods]
impl Scanner {
    #[new]
    #[pyo3(signature = (kind, name, size, seg_size=archcheck_core::scan::wal::SEG_SIZE, keep_lsns=false,
                        pg_major=None, sysid=None, limit=archcheck_core::scan::sqlite::MAX_BUFFER))]
    #[allow(clippy::too_many_arguments)] // Python keywords, each with its default
    fn new(kind: &str, name: &str, size: u64, seg_size: u64, keep_lsns: bool, pg_major: Option<u32>,
           sysid: Option<u64>, limit: u64) -> PyResult<Self> {
        let inner: Box<dyn ContentScanner + Send + Sync> = match kind {
            "innodb" => Box::new(scan::innodb::InnodbScanner::new()),
            "sqlite" => Box::new(scan::sqlite::SqliteCollector::with_limit(size, limit)),
            "wal" => Box::new(scan::wal::WalSegmentScanner::new(name, size, seg_size, keep_lsns)
                .expect_major(pg_major).expect_sysid(sysid)),
            "sqlite-wal" => Box::new(scan::sqlite::SqliteWalScanner::new(size)),
            other => return Err(value_error(format!("unknown scanner {other}"))),
        };
        Ok(Scanner { kind: kind.into(), inner, found: Vec::new() })
    }

    fn feed(&mut self, py: Python<'_>, data: &Bound<'_, PyBytes>, offset: u64) -> PyResult<()> {
        let bytes = data.as_bytes();
        let inner = &mut self.inner;
        py.detach(|| guarded(|| inner.feed(bytes, offset)))
    }

    fn close(&mut self, complete: bool) -> PyResult<()> {
        guarded(|| self.inner.close(complete))?;
        self.found.extend(self.inner.take_found());
        Ok(())
    }

    /// (code, offset, length, place, details) of each finding so far.
    #[getter]
    fn found<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        self.found.extend(self.inner.take_found());
        let list = PyList::empty(py);
        for f in &self.found {
            list.append(found_to_py(py, f)?)?;
        }
        Ok(list)
    }

    #[getter]
    fn kind(&self) -> &str {
        &self.kind
    }

    /// A database collected for Python once closed: (kind, size, received, complete, head,
    /// data or None, limit), as the walker hands it over; None for other scanners.
    fn take_handoff<'py>(&mut self, py: Python<'py>) -> Option<HandoffTuple<'py>> {
        self.inner.take_handoff().map(|h| {
            (h.kind, h.size, h.received, h.complete, PyBytes::new(py, &h.head),
             h.data.as_ref().map(|d| PyBytes::new(py, d)), h.limit)
        })
    }

    /// What the scanner learnt of the file (page size, records read...).
    #[getter]
    fn facts<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        fields_to_dict(py, &self.inner.facts())
    }
}

// --- age ----------------------------------------------------------------------------------------

/// ("header" | "identity" | "no_match" | "mac", message): why an age file did not open.
fn age_open_error(e: archcheck_core::age::OpenError) -> PyErr {
    use archcheck_core::age::OpenError;
    let (kind, message) = match e {
        OpenError::Header(m) => ("header", m),
        OpenError::Identity(m) => ("identity", m),
        OpenError::NoMatch => ("no_match", "no identity given unwraps the file key".to_string()),
        OpenError::Mac => ("mac", "the header's MAC does not match: the header was changed".to_string()),
    };
    PyValueError::new_err((kind, message))
}

/// Where an age file's first chunk starts (its header and nonce read), or ValueError((kind, message)).
#[pyfunction]
fn age_payload_start(head: &[u8], file_len: u64) -> PyResult<u64> {
    guarded(|| archcheck_core::age::payload_start(head, file_len))?.map_err(age_open_error)
}

/// (chunk, code, message) of a chunk that did not decrypt.
type ChunkFaults = Vec<(u64, &'static str, String)>;

/// The payload of an age file, decrypted whole chunks at a time with the GIL released.
#[pyclass(module = "archcheck._native")]
struct AgePayload {
    inner: archcheck_core::age::Payload,
}

#[pymethods]
impl AgePayload {
    #[new]
    fn new(head: &[u8], file_len: u64, identities: &str) -> PyResult<Self> {
        let inner = guarded(|| archcheck_core::age::Payload::open(head, file_len, identities))?.map_err(age_open_error)?;
        Ok(AgePayload { inner })
    }

    #[getter]
    fn start(&self) -> u64 {
        self.inner.start()
    }

    #[getter]
    fn chunks(&self) -> u64 {
        self.inner.chunks()
    }

    #[getter]
    fn plaintext_size(&self) -> u64 {
        self.inner.plaintext_len()
    }

    /// Decrypt the whole chunks from `first` in `sealed`: (plaintext, [(chunk, code, message)]);
    /// a failed chunk's plaintext is zeros.
    fn decrypt<'py>(&mut self, py: Python<'py>, first: u64, sealed: &Bound<'py, PyBytes>)
        -> PyResult<(Bound<'py, PyBytes>, ChunkFaults)> {
        let bytes = sealed.as_bytes();
        let inner = &mut self.inner;
        let (out, faults) = py.detach(|| guarded(|| {
            let mut out = Vec::with_capacity(bytes.len());
            let faults = inner.decrypt(first, bytes, &mut out);
            (out, faults)
        }))?;
        Ok((PyBytes::new(py, &out), faults.into_iter().map(|f| (f.chunk, f.code, f.message)).collect()))
    }
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    quiet_panics();
    m.add("__version__", archcheck_core::version())?;
    m.add("MEMBER_FIELDS", tar::member::FIELDS.to_vec())?;
    m.add("NativePanic", m.py().get_type::<NativePanic>())?;
    m.add_class::<Chunk>()?;
    m.add_class::<FrameDecoder>()?;
    m.add_class::<StreamDecoder>()?;
    m.add_class::<Bzip2Scan>()?;
    m.add_class::<BlockTrail>()?;
    m.add_class::<DeflateBlocks>()?;
    m.add_class::<Xxh64>()?;
    m.add_class::<ContentDigest>()?;
    m.add_class::<TarWalker>()?;
    m.add_class::<Scanner>()?;
    m.add_class::<AgePayload>()?;
    m.add_function(wrap_pyfunction!(age_payload_start, m)?)?;
    m.add_function(wrap_pyfunction!(walk_frames, m)?)?;
    m.add_function(wrap_pyfunction!(hand_frames_on, m)?)?;
    m.add_function(wrap_pyfunction!(unwalked_problem, m)?)?;
    m.add_function(wrap_pyfunction!(leaf_digests, m)?)?;
    m.add_function(wrap_pyfunction!(resident, m)?)?;
    m.add_function(wrap_pyfunction!(is_tar_header, m)?)?;
    m.add_function(wrap_pyfunction!(bounded_text, m)?)?;
    m.add("TEXT_LIMIT", archcheck_core::text::TEXT_LIMIT)?;
    Ok(())
}
