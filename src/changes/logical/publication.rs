//! The slot and the publication: created once per database, tables joined
//! with their whole old rows, each streamed relation mapped to the topic
//! that reads it, and how much WAL the slot holds back.

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool, Nullable, Text};

use super::pgoutput::Relation;
use super::{Flag, LAG_WARNING_BYTES, LogicalSource, PUBLICATION, SETUP_LOCK, SLOT_CREATE_TIMEOUT};
use crate::changes::tables::TableRef;
use crate::db::DbError;

impl LogicalSource {
    /// Creates the slot and the publication unless they exist. Creating a
    /// slot waits for the transactions open at that moment to end.
    pub(super) fn set_up(&mut self) -> Result<(), DbError> {
        if self.slot_ready {
            return Ok(());
        }
        diesel::sql_query("SELECT pg_advisory_lock($1)")
            .bind::<BigInt, _>(SETUP_LOCK)
            .execute(&mut self.conn)?;
        let result = self.create_slot_and_publication();
        let unlocked = diesel::sql_query("SELECT pg_advisory_unlock($1)")
            .bind::<BigInt, _>(SETUP_LOCK)
            .execute(&mut self.conn);
        result?;
        unlocked?;
        self.slot_ready = true;
        Ok(())
    }

    /// The publication comes first: pgoutput looks a publication up as the
    /// catalog was at each change it decodes, so a change between a slot's
    /// creation and its publication's stops the stream for good
    /// ("publication does not exist"), and a busy table always has one.
    pub(super) fn create_slot_and_publication(&mut self) -> Result<(), DbError> {
        let published: Flag = diesel::sql_query(
            "SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1) AS value",
        )
        .bind::<Text, _>(PUBLICATION)
        .get_result(&mut self.conn)?;
        if !published.value {
            self.conn
                .batch_execute(&format!("CREATE PUBLICATION \"{PUBLICATION}\""))?;
        }

        let exists: Flag = diesel::sql_query(
            "SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1) AS value",
        )
        .bind::<Text, _>(&self.slot)
        .get_result(&mut self.conn)?;
        if !exists.value {
            self.conn.batch_execute(&format!(
                "SET statement_timeout = {}",
                SLOT_CREATE_TIMEOUT.as_millis()
            ))?;
            let created = diesel::sql_query(
                "SELECT pg_create_logical_replication_slot($1, 'pgoutput')::text AS lsn",
            )
            .bind::<Text, _>(&self.slot)
            .execute(&mut self.conn);
            self.conn.batch_execute("SET statement_timeout = 0")?;
            created?;
            tracing::info!(slot = %self.slot, "replication slot created");
        }
        Ok(())
    }

    /// The log's table name (its topic) for a relation the stream
    /// described: the `--tables` entry that resolves to that very table.
    pub(super) fn topic_of(&mut self, relation: &Relation) -> Result<Option<String>, DbError> {
        for table in self.tables.candidates(&relation.name) {
            if table
                .schema
                .as_ref()
                .is_some_and(|schema| *schema != relation.namespace)
            {
                continue;
            }
            let same: Flag = diesel::sql_query(
                "SELECT COALESCE(to_regclass($1)::oid = $2::int8::oid, false) AS value",
            )
            .bind::<Text, _>(table.sql())
            .bind::<BigInt, _>(i64::from(relation.id))
            .get_result(&mut self.conn)?;
            if same.value {
                return Ok(Some(table.topic));
            }
        }
        Ok(None)
    }

    /// Exports how much WAL the slot holds back, warning once when it is a lot.
    pub(super) fn measure_lag(&mut self) -> Result<(), DbError> {
        #[derive(QueryableByName)]
        struct Lag {
            #[diesel(sql_type = Nullable<BigInt>)]
            bytes: Option<i64>,
        }
        let lag: Vec<Lag> = diesel::sql_query(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint AS bytes \
             FROM pg_replication_slots WHERE slot_name = $1",
        )
        .bind::<Text, _>(&self.slot)
        .load(&mut self.conn)?;
        let bytes = lag.first().and_then(|l| l.bytes).unwrap_or(0);
        self.metrics.capture_slot_lag_bytes.set(bytes);
        if bytes > LAG_WARNING_BYTES && !self.lag_warned {
            tracing::warn!(slot = %self.slot, bytes, "the replication slot holds back over 1 GiB of WAL");
        }
        self.lag_warned = bytes > LAG_WARNING_BYTES;
        Ok(())
    }

    /// Joins `table` to the publication with its whole old row, replacing
    /// a trigger an earlier run installed, in one transaction: commits
    /// before it were captured by the trigger, commits after by the slot.
    pub(super) fn publish(&mut self, table: &TableRef) -> Result<(), DbError> {
        #[derive(QueryableByName)]
        struct State {
            #[diesel(sql_type = Bool)]
            triggered: bool,
            #[diesel(sql_type = Bool)]
            full: bool,
            #[diesel(sql_type = Bool)]
            published: bool,
        }
        let state: State = diesel::sql_query(
            "SELECT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname LIKE '\\_realtide\\_capture%' AND tgrelid = c.oid) AS triggered, \
             c.relreplident = 'f' AS full, \
             EXISTS (SELECT 1 FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid \
                     WHERE p.pubname = $2 AND pr.prrelid = c.oid) AS published \
             FROM pg_class c WHERE c.oid = to_regclass($1)",
        )
        .bind::<Text, _>(table.sql())
        .bind::<Text, _>(PUBLICATION)
        .get_result(&mut self.conn)?;
        if !state.triggered && state.full && state.published {
            return Ok(());
        }
        // Nodes watching the table at once take turns; the checks above are
        // repeated under the lock where repeating the change would fail.
        let t = table.sql();
        let mut script = format!("BEGIN; SELECT pg_advisory_xact_lock({SETUP_LOCK});");
        if state.triggered {
            for trigger in [
                "_realtide_capture",
                "_realtide_capture_insert",
                "_realtide_capture_update",
                "_realtide_capture_delete",
            ] {
                script.push_str(&format!("DROP TRIGGER IF EXISTS {trigger} ON {t};"));
            }
        }
        if !state.full {
            script.push_str(&format!("ALTER TABLE {t} REPLICA IDENTITY FULL;"));
        }
        if !state.published {
            script.push_str(&format!(
                "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_publication_rel pr \
                   JOIN pg_publication p ON p.oid = pr.prpubid \
                   WHERE p.pubname = '{PUBLICATION}' AND pr.prrelid = to_regclass('{t}')) THEN \
                   ALTER PUBLICATION \"{PUBLICATION}\" ADD TABLE {t}; END IF; END $$;"
            ));
        }
        script.push_str("COMMIT;");
        if let Err(e) = self.conn.batch_execute(&script) {
            let _ = self.conn.batch_execute("ROLLBACK");
            return Err(e.into());
        }
        tracing::info!(table = %t, "change capture installed (logical decoding)");
        Ok(())
    }
}
