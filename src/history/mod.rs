//! Message history: persisted pub/sub messages in `_realtide_messages`, and
//! the pages clients read back. Every function here blocks: call it through
//! `Database::run`, or (storing) through the [`HistoryWriter`]'s thread.

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Nullable, Text};
use serde_json::{Value, json};

use crate::db::{DbConnection, DbError};
use crate::protocol::ProtocolError;

pub mod writer;
pub use writer::HistoryWriter;

/// Most messages one page returns, and the default.
pub const MAX_PAGE: i64 = 100;
pub const DEFAULT_PAGE: i64 = 50;

/// A stored message.
#[derive(Debug, Clone, PartialEq, QueryableByName)]
pub struct StoredMessage {
    #[diesel(sql_type = BigInt)]
    pub num: i64,
    #[diesel(sql_type = Text)]
    pub room_id: String,
    #[diesel(sql_type = Nullable<Text>)]
    pub user_id: Option<String>,
    #[diesel(sql_type = Text)]
    pub event: String,
    #[diesel(sql_type = Text)]
    pub data: String,
    #[diesel(sql_type = BigInt)]
    pub created_at: i64,
    #[diesel(sql_type = BigInt)]
    pub seq: i64,
}

/// The id clients see: `num` zero-padded, so ids sort in publish order.
pub fn message_id(num: i64) -> String {
    format!("{num:020}")
}

/// Parses a `before_id`.
pub fn parse_message_id(id: &str) -> Result<i64, ProtocolError> {
    if id.is_empty() || id.len() > 20 || !id.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ProtocolError::bad_request(format!(
            "`{id}` is not a message id"
        )));
    }
    id.parse()
        .map_err(|_| ProtocolError::bad_request(format!("`{id}` is not a message id")))
}

impl StoredMessage {
    pub fn id(&self) -> String {
        message_id(self.num)
    }

    pub fn data_value(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or(Value::Null)
    }

    /// The history message of the HTTP API (docs/protocol.md).
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id(),
            "room_id": self.room_id,
            "user_id": self.user_id,
            "event": self.event,
            "data": self.data_value(),
            "created_at": self.created_at,
            "seq": self.seq,
        })
    }
}

/// One page: at most `limit` messages, newest first, strictly before the
/// given time (ms) and/or message id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    pub limit: i64,
    pub before_ms: Option<i64>,
    pub before_num: Option<i64>,
}

/// A `before` cursor: milliseconds, or a message id (SDKs that pass the
/// last message's id, or treat the cursor as opaque).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(untagged)]
pub enum Before {
    Ms(i64),
    Id(String),
}

/// Over HTTP a `before` of at most this many decimal digits is milliseconds
/// (ids are 20 digits).
const MAX_MS_DIGITS: usize = 15;

impl Before {
    /// A query string's `before`: milliseconds when it is at most 15
    /// decimal digits, else a message id.
    pub fn from_query(text: &str) -> Before {
        let digits = text.strip_prefix('-').unwrap_or(text);
        match text.parse::<i64>() {
            Ok(ms) if digits.len() <= MAX_MS_DIGITS => Before::Ms(ms),
            _ => Before::Id(text.to_string()),
        }
    }
}

impl PageRequest {
    /// Clamps `limit` to 1..=100 (default 50) and parses the id cursors; a
    /// `before` that is an id means `before_id` (the earlier of two wins).
    pub fn new(
        limit: Option<i64>,
        before: Option<Before>,
        before_id: Option<&str>,
    ) -> Result<Self, ProtocolError> {
        let (before_ms, before_as_id) = match before {
            Some(Before::Ms(ms)) => (Some(ms), None),
            Some(Before::Id(id)) => (None, Some(parse_message_id(&id)?)),
            None => (None, None),
        };
        let before_id = before_id.map(parse_message_id).transpose()?;
        let before_num = match (before_as_id, before_id) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Ok(PageRequest {
            limit: limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE),
            before_ms,
            before_num,
        })
    }
}

/// A message to store.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub room_id: String,
    pub user_id: Option<String>,
    pub event: String,
    pub data: String,
    pub created_at: i64,
    /// The message's seq; in a cluster, until the broker numbers it, a
    /// placeholder below zero, unique within its group (history never
    /// shows a message whose seq is not above zero).
    pub seq: i64,
}

const COLUMNS: &str = "num, room_id, user_id, event, data, created_at, seq";

diesel::table! {
    /// The stored messages, for statements diesel prepares once per
    /// connection and keeps (raw SQL it prepares anew every time).
    _realtide_messages (num) {
        num -> BigInt,
        room_id -> Text,
        user_id -> Nullable<Text>,
        event -> Text,
        data -> Text,
        created_at -> BigInt,
        seq -> BigInt,
    }
}

/// Stores one message on SQLite with the connection's cached INSERT;
/// answers its `num`.
fn insert_cached(
    conn: &mut diesel::SqliteConnection,
    message: &NewMessage,
) -> Result<i64, DbError> {
    use self::_realtide_messages::dsl as m;
    Ok(diesel::insert_into(m::_realtide_messages)
        .values((
            m::room_id.eq(&message.room_id),
            m::user_id.eq(message.user_id.as_deref()),
            m::event.eq(&message.event),
            m::data.eq(&message.data),
            m::created_at.eq(message.created_at),
            m::seq.eq(message.seq),
        ))
        .returning(m::num)
        .get_result(conn)?)
}

