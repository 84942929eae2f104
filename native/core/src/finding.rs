//! What the core reports: codes and coordinates. Meaning (category, severity, message) is the
//! Python catalogue's; a test checks that every code emitted here is catalogued.

/// A detail's value: what a finding's `details` and `where` hold.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Int(i128),
    Text(String),
    Bool(bool),
    List(Vec<Value>),
    Null,
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}

impl<T: Into<Value>> From<Vec<T>> for Value {
    fn from(v: Vec<T>) -> Self {
        Value::List(v.into_iter().map(Into::into).collect())
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(v.to_string())
    }
}

impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Text(v)
    }
}

macro_rules! int_value {
    ($($t:ty),*) => {$(
        impl From<$t> for Value {
            fn from(v: $t) -> Self {
                Value::Int(v as i128)
            }
        }
    )*};
}
int_value!(u8, u16, u32, u64, usize, i32, i64, i128);

impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Bool(v)
    }
}

pub type Fields = Vec<(&'static str, Value)>;

/// A finding in the uncompressed stream: [start, end), the member it is in, where inside a
/// database file (`place`: relation, fork, block, wal_segment, lsn, space, page), and details.
#[derive(Clone, Debug, PartialEq)]
pub struct Finding {
    pub code: &'static str,
    pub start: u64,
    pub end: u64,
    pub member: Option<String>,
    pub member_offset: Option<u64>,
    pub place: Fields,
    pub details: Fields,
}

/// A scanner's finding, in member coordinates; the walker places it in the stream.
#[derive(Clone, Debug, PartialEq)]
pub struct Found {
    pub code: &'static str,
    pub offset: u64,
    pub length: u64,
    pub place: Fields,
    pub details: Fields,
}

/// `fields![("a", 1), ("b", "x")]`
#[macro_export]
macro_rules! fields {
    ($(($k:expr, $v:expr)),* $(,)?) => {
        vec![$(($k, $crate::finding::Value::from($v))),*]
    };
}
