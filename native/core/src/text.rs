//! Reading text and numbers out of archive headers the way archcheck always has (and the way
//! GNU tar and Python's `tarfile` do): bytes that are not UTF-8 are kept visible as `\xNN`.

/// UTF-8, with every byte that is not part of valid UTF-8 written as `\xNN` (Python's
/// `decode("utf-8", "backslashreplace")`).
pub fn decode_lossless(mut bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    loop {
        match std::str::from_utf8(bytes) {
            Ok(text) => {
                out.push_str(text);
                return out;
            }
            Err(err) => {
                let (good, rest) = bytes.split_at(err.valid_up_to());
                out.push_str(std::str::from_utf8(good).unwrap_or_default());
                let bad = err.error_len().unwrap_or(rest.len());
                for byte in &rest[..bad] {
                    out.push_str(&format!("\\x{byte:02x}"));
                }
                bytes = &rest[bad..];
            }
        }
    }
}

/// The text of a NUL-terminated field.
pub fn field_text(field: &[u8]) -> String {
    decode_lossless(until_nul(field))
}

pub fn until_nul(field: &[u8]) -> &[u8] {
    field.iter().position(|&b| b == 0).map_or(field, |end| &field[..end])
}

/// Latin-1: one char per byte, so any bytes survive a round trip through a string.
pub fn latin1(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| b as char).collect()
}

pub fn from_latin1(text: &str) -> Vec<u8> {
    text.chars().map(|c| c as u32 as u8).collect()
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

/// An integer as Python's `int(text, base)` reads it: whitespace around, an optional sign,
/// an optional `0o`/`0x` prefix matching the base, single underscores between digits. None
/// where Python raises, or where it would not fit in 127 bits.
pub fn parse_int(text: &[u8], base: u32) -> Option<i128> {
    let start = text.iter().position(|&b| !is_space(b))?;
    let end = text.iter().rposition(|&b| !is_space(b))? + 1;
    let mut s = &text[start..end];
    let negative = match s.first() {
        Some(b'-') => {
            s = &s[1..];
            true
        }
        Some(b'+') => {
            s = &s[1..];
            false
        }
        _ => false,
    };
    let prefix: &[u8] = match base {
        8 => b"0o",
        16 => b"0x",
        2 => b"0b",
        _ => b"",
    };
    let mut prefixed = false;
    if !prefix.is_empty() && s.len() >= 2 && s[..2].eq_ignore_ascii_case(prefix) {
        s = &s[2..];
        prefixed = true;
    }
    let mut value: i128 = 0;
    let mut digits = 0;
    let mut after_underscore = prefixed; // "0o_17" is allowed, "_17" is not
    for (i, &b) in s.iter().enumerate() {
        if b == b'_' {
            if (i == 0 && !prefixed) || after_underscore && i > 0 || i + 1 == s.len() {
                return None;
            }
            after_underscore = true;
            continue;
        }
        let digit = (b as char).to_digit(base)?;
        value = value.checked_mul(base as i128)?.checked_add(digit as i128)?;
        digits += 1;
        after_underscore = false;
    }
    if digits == 0 {
        return None;
    }
    Some(if negative { -value } else { value })
}

/// A tar numeric field: GNU base-256 when the first byte is 0x80 (positive) or 0xFF
/// (negative, two's complement), as GNU tar reads it; else octal up to the first NUL, spaces
/// around. None when it is neither (another first byte with its high bit set included).
pub fn parse_number(field: &[u8]) -> Option<i128> {
    if let Some(&first) = field.first() {
        if first & 0x80 != 0 {
            if first != 0x80 && first != 0xFF {
                return None;
            }
            let mut value: i128 = 0;
            for &b in &field[1..] {
                value = value.checked_mul(256)?.checked_add(b as i128)?;
            }
            if first == 0xFF {
                let span = 1i128.checked_shl(8 * (field.len() as u32 - 1))?;
                return Some(value - span);
            }
            return Some(value);
        }
    }
    let text = trim_spaces(until_nul(field));
    if text.is_empty() {
        return Some(0);
    }
    parse_int(text, 8)
}

fn trim_spaces(mut s: &[u8]) -> &[u8] {
    while let [b' ', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' '] = s {
        s = rest;
    }
    s
}

/// Python's repr() of a str (for messages recorded as Python wrote them).
pub fn py_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') { '"' } else { '\'' };
    let mut out = String::new();
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || (0x7f..0xa1).contains(&(c as u32)) || c == '\u{ad}' => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}