/// Rows per multi-row INSERT: 6 bound values each, far below PostgreSQL's
/// limit on parameters per statement.
const ROWS_PER_INSERT: usize = 500;

/// Stores `messages` atomically, with one commit for all of them; answers
/// their ids in the same order. Nothing is stored if one fails. No two may
/// share a room and a seq.
///
/// PostgreSQL gets multi-row INSERTs (one round trip per [`ROWS_PER_INSERT`]
/// rows); SQLite, in-process, one short INSERT per row in a transaction,
/// which measured faster there than one long statement (`persist` in
/// docs/benchmarks.md).
pub fn insert_all(
    conn: &mut DbConnection,
    messages: &[NewMessage],
) -> Result<Vec<String>, DbError> {
    if let DbConnection::Sqlite(conn) = conn {
        let store = |conn: &mut diesel::SqliteConnection| {
            messages
                .iter()
                .map(|message| insert_cached(conn, message).map(message_id))
                .collect()
        };
        // A message alone is its own statement's transaction.
        return match messages {
            [_] => store(conn),
            _ => conn.transaction(store),
        };
    }
    if messages.len() <= ROWS_PER_INSERT {
        return insert_rows(conn, messages);
    }
    conn.transaction(|conn| {
        let mut ids = Vec::with_capacity(messages.len());
        for rows in messages.chunks(ROWS_PER_INSERT) {
            ids.extend(insert_rows(conn, rows)?);
        }
        Ok(ids)
    })
}

#[derive(QueryableByName)]
struct Inserted {
    #[diesel(sql_type = BigInt)]
    num: i64,
    #[diesel(sql_type = Text)]
    room_id: String,
    #[diesel(sql_type = BigInt)]
    seq: i64,
}

/// One multi-row INSERT. RETURNING promises no row order, so ids are
/// matched to messages by room and seq.
fn insert_rows(conn: &mut DbConnection, rows: &[NewMessage]) -> Result<Vec<String>, DbError> {
    use std::fmt::Write;
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let mut sql = String::from(
        "INSERT INTO _realtide_messages (room_id, user_id, event, data, created_at, seq) VALUES ",
    );
    for i in 0..rows.len() {
        let p = i * 6;
        let comma = if i == 0 { "" } else { ", " };
        let _ = write!(
            sql,
            "{comma}(${}, ${}, ${}, ${}, ${}, ${})",
            p + 1,
            p + 2,
            p + 3,
            p + 4,
            p + 5,
            p + 6
        );
    }
    sql.push_str(" RETURNING num, room_id, seq");
    let mut query = diesel::sql_query(sql).into_boxed();
    for message in rows {
        query = query
            .bind::<Text, _>(&message.room_id)
            .bind::<Nullable<Text>, _>(message.user_id.as_deref())
            .bind::<Text, _>(&message.event)
            .bind::<Text, _>(&message.data)
            .bind::<BigInt, _>(message.created_at)
            .bind::<BigInt, _>(message.seq);
    }
    let inserted: Vec<Inserted> = query.load(conn)?;
    let by_key: std::collections::HashMap<(String, i64), i64> = inserted
        .into_iter()
        .map(|row| ((row.room_id, row.seq), row.num))
        .collect();
    rows.iter()
        .map(|message| {
            by_key
                .get(&(message.room_id.clone(), message.seq))
                .map(|num| message_id(*num))
                .ok_or_else(|| {
                    DbError::Task(format!(
                        "no id came back for {} seq {}",
                        message.room_id, message.seq
                    ))
                })
        })
        .collect()
}

/// Gives stored messages their seqs (a cluster numbers them after storing
/// them), in one transaction: on PostgreSQL one `UPDATE … FROM (VALUES …)`
/// per [`ROWS_PER_INSERT`] messages (a round trip each), on SQLite the
/// connection's cached UPDATE per message (in-process, no round trip).
pub fn set_seqs(conn: &mut DbConnection, numbered: &[(String, u64)]) -> Result<(), DbError> {
    use self::_realtide_messages::dsl as m;
    let nums: Vec<(i64, i64)> = numbered
        .iter()
        .map(|(id, seq)| Ok((parse_message_id(id)?, *seq as i64)))
        .collect::<Result<_, ProtocolError>>()
        .map_err(|e| DbError::Task(e.message))?;
    if let DbConnection::Sqlite(conn) = conn {
        return Ok(conn.transaction(|conn| {
            for (num, seq) in nums {
                diesel::update(m::_realtide_messages.filter(m::num.eq(num)))
                    .set(m::seq.eq(seq))
                    .execute(conn)?;
            }
            diesel::QueryResult::Ok(())
        })?);
    }
    if nums.len() <= ROWS_PER_INSERT {
        // One statement is its own transaction.
        return set_seq_rows(conn, &nums);
    }
    conn.transaction(|conn| {
        for rows in nums.chunks(ROWS_PER_INSERT) {
            set_seq_rows(conn, rows)?;
        }
        Ok(())
    })
}

