//! Decoded `pgoutput` tuples to the change log's rows: each column's JSON
//! as `row_to_json` would write it (converted here, or by the server for the
//! types only it can spell), written in batches numbered after the highest
//! `seq` ever given.

use std::collections::HashMap;

use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Nullable, Text};

use super::LogicalSource;
use super::pgoutput::Cell;
use super::pgtext::{self, ServerCast};
use crate::db::DbError;

/// Changes written into the log per statement.
pub(super) const INSERT_ROWS: usize = 2_000;

/// One change as decoded, before it is written into the log.
pub(super) struct Decoded {
    table: String,
    op: &'static str,
    new: Option<Vec<(String, Json)>>,
    old: Option<Vec<(String, Json)>>,
    at_ms: i64,
}

/// A column's JSON text, or where the server's conversion will put it.
pub(super) enum Json {
    Ready(String),
    Cast(u32, usize),
}

#[derive(QueryableByName)]
struct JsonText {
    #[diesel(sql_type = Nullable<Text>)]
    json: Option<String>,
}

impl LogicalSource {
    pub(super) fn decoded(
        &self,
        relation: u32,
        op: &'static str,
        new: Option<Vec<(String, Json)>>,
        old: Option<Vec<(String, Json)>>,
        at_ms: i64,
    ) -> Option<Decoded> {
        let table = self.relation_topics.get(&relation)?.clone()?;
        Some(Decoded {
            table,
            op,
            new,
            old,
            at_ms,
        })
    }

    /// A tuple as (column, JSON) pairs. A TOASTed value the change left
    /// alone is not sent; it is taken from the old row when there is one.
    pub(super) fn row(
        &self,
        relation: u32,
        tuple: Vec<Cell>,
        old: Option<&Vec<Cell>>,
        casts: &mut ServerCast,
    ) -> Option<Vec<(String, Json)>> {
        let relation = self.relations.get(&relation)?;
        let mut row = Vec::with_capacity(tuple.len());
        for (i, (cell, column)) in tuple.into_iter().zip(&relation.columns).enumerate() {
            let cell = match cell {
                Cell::UnchangedToast => match old.and_then(|o| o.get(i)) {
                    Some(Cell::Text(bytes)) => Cell::Text(bytes.clone()),
                    _ => continue,
                },
                cell => cell,
            };
            let json = match cell {
                Cell::Null => Json::Ready("null".into()),
                Cell::Text(bytes) => {
                    let text = String::from_utf8_lossy(&bytes);
                    match pgtext::to_json(column.type_oid, &text) {
                        Some(json) => Json::Ready(json),
                        None => {
                            let (oid, at) = casts.queue(column.type_oid, text.into_owned());
                            Json::Cast(oid, at)
                        }
                    }
                }
                Cell::UnchangedToast => continue,
            };
            row.push((column.name.clone(), json));
        }
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

    /// Appends changes to the log, numbered after the highest seq ever given.
    pub(super) fn write_log(
        &mut self,
        decoded: Vec<Decoded>,
        converted: &HashMap<u32, Vec<String>>,
    ) -> Result<(), DbError> {
        let render = |row: Option<Vec<(String, Json)>>| -> Option<String> {
            let row = row?;
            let mut json = String::from("{");
            for (i, (column, value)) in row.into_iter().enumerate() {
                if i > 0 {
                    json.push(',');
                }
                json.push_str(&serde_json::Value::String(column).to_string());
                json.push(':');
                match value {
                    Json::Ready(text) => json.push_str(&text),
                    Json::Cast(oid, at) => json.push_str(
                        converted
                            .get(&oid)
                            .and_then(|texts| texts.get(at))
                            .map_or("null", String::as_str),
                    ),
                }
            }
            json.push('}');
            Some(json)
        };
        let mut decoded = decoded.into_iter().peekable();
        while decoded.peek().is_some() {
            let (mut tables, mut ops, mut news, mut olds, mut times) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for change in decoded.by_ref().take(INSERT_ROWS) {
                tables.push(change.table);
                ops.push(change.op);
                news.push(render(change.new));
                olds.push(render(change.old));
                times.push(change.at_ms);
            }
            diesel::sql_query(
                "WITH top AS (SELECT GREATEST( \
                   (SELECT COALESCE(max(seq), 0) FROM _realtide_changes), \
                   (SELECT COALESCE(max(value::bigint), 0) FROM _realtide_meta WHERE key = 'pruned_through') \
                 ) AS seq) \
                 INSERT INTO _realtide_changes (seq, table_name, op, new_row, old_row, changed_at) \
                 SELECT top.seq + u.n, u.t, u.o, u.nr, u.orow, u.c FROM top, \
                 unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[]) \
                   WITH ORDINALITY AS u(t, o, nr, orow, c, n) ORDER BY u.n",
            )
            .bind::<Array<Text>, _>(&tables)
            .bind::<Array<Text>, _>(&ops)
            .bind::<Array<Nullable<Text>>, _>(&news)
            .bind::<Array<Nullable<Text>>, _>(&olds)
            .bind::<Array<BigInt>, _>(&times)
            .execute(self.pg()?)?;
        }
        Ok(())
    }
}
