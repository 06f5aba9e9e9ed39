//! Decoded `pgoutput` tuples to the change log's rows: each row's JSON as
//! `row_to_json` would write it (converted here, or by the server for the
//! types only it can spell), written in batches numbered after the highest
//! `seq` ever given, and handed on as changes without reading them back.

use std::collections::HashMap;

use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Nullable, Text};

use super::LogicalSource;
use super::pgoutput::Cell;
use super::pgtext::{self, ServerCast};
use crate::changes::{Change, Operation};
use crate::db::DbError;

/// Changes written into the log per statement.
pub(super) const INSERT_ROWS: usize = 2_000;

/// One change as decoded, before it is written into the log.
pub(super) struct Decoded {
    table: String,
    operation: Operation,
    new: Option<RowJson>,
    old: Option<RowJson>,
    at_ms: i64,
}

/// A row's JSON text as decoded, and where the values only the server can
/// convert go in it.
pub(super) struct RowJson {
    text: Vec<u8>,
    /// (byte offset in `text`, type oid, index among that type's values).
    casts: Vec<(usize, u32, usize)>,
}

impl RowJson {
    /// The whole text, with the server's conversions in place.
    fn finish(self, converted: &HashMap<u32, Vec<String>>) -> String {
        let mut text = self.text;
        if !self.casts.is_empty() {
            let mut whole = Vec::with_capacity(text.len() + 16 * self.casts.len());
            let mut from = 0;
            for (at, oid, i) in self.casts {
                whole.extend_from_slice(&text[from..at]);
                let json = converted
                    .get(&oid)
                    .and_then(|texts| texts.get(i))
                    .map_or("null", String::as_str);
                whole.extend_from_slice(json.as_bytes());
                from = at;
            }
            whole.extend_from_slice(&text[from..]);
            text = whole;
        }
        // Built from UTF-8 pieces; lossy only to never panic.
        String::from_utf8(text)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
    }
}

#[derive(QueryableByName)]
struct JsonText {
    #[diesel(sql_type = Nullable<Text>)]
    json: Option<String>,
}

#[derive(QueryableByName)]
struct FirstSeq {
    #[diesel(sql_type = Nullable<BigInt>)]
    seq: Option<i64>,
}

impl LogicalSource {
    pub(super) fn decoded(
        &self,
        relation: u32,
        operation: Operation,
        new: Option<RowJson>,
        old: Option<RowJson>,
        at_ms: i64,
    ) -> Option<Decoded> {
        let table = self.relation_topics.get(&relation)?.clone()?;
        Some(Decoded {
            table,
            operation,
            new,
            old,
            at_ms,
        })
    }

    /// A tuple's JSON object. A TOASTed value the change left alone is not
    /// sent; it is taken from the old row when there is one.
    pub(super) fn row(
        &self,
        relation: u32,
        tuple: &[Cell],
        old: Option<&[Cell]>,
        casts: &mut ServerCast,
    ) -> Option<RowJson> {
        let relation = self.relations.get(&relation)?;
        let mut row = RowJson {
            text: Vec::with_capacity(2 + 24 * tuple.len()),
            casts: Vec::new(),
        };
        row.text.push(b'{');
        for (i, (cell, column)) in tuple.iter().zip(&relation.columns).enumerate() {
            let value = match cell {
                Cell::Null => None,
                Cell::Text(bytes) => Some(*bytes),
                Cell::UnchangedToast => match old.and_then(|o| o.get(i)) {
                    Some(Cell::Text(bytes)) => Some(*bytes),
                    _ => continue,
                },
            };
            if row.text.len() > 1 {
                row.text.push(b',');
            }
            // Writing into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut row.text, &column.name);
            row.text.push(b':');
            match value {
                None => row.text.extend_from_slice(b"null"),
                Some(bytes) => {
                    let text = String::from_utf8_lossy(bytes);
                    if !pgtext::write_json(column.type_oid, &text, &mut row.text) {
                        let (oid, at) = casts.queue(column.type_oid, text.into_owned());
                        row.casts.push((row.text.len(), oid, at));
                    }
                }
            }
        }
        row.text.push(b'}');
        Some(row)
    }