/// Characters of a text from the archive (a name, a link target) kept where it is reported: a
/// hostile archive's megabyte names would otherwise be copied into every line about them. As
/// findings.py's TEXT_LIMIT: PATH_MAX, longer than any path a restore creates.
pub const TEXT_LIMIT: usize = 4096;

/// `text`, cut at TEXT_LIMIT characters, saying how long it was and the BLAKE3 of the whole
/// (its first 8 bytes): two long names alike in their first 4096 characters stay two names
/// where the member list is compared (catalogs, diff, policies).
/// A text it has cut already is kept as it is (findings.py passes the core's texts through it).
pub fn bounded(text: &str) -> std::borrow::Cow<'_, str> {
    match text.char_indices().nth(TEXT_LIMIT) {
        None => std::borrow::Cow::Borrowed(text),
        Some((cut, _)) if already_cut(text, cut) => std::borrow::Cow::Borrowed(text),
        Some((cut, _)) => {
            let digest = blake3::hash(text.as_bytes());
            let short: String = digest.as_bytes()[..8].iter().map(|b| format!("{b:02x}")).collect();
            std::borrow::Cow::Owned(format!("{}... ({} characters in all, blake3 {short})", &text[..cut],
                                            text.chars().count()))
        }
    }
}

/// Whether `text`, whose first TEXT_LIMIT characters end at byte `cut`, is what `bounded`
/// makes of a longer one: those characters, then its note.
fn already_cut(text: &str, cut: usize) -> bool {
    let note = &text[cut..];
    note.starts_with("... (") && note.ends_with(')') && note.contains(" characters in all, blake3 ") && note.len() < 64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_text_cut_once_stays_as_cut() {
        let long = "é".repeat(TEXT_LIMIT + 10);
        let cut = bounded(&long).into_owned();
        assert!(cut.ends_with(')') && cut.contains(&format!("... ({} characters in all, blake3 ", TEXT_LIMIT + 10)));
        assert_eq!(bounded(&cut), cut);
        assert_ne!(bounded(&format!("{long}x")), cut);
    }

    #[test]
    fn invalid_utf8_bytes_stay_visible() {
        assert_eq!(decode_lossless(b"ok-\xff\xfe-\xc3\xa9"), "ok-\\xff\\xfe-\u{e9}");
    }

    #[test]
    fn ints_read_as_python_reads_them() {
        assert_eq!(parse_int(b" 0000644", 8), Some(0o644));
        assert_eq!(parse_int(b"0o17", 8), Some(15));
        assert_eq!(parse_int(b"-12", 8), Some(-10));
        assert_eq!(parse_int(b"6_44", 8), Some(0o644));
        assert_eq!(parse_int(b"6__44", 8), None);
        assert_eq!(parse_int(b"_644", 8), None);
        assert_eq!(parse_int(b"644_", 8), None);
        assert_eq!(parse_int(b"648", 8), None);
        assert_eq!(parse_int(b"", 8), None);
        assert_eq!(parse_int(b"12 34", 8), None);
    }

    #[test]
    fn tar_numbers() {
        assert_eq!(parse_number(b"00000001234\0"), Some(0o1234));
        assert_eq!(parse_number(b"   \0garbage"), Some(0));
        assert_eq!(parse_number(b"\x80\0\0\0\0\0\0\0\0\0\x01\x00"), Some(256));
        assert_eq!(parse_number(&[0xFF; 12]), Some(-1));
        assert_eq!(parse_number(b"\x97\0\0\0\0\0\0\0\0\0\0\0"), None); // not base-256
        assert_eq!(parse_number(b"12x\0"), None);
        assert_eq!(parse_number(b"0000644\0"), Some(0o644)); // GNU tar, Python: NUL terminated
        assert_eq!(parse_number(b"0000600 "), Some(0o600)); // PostgreSQL: space terminated
        assert_eq!(parse_number(b"     17 \0"), Some(0o17)); // leading spaces
        assert_eq!(parse_number(&[0; 8]), Some(0));
        let mut big = vec![0x80u8];
        big.extend_from_slice(&(1u128 << 40).to_be_bytes()[5..]);
        assert_eq!(parse_number(&big), Some(1 << 40)); // GNU base-256
        assert_eq!(parse_number(b"12x4\0\0\0\0"), None);
    }
}