/// One `UPDATE … FROM (VALUES (num, seq), …)`.
fn set_seq_rows(conn: &mut DbConnection, rows: &[(i64, i64)]) -> Result<(), DbError> {
    use std::fmt::Write;
    if rows.is_empty() {
        return Ok(());
    }
    let mut sql = String::from("UPDATE _realtide_messages AS m SET seq = v.seq FROM (VALUES ");
    for i in 0..rows.len() {
        let comma = if i == 0 { "" } else { ", " };
        let _ = write!(
            sql,
            "{comma}(${}::bigint, ${}::bigint)",
            2 * i + 1,
            2 * i + 2
        );
    }
    sql.push_str(") AS v(num, seq) WHERE m.num = v.num");
    let mut query = diesel::sql_query(sql).into_boxed();
    for (num, seq) in rows {
        query = query.bind::<BigInt, _>(*num).bind::<BigInt, _>(*seq);
    }
    query.execute(conn)?;
    Ok(())
}

/// Deletes stored messages whose publish failed (not yet numbered).
pub fn forget_unpublished(conn: &mut DbConnection, ids: &[String]) -> Result<(), DbError> {
    for id in ids {
        let num = parse_message_id(id).map_err(|e| DbError::Task(e.message))?;
        diesel::sql_query("DELETE FROM _realtide_messages WHERE num = $1 AND seq <= 0")
            .bind::<BigInt, _>(num)
            .execute(conn)?;
    }
    Ok(())
}

/// A page of a room's messages, newest first.
pub fn page(
    conn: &mut DbConnection,
    room: &str,
    request: PageRequest,
) -> Result<Vec<StoredMessage>, DbError> {
    Ok(diesel::sql_query(format!(
        "SELECT {COLUMNS} FROM _realtide_messages \
         WHERE room_id = $1 AND created_at < $2 AND num < $3 AND seq > 0 \
         ORDER BY num DESC LIMIT $4"
    ))
    .bind::<Text, _>(room)
    .bind::<BigInt, _>(request.before_ms.unwrap_or(i64::MAX))
    .bind::<BigInt, _>(request.before_num.unwrap_or(i64::MAX))
    .bind::<BigInt, _>(request.limit)
    .load(conn)?)
}

/// A room's last `count` messages, oldest first.
pub fn latest(
    conn: &mut DbConnection,
    room: &str,
    count: i64,
) -> Result<Vec<StoredMessage>, DbError> {
    let mut newest_first = page(
        conn,
        room,
        PageRequest {
            limit: count.clamp(1, MAX_PAGE),
            before_ms: None,
            before_num: None,
        },
    )?;
    newest_first.reverse();
    Ok(newest_first)
}

/// Deletes a room's messages; returns how many.
pub fn delete_room(conn: &mut DbConnection, room: &str) -> Result<usize, DbError> {
    Ok(
        diesel::sql_query("DELETE FROM _realtide_messages WHERE room_id = $1")
            .bind::<Text, _>(room)
            .execute(conn)?,
    )
}

/// Applies the retention: messages older than `before_ms` go, and each room
/// keeps at most `max_per_room`. Returns how many were deleted.
pub fn prune(conn: &mut DbConnection, before_ms: i64, max_per_room: i64) -> Result<usize, DbError> {
    let old = diesel::sql_query("DELETE FROM _realtide_messages WHERE created_at < $1")
        .bind::<BigInt, _>(before_ms)
        .execute(conn)?;
    #[derive(QueryableByName)]
    struct Room {
        #[diesel(sql_type = Text)]
        room_id: String,
    }
    let crowded: Vec<Room> = diesel::sql_query(
        "SELECT room_id FROM _realtide_messages GROUP BY room_id HAVING count(*) > $1",
    )
    .bind::<BigInt, _>(max_per_room)
    .load(conn)?;
    let mut excess = 0;
    for room in crowded {
        excess += diesel::sql_query(
            "DELETE FROM _realtide_messages WHERE room_id = $1 AND num <= \
             (SELECT num FROM _realtide_messages WHERE room_id = $1 ORDER BY num DESC LIMIT 1 OFFSET $2)",
        )
        .bind::<Text, _>(&room.room_id)
        .bind::<BigInt, _>(max_per_room)
        .execute(conn)?;
    }
    Ok(old + excess)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_sort_in_publish_order_and_parse_back() {
        assert!(message_id(9) < message_id(10));
        assert!(message_id(99_999) < message_id(100_000));
        assert_eq!(parse_message_id(&message_id(42)).unwrap(), 42);
        for bad in ["", "abc", "-1", "1e3", "123456789012345678901"] {
            assert!(parse_message_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn page_limits_are_clamped() {
        assert_eq!(PageRequest::new(None, None, None).unwrap().limit, 50);
        assert_eq!(PageRequest::new(Some(0), None, None).unwrap().limit, 1);
        assert_eq!(PageRequest::new(Some(1000), None, None).unwrap().limit, 100);
    }
}
