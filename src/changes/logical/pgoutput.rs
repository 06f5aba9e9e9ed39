//! The messages of PostgreSQL's built-in `pgoutput` logical decoding plugin
//! (protocol version 1), as `pg_logical_slot_peek_binary_changes` returns
//! them, one per row. Only what change capture reads is decoded; anything
//! else (origin, type, truncate, logical messages) is [`Message::Other`].
//! The layout is PostgreSQL's "Logical Replication Message Formats".

/// One decoded message.
#[derive(Debug, Clone, PartialEq)]
pub enum Message<'a> {
    Begin {
        /// Where the transaction's commit record is: its identity in the WAL.
        final_lsn: u64,
        /// The transaction's commit timestamp, in µs since 2000-01-01.
        commit_time: i64,
    },
    Commit {
        /// The end of the commit record: where the slot may advance to.
        end_lsn: u64,
        commit_time: i64,
    },
    /// Sent before a relation's first change in each decoding call.
    Relation(Relation),
    Insert {
        relation: u32,
        new: Tuple<'a>,
    },
    Update {
        relation: u32,
        /// The whole old row under REPLICA IDENTITY FULL, its key columns
        /// under an index identity, absent when the key did not change.
        old: Option<Tuple<'a>>,
        new: Tuple<'a>,
    },
    Delete {
        relation: u32,
        old: Tuple<'a>,
    },
    Other,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Relation {
    pub id: u32,
    pub namespace: String,
    pub name: String,
    pub columns: Vec<Column>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    pub name: String,
    pub type_oid: u32,
}

/// A row's cells, borrowed from the message they were decoded from.
pub type Tuple<'a> = Vec<Cell<'a>>;

/// One column's value in a tuple.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Cell<'a> {
    Null,
    /// A TOASTed value the change did not touch: not in the WAL, so not sent.
    UnchangedToast,
    /// The value in the type's text output.
    Text(&'a [u8]),
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("malformed pgoutput message: {0}")]
pub struct DecodeError(&'static str);

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.bytes.len() < n {
            return Err(DecodeError("truncated"));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        let b = self.take(8)?;
        let mut word = [0; 8];
        word.copy_from_slice(b);
        Ok(u64::from_be_bytes(word))
    }

    fn string(&mut self) -> Result<String, DecodeError> {
        let end = self
            .bytes
            .iter()
            .position(|&b| b == 0)
            .ok_or(DecodeError("unterminated string"))?;
        let text = String::from_utf8_lossy(&self.bytes[..end]).into_owned();
        self.bytes = &self.bytes[end + 1..];
        Ok(text)
    }

    fn tuple(&mut self) -> Result<Tuple<'a>, DecodeError> {
        let columns = self.u16()?;
        (0..columns)
            .map(|_| match self.u8()? {
                b'n' => Ok(Cell::Null),
                b'u' => Ok(Cell::UnchangedToast),
                b't' | b'b' => {
                    let len = self.u32()? as usize;
                    Ok(Cell::Text(self.take(len)?))
                }
                _ => Err(DecodeError("unknown tuple cell kind")),
            })
            .collect()
    }
}

/// Whether a message is a row change (insert, update or delete), without
/// decoding it.
pub fn is_change(bytes: &[u8]) -> bool {
    matches!(bytes.first(), Some(b'I' | b'U' | b'D'))
}

