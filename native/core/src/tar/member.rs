//! A member as the members log holds it, built from its header and what extension headers
//! (pax, GNU long names) say beyond it.

use std::fmt::Write;

use super::header::BLOCK;
use crate::text::{decode_lossless, field_text, parse_int, parse_number, until_nul};

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Extra {
    pub name: Option<String>,
    pub linkname: Option<String>,
    pub sparse_size: Option<i128>,
    pub uid: Option<i128>,
    pub gid: Option<i128>,
    pub uname: Option<String>,
    pub gname: Option<String>,
}

impl Extra {
    pub fn is_empty(&self) -> bool {
        *self == Extra::default()
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Member {
    pub name: String,
    pub kind: String,
    pub size: u64,
    pub mode: i128,
    pub mtime: i128,
    pub header_offset: u64,
    pub data_offset: u64,
    pub digest: Option<String>,
    pub linkname: String,
    pub sparse_size: Option<i128>,
    pub uid: i128,
    pub gid: i128,
    pub uname: String,
    pub gname: String,
}

// appended only: a log names its fields, and older logs lack the last ones
pub const FIELDS: [&str; 14] = [
    "name", "type", "size", "mode", "mtime", "header_offset", "data_offset", "digest", "linkname", "sparse_size",
    "uid", "gid", "uname", "gname",
];

fn type_name(flag: u8) -> String {
    match flag {
        b'0' | 0 | b'7' | b'S' => "file".into(),
        b'1' => "hardlink".into(),
        b'2' => "symlink".into(),
        b'3' => "char".into(),
        b'4' => "block".into(),
        b'5' => "dir".into(),
        b'6' => "fifo".into(),
        other => format!("other:{}", other as char),
    }
}

/// Octal with its terminator (the common case), else any tar number, else 0.
fn octal(field: &[u8]) -> i128 {
    parse_int(&field[..field.len() - 1], 8).or_else(|| parse_number(field)).unwrap_or(0)
}

/// The member's name as the header alone gives it (ustar prefix joined), for routing and for
/// members whose extensions say nothing of it.
pub fn header_name(header: &[u8]) -> String {
    let flag = header[156];
    let mut name = decode_lossless(until_nul(&header[..100]));
    if header[345] != 0 && &header[257..263] == b"ustar\0" && !matches!(flag, b'S' | b'L' | b'K') {
        name = format!("{}/{}", field_text(&header[345..500]), name);
    }
    name
}

impl Member {
    pub fn from_header(header: &[u8], header_offset: u64, data_offset: u64, size: u64, extra: Option<&Extra>) -> Self {
        debug_assert!(header.len() >= BLOCK);
        let flag = header[156];
        let mut linkname = if matches!(flag, b'1' | b'2') { field_text(&header[157..257]) } else { String::new() };
        let mut sparse_size = if flag == b'S' { parse_number(&header[483..495]) } else { None };
        let mut name = None;
        let mut uid = octal(&header[108..116]);
        let mut gid = octal(&header[116..124]);
        let (mut uname, mut gname) = (field_text(&header[265..297]), field_text(&header[297..329]));
        if let Some(extra) = extra {
            uid = extra.uid.unwrap_or(uid);
            gid = extra.gid.unwrap_or(gid);
            if let Some(u) = &extra.uname {
                uname.clone_from(u);
            }
            if let Some(g) = &extra.gname {
                gname.clone_from(g);
            }
            name.clone_from(&extra.name);
            if let Some(l) = &extra.linkname {
                linkname.clone_from(l);
            }
            if extra.sparse_size.is_some() {
                sparse_size = extra.sparse_size;
            }
        }
        Member {
            name: name.unwrap_or_else(|| header_name(header)),
            kind: type_name(flag),
            size,
            mode: octal(&header[100..108]),
            mtime: octal(&header[136..148]),
            header_offset,
            data_offset,
            digest: None,
            linkname,
            sparse_size,
            uid,
            gid,
            uname,
            gname,
        }
    }

    pub fn padded_end(&self) -> u64 {
        self.data_offset + super::header::round_up(self.size)
    }

    /// One JSON array, fields in FIELDS order.
    pub fn write_json(&self, out: &mut String) {
        out.push('[');
        json_string(out, &crate::text::bounded(&self.name));
        out.push(',');
        json_string(out, &self.kind);
        let _ = write!(out, ",{},{},{},{},{},", self.size, self.mode, self.mtime, self.header_offset, self.data_offset);
        match &self.digest {
            Some(d) => json_string(out, d),
            None => out.push_str("null"),
        }
        out.push(',');
        json_string(out, &crate::text::bounded(&self.linkname));
        match self.sparse_size {
            Some(s) => {
                let _ = write!(out, ",{s}");
            }
            None => out.push_str(",null"),
        }
        let _ = write!(out, ",{},{},", self.uid, self.gid);
        json_string(out, &self.uname);
        out.push(',');
        json_string(out, &self.gname);
        out.push(']');
    }

    /// From a JSON array in FIELDS order (a checkpoint's recent members).
    pub fn from_json(value: &serde_json::Value) -> Option<Self> {
        let a = value.as_array()?;
        let int = |v: &serde_json::Value| -> Option<i128> { v.as_i64().map(i128::from).or_else(|| v.as_u64().map(i128::from)) };
        Some(Member {
            name: a.first()?.as_str()?.to_string(),
            kind: a.get(1)?.as_str()?.to_string(),
            size: a.get(2)?.as_u64()?,
            mode: int(a.get(3)?)?,
            mtime: int(a.get(4)?)?,
            header_offset: a.get(5)?.as_u64()?,
            data_offset: a.get(6)?.as_u64()?,
            digest: a.get(7)?.as_str().map(str::to_string),
            linkname: a.get(8).and_then(|v| v.as_str()).unwrap_or_default().to_string(),
            sparse_size: a.get(9).and_then(int),
            uid: a.get(10).and_then(int).unwrap_or(0),
            gid: a.get(11).and_then(int).unwrap_or(0),
            uname: a.get(12).and_then(|v| v.as_str()).unwrap_or_default().to_string(),
            gname: a.get(13).and_then(|v| v.as_str()).unwrap_or_default().to_string(),
        })
    }

    /// Why a restore would not create this path as written, if it would not: (what, path, how).
    pub fn restore_hazard(&self) -> Option<(&'static str, &str, String)> {
        let paths = [("member name", self.name.as_str()), ("hard link target", self.linkname.as_str())];
        for (what, path) in paths {
            if what == "hard link target" && self.kind != "hardlink" {
                continue;
            }
            // only a pax path can hold a NUL; C strings end there
            if let Some(cut) = path.find('\0') {
                let kept = crate::text::py_repr(&path[..cut]);
                return Some((what, path, format!("GNU tar cuts the name at the NUL and restores {kept}")));
            }
            if path.starts_with('/') {
                return Some((what, path, "an absolute path: GNU tar strips the leading '/' and restores it below the target".into()));
            }
            if path.split('/').any(|part| part == "..") {
                return Some((what, path, "a '..' component: GNU tar refuses to restore it (it would leave the target directory)".into()));
            }
        }
        None
    }
}

/// A JSON string, escaped as Python's json.dumps(ensure_ascii=False) does.
pub fn json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}
