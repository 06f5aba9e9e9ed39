//! A PostgreSQL value in its type's text output (as logical decoding sends
//! it) to the JSON `row_to_json` writes for it, so a row reads the same
//! whether a trigger or logical decoding captured it. Common types are
//! converted here; any other type (arrays, composites, domains, money,
//! dates before the common era) is left to the server, which converts a
//! batch of one type in one query (see [`ServerCast`]).
//!
//! Expects the reading session's `DateStyle` to be `ISO`.

/// Type oids of `pg_type`'s built-in types.
mod oid {
    pub const BOOL: u32 = 16;
    pub const BYTEA: u32 = 17;
    pub const CHAR: u32 = 18;
    pub const NAME: u32 = 19;
    pub const INT8: u32 = 20;
    pub const INT2: u32 = 21;
    pub const INT4: u32 = 23;
    pub const TEXT: u32 = 25;
    pub const OID: u32 = 26;
    pub const JSON: u32 = 114;
    pub const FLOAT4: u32 = 700;
    pub const FLOAT8: u32 = 701;
    pub const BPCHAR: u32 = 1042;
    pub const VARCHAR: u32 = 1043;
    pub const DATE: u32 = 1082;
    pub const TIME: u32 = 1083;
    pub const TIMESTAMP: u32 = 1114;
    pub const TIMESTAMPTZ: u32 = 1184;
    pub const INTERVAL: u32 = 1186;
    pub const TIMETZ: u32 = 1266;
    pub const NUMERIC: u32 = 1700;
    pub const UUID: u32 = 2950;
    pub const JSONB: u32 = 3802;
}

/// Appends a value's JSON text to `out`; `false` (and nothing appended)
/// when only the server can say it.
pub fn write_json(type_oid: u32, text: &str, out: &mut Vec<u8>) -> bool {
    match type_oid {
        oid::BOOL => match text {
            "t" => out.extend_from_slice(b"true"),
            "f" => out.extend_from_slice(b"false"),
            _ => return false,
        },
        oid::INT2 | oid::INT4 | oid::INT8 | oid::OID | oid::FLOAT4 | oid::FLOAT8 | oid::NUMERIC => {
            if is_json_number(text) {
                out.extend_from_slice(text.as_bytes());
            } else {
                // NaN and the infinities: row_to_json quotes what is no JSON number.
                quote(text, out);
            }
        }
        oid::JSON | oid::JSONB => out.extend_from_slice(text.as_bytes()),
        oid::TEXT
        | oid::VARCHAR
        | oid::BPCHAR
        | oid::NAME
        | oid::CHAR
        | oid::UUID
        | oid::BYTEA
        | oid::TIME
        | oid::INTERVAL => quote(text, out),
        oid::DATE if !text.ends_with(" BC") => quote(text, out),
        oid::TIMESTAMP if !text.ends_with(" BC") => quote(&text.replacen(' ', "T", 1), out),
        oid::TIMESTAMPTZ if !text.ends_with(" BC") => {
            match iso_offset(&text.replacen(' ', "T", 1)) {
                Some(t) => quote(&t, out),
                None => return false,
            }
        }
        oid::TIMETZ => match iso_offset(text) {
            Some(t) => quote(&t, out),
            None => return false,
        },
        _ => return false,
    }
    true
}

/// `text` as a JSON string.
fn quote(text: &str, out: &mut Vec<u8>) {
    // Writing into a Vec cannot fail.
    let _ = serde_json::to_writer(out, text);
}

/// `+05` → `+05:00`, `-03:30` stays; seconds in an offset go to the server.
fn iso_offset(text: &str) -> Option<String> {
    if text.starts_with("infinity") || text.starts_with("-infinity") {
        return Some(text.to_string());
    }
    let sign = text.rfind(['+', '-'])?;
    let (time, offset) = text.split_at(sign);
    match offset.len() {
        3 => Some(format!("{time}{offset}:00")),
        6 => Some(text.to_string()),
        _ => None,
    }
}