/// Decodes one message.
pub fn decode(bytes: &[u8]) -> Result<Message<'_>, DecodeError> {
    let mut r = Reader { bytes };
    Ok(match r.u8()? {
        b'B' => {
            let final_lsn = r.u64()?;
            let commit_time = r.u64()? as i64;
            Message::Begin {
                final_lsn,
                commit_time,
            }
        }
        b'C' => {
            let _flags = r.u8()?;
            let _commit_lsn = r.u64()?;
            let end_lsn = r.u64()?;
            let commit_time = r.u64()? as i64;
            Message::Commit {
                end_lsn,
                commit_time,
            }
        }
        b'R' => {
            let id = r.u32()?;
            let namespace = r.string()?;
            let name = r.string()?;
            let _replica_identity = r.u8()?;
            let count = r.u16()?;
            let columns = (0..count)
                .map(|_| {
                    let _flags = r.u8()?;
                    let name = r.string()?;
                    let type_oid = r.u32()?;
                    let _type_modifier = r.u32()?;
                    Ok(Column { name, type_oid })
                })
                .collect::<Result<_, DecodeError>>()?;
            Message::Relation(Relation {
                id,
                namespace,
                name,
                columns,
            })
        }
        b'I' => {
            let relation = r.u32()?;
            if r.u8()? != b'N' {
                return Err(DecodeError("insert without a new tuple"));
            }
            Message::Insert {
                relation,
                new: r.tuple()?,
            }
        }
        b'U' => {
            let relation = r.u32()?;
            let mut old = None;
            let mut kind = r.u8()?;
            if kind == b'K' || kind == b'O' {
                old = Some(r.tuple()?);
                kind = r.u8()?;
            }
            if kind != b'N' {
                return Err(DecodeError("update without a new tuple"));
            }
            Message::Update {
                relation,
                old,
                new: r.tuple()?,
            }
        }
        b'D' => {
            let relation = r.u32()?;
            match r.u8()? {
                b'K' | b'O' => Message::Delete {
                    relation,
                    old: r.tuple()?,
                },
                _ => return Err(DecodeError("delete without an old tuple")),
            }
        }
        _ => Message::Other,
    })
}

/// PostgreSQL timestamps count µs from 2000-01-01; the log counts ms from 1970.
pub fn unix_ms(pg_micros: i64) -> i64 {
    const PG_EPOCH_UNIX_MS: i64 = 946_684_800_000;
    pg_micros.div_euclid(1000) + PG_EPOCH_UNIX_MS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }

    // Captured from PostgreSQL 15: a table `items(id serial, name text)`
    // under REPLICA IDENTITY FULL, one UPDATE of name 'a' to 'b'.
    #[test]
    fn messages_from_a_real_server_decode() {
        let begin = hex("4200000000021ad7600003047c3be2586f000002dc");
        let begin = decode(&begin).unwrap();
        assert_eq!(
            begin,
            Message::Begin {
                final_lsn: 0x021ad760,
                commit_time: 0x0003047c3be2586f
            }
        );
        let relation = hex(
            "52000040057075626c6963006974656d73006600020169640000000017ffffffff016e616d650000000019ffffffff",
        );
        let relation = decode(&relation).unwrap();
        let Message::Relation(relation) = relation else {
            panic!("{relation:?}")
        };
        assert_eq!(
            (relation.namespace.as_str(), relation.name.as_str()),
            ("public", "items")
        );
        assert_eq!(
            relation.columns[0],
            Column {
                name: "id".into(),
                type_oid: 23
            }
        );
        assert_eq!(relation.columns[1].type_oid, 25);
        let update = hex("55000040054f00027400000001316e4e0002740000000131740000000162");
        let update = decode(&update).unwrap();
        assert_eq!(
            update,
            Message::Update {
                relation: 0x4005,
                old: Some(vec![Cell::Text(b"1"), Cell::Null]),
                new: vec![Cell::Text(b"1"), Cell::Text(b"b")],
            }
        );
        let commit = hex("430000000000021ad76000000000021ad7900003047c3be2586f");
        let commit = decode(&commit).unwrap();
        assert_eq!(
            commit,
            Message::Commit {
                end_lsn: 0x021ad790,
                commit_time: 0x0003047c3be2586f
            }
        );
    }

    #[test]
    fn truncated_or_unknown_input_is_an_error_not_a_panic() {
        assert!(decode(&[]).is_err());
        assert!(decode(b"I\0\0").is_err());
        assert!(decode(&hex("55000040054e0001780000")).is_err());
        assert_eq!(decode(b"Yanything"), Ok(Message::Other));
    }

    #[test]
    fn commit_times_become_unix_milliseconds() {
        assert_eq!(unix_ms(0), 946_684_800_000);
        assert_eq!(unix_ms(1_500), 946_684_800_001);
    }
}