    /// The server's JSON for values of types converted there, by type.
    pub(super) fn server_casts(
        &mut self,
        casts: ServerCast,
    ) -> Result<HashMap<u32, Vec<String>>, DbError> {
        let mut converted = HashMap::new();
        for (oid, texts) in casts.by_type {
            let type_name = match self.type_names.get(&oid) {
                Some(name) => name.clone(),
                None => {
                    #[derive(QueryableByName)]
                    struct TypeName {
                        #[diesel(sql_type = Text)]
                        name: String,
                    }
                    let name: TypeName =
                        diesel::sql_query("SELECT format_type($1::int::oid, NULL) AS name")
                            .bind::<BigInt, _>(i64::from(oid))
                            .get_result(&mut self.conn)?;
                    self.type_names.insert(oid, name.name.clone());
                    name.name
                }
            };
            let rows: Vec<JsonText> = diesel::sql_query(pgtext::server_cast_sql(&type_name))
                .bind::<Array<Text>, _>(&texts)
                .load(self.pg()?)?;
            converted.insert(
                oid,
                rows.into_iter()
                    .map(|r| r.json.unwrap_or_else(|| "null".into()))
                    .collect(),
            );
        }
        Ok(converted)
    }

    /// Appends changes to the log, numbered after the highest seq ever
    /// given, and returns them as the log now holds them.
    pub(super) fn write_log(
        &mut self,
        decoded: Vec<Decoded>,
        converted: &HashMap<u32, Vec<String>>,
    ) -> Result<Vec<Change>, DbError> {
        let mut logged = Vec::with_capacity(decoded.len());
        let mut decoded = decoded.into_iter().peekable();
        while decoded.peek().is_some() {
            let (mut tables, mut ops, mut news, mut olds, mut times) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for change in decoded.by_ref().take(INSERT_ROWS) {
                tables.push(change.table);
                ops.push(change.operation);
                news.push(change.new.map(|row| row.finish(converted)));
                olds.push(change.old.map(|row| row.finish(converted)));
                times.push(change.at_ms);
            }
            let op_names: Vec<&str> = ops.iter().map(|op| op.as_str()).collect();
            let first: FirstSeq = diesel::sql_query(
                "WITH top AS (SELECT GREATEST( \
                   (SELECT COALESCE(max(seq), 0) FROM _realtide_changes), \
                   (SELECT COALESCE(max(value::bigint), 0) FROM _realtide_meta WHERE key = 'pruned_through') \
                 ) AS seq), \
                 logged AS (INSERT INTO _realtide_changes (seq, table_name, op, new_row, old_row, changed_at) \
                 SELECT top.seq + u.n, u.t, u.o, u.nr, u.orow, u.c FROM top, \
                 unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[]) \
                   WITH ORDINALITY AS u(t, o, nr, orow, c, n) ORDER BY u.n RETURNING seq) \
                 SELECT min(seq) AS seq FROM logged",
            )
            .bind::<Array<Text>, _>(&tables)
            .bind::<Array<Text>, _>(&op_names)
            .bind::<Array<Nullable<Text>>, _>(&news)
            .bind::<Array<Nullable<Text>>, _>(&olds)
            .bind::<Array<BigInt>, _>(&times)
            .get_result(self.pg()?)?;
            // The statement numbered its rows first, first + 1, ... in order.
            let Some(first) = first.seq.and_then(|seq| u64::try_from(seq).ok()) else {
                return Err(DbError::Task("the change log numbered no changes".into()));
            };
            let batch = tables
                .into_iter()
                .zip(ops)
                .zip(news.into_iter().zip(olds))
                .zip(times);
            for (n, (((table, operation), (new, old)), at_ms)) in batch.enumerate() {
                let decoder = self.watched.decoder(&table);
                logged.push(Change {
                    seq: first + n as u64,
                    new: new.and_then(|text| decoder.row(text)),
                    old: old.and_then(|text| decoder.row(text)),
                    table,
                    operation,
                    at_ms,
                    repaired: false,
                });
            }
        }
        Ok(logged)
    }
}