/// Whether `text` is a number as JSON spells it (PostgreSQL's own test).
fn is_json_number(text: &str) -> bool {
    let bytes = text.as_bytes();
    let mut i = 0;
    if bytes.first() == Some(&b'-') {
        i += 1;
    }
    let digits = |i: &mut usize| {
        let start = *i;
        while *i < bytes.len() && bytes[*i].is_ascii_digit() {
            *i += 1;
        }
        *i > start
    };
    if !digits(&mut i) {
        return false;
    }
    if bytes.get(i) == Some(&b'.') {
        i += 1;
        if !digits(&mut i) {
            return false;
        }
    }
    if matches!(bytes.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(bytes.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if !digits(&mut i) {
            return false;
        }
    }
    i == bytes.len()
}

/// The query that turns a batch of one type's text values into JSON texts,
/// in order: the type's name comes from `format_type`, never from input.
pub fn server_cast_sql(type_name: &str) -> String {
    format!(
        "SELECT to_json(u.value::{type_name})::text AS json \
         FROM unnest($1::text[]) WITH ORDINALITY AS u(value, n) ORDER BY u.n"
    )
}

/// Values waiting for the server's conversion, grouped by type.
#[derive(Default)]
pub struct ServerCast {
    /// Per type oid: the texts, in the order their slots were handed out.
    pub by_type: std::collections::BTreeMap<u32, Vec<String>>,
}

impl ServerCast {
    /// Queues `text` and returns where its JSON will be: (type, index).
    pub fn queue(&mut self, type_oid: u32, text: String) -> (u32, usize) {
        let texts = self.by_type.entry(type_oid).or_default();
        texts.push(text);
        (type_oid, texts.len() - 1)
    }

    pub fn is_empty(&self) -> bool {
        self.by_type.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A value's JSON text, or `None` when only the server can say it.
    fn to_json(type_oid: u32, text: &str) -> Option<String> {
        let mut json = Vec::new();
        write_json(type_oid, text, &mut json).then(|| String::from_utf8(json).unwrap())
    }

    #[test]
    fn common_types_read_as_row_to_json_writes_them() {
        assert_eq!(to_json(oid::BOOL, "t").as_deref(), Some("true"));
        assert_eq!(to_json(oid::NUMERIC, "1.50").as_deref(), Some("1.50"));
        assert_eq!(to_json(oid::FLOAT8, "1e+100").as_deref(), Some("1e+100"));
        assert_eq!(
            to_json(oid::FLOAT8, "-Infinity").as_deref(),
            Some("\"-Infinity\"")
        );
        assert_eq!(to_json(oid::NUMERIC, "NaN").as_deref(), Some("\"NaN\""));
        assert_eq!(to_json(oid::TEXT, "a\"b\n").as_deref(), Some(r#""a\"b\n""#));
        assert_eq!(
            to_json(oid::BYTEA, "\\x0102").as_deref(),
            Some(r#""\\x0102""#)
        );
        assert_eq!(
            to_json(oid::JSONB, "{\"x\": 1}").as_deref(),
            Some("{\"x\": 1}")
        );
        assert_eq!(
            to_json(oid::TIMESTAMPTZ, "2026-11-30 12:22:37.276575+00").as_deref(),
            Some("\"2026-11-30T12:22:37.276575+00:00\"")
        );
        assert_eq!(
            to_json(oid::TIMESTAMPTZ, "2026-11-30 12:22:37-03:30").as_deref(),
            Some("\"2026-11-30T12:22:37-03:30\"")
        );
        assert_eq!(
            to_json(oid::TIMESTAMP, "2026-11-30 12:22:37").as_deref(),
            Some("\"2026-11-30T12:22:37\"")
        );
        assert_eq!(
            to_json(oid::TIMESTAMP, "infinity").as_deref(),
            Some("\"infinity\"")
        );
        assert_eq!(
            to_json(oid::TIMETZ, "12:00:00+02").as_deref(),
            Some("\"12:00:00+02:00\"")
        );
        assert_eq!(
            to_json(oid::DATE, "2026-11-30").as_deref(),
            Some("\"2026-11-30\"")
        );
    }

    #[test]
    fn what_only_the_server_can_spell_is_left_to_it() {
        assert_eq!(to_json(1007, "{1,2}"), None, "int4[]");
        assert_eq!(to_json(790, "$1.00"), None, "money");
        assert_eq!(to_json(oid::DATE, "0044-03-15 BC"), None);
        assert_eq!(
            to_json(oid::TIMESTAMPTZ, "1900-01-01 00:00:00+00:09:21"),
            None
        );
    }

    #[test]
    fn json_numbers_are_recognised_as_postgres_does() {
        for yes in ["0", "-1", "1.5", "1e+10", "2.5E-3"] {
            assert!(is_json_number(yes), "{yes}");
        }
        for no in ["", "-", "1.", ".5", "NaN", "1e", "+1", "0x10"] {
            assert!(!is_json_number(no), "{no}");
        }
    }
}
