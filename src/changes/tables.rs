//! What `--tables` lists: which table topics clients may subscribe to, and
//! the database table each one reads. An entry is `*` (every table of the
//! app's schema, under its own name), a table (`orders`), a table in another
//! PostgreSQL schema (`app.items`, topic `items`), or a topic naming its
//! table (`stock=app.items`). Topic names keep the protocol's table-name
//! rule, so a schema is configured here and never spelled by clients.

use std::collections::HashMap;

use crate::topic::name::{is_reserved_table, is_valid_table_name};

/// The table a table topic reads.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TableRef {
    /// The topic's name, which is also the table's name in the change log.
    pub topic: String,
    /// The PostgreSQL schema, when configured; else the app's own schema.
    pub schema: Option<String>,
    /// The table's name in its schema.
    pub name: String,
}

impl TableRef {
    /// One `--tables` entry: `orders`, `app.items` or `stock=app.items`.
    pub fn parse(entry: &str) -> Result<TableRef, String> {
        parse_entry(entry)
    }

    /// A table of the app's schema, read by the topic of its name.
    pub fn plain(name: &str) -> TableRef {
        TableRef {
            topic: name.to_string(),
            schema: None,
            name: name.to_string(),
        }
    }

    /// The table as SQL names it: `"app"."items"` or `"orders"`. The parts
    /// were validated as identifiers; quoting keeps their case.
    pub fn sql(&self) -> String {
        match &self.schema {
            Some(schema) => format!("\"{schema}\".\"{}\"", self.name),
            None => format!("\"{}\"", self.name),
        }
    }

    /// Whether the change log names this table by anything but its own
    /// name (a capture trigger must then be told the topic's name).
    pub fn renamed(&self) -> bool {
        self.schema.is_some() || self.topic != self.name
    }
}

/// The parsed `--tables`. The default serves no table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableList {
    every: bool,
    named: HashMap<String, TableRef>,
}

impl TableList {
    /// Parses a comma list of entries (see the module doc).
    pub fn parse(spec: &str) -> Result<TableList, String> {
        let mut list = TableList {
            every: false,
            named: HashMap::new(),
        };
        for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            if entry == "*" {
                list.every = true;
                continue;
            }
            let table = parse_entry(entry).map_err(|e| format!("--tables: {e}"))?;
            if list.named.values().any(|t| {
                (&t.schema, &t.name) == (&table.schema, &table.name) && t.topic != table.topic
            }) {
                return Err(format!(
                    "--tables: `{}` is listed under two topic names",
                    table.sql()
                ));
            }
            if list.named.get(&table.topic).is_some_and(|t| *t != table) {
                return Err(format!(
                    "--tables: topic `{}` names two tables",
                    table.topic
                ));
            }
            list.named.insert(table.topic.clone(), table);
        }
        if !list.every && list.named.is_empty() {
            return Err("--tables lists no table (use `*` for every table)".into());
        }
        Ok(list)
    }

    /// Whether clients may subscribe to the table topic `topic`.
    pub fn allows(&self, topic: &str) -> bool {
        self.resolve(topic).is_some()
    }

    /// The table topic `topic` reads, when it is allowed. Under `*`, a
    /// table of the app's schema that an entry serves under another name
    /// is not served under its own too (one table, one topic).
    pub fn resolve(&self, topic: &str) -> Option<TableRef> {
        match self.named.get(topic) {
            Some(table) => Some(table.clone()),
            None if self.every && !self.renames_plain(topic) => Some(TableRef::plain(topic)),
            None => None,
        }
    }

    /// Whether an entry serves the app's table `name` under another topic.
    fn renames_plain(&self, name: &str) -> bool {
        self.named
            .values()
            .any(|t| t.schema.is_none() && t.name == name && t.topic != name)
    }

    /// The tables that a table called `name` (in some schema) may be read
    /// as: the entries naming it, and under `*` the app's table of that name.
    pub fn candidates(&self, name: &str) -> Vec<TableRef> {
        let mut found: Vec<TableRef> = self
            .named
            .values()
            .filter(|t| t.name == name)
            .cloned()
            .collect();
        if self.every && !self.named.contains_key(name) && !self.renames_plain(name) {
            found.push(TableRef::plain(name));
        }
        found
    }

    /// The first entry that is not a plain table of the app's schema (SQLite
    /// has no schemas and reads every table under its own name).
    pub fn first_renamed(&self) -> Option<&TableRef> {
        let mut renamed: Vec<&TableRef> = self.named.values().filter(|t| t.renamed()).collect();
        renamed.sort_by(|a, b| a.topic.cmp(&b.topic));
        renamed.into_iter().next()
    }
}

/// `orders`, `app.items` or `stock=app.items`.
fn parse_entry(entry: &str) -> Result<TableRef, String> {
    let (topic, table) = match entry.split_once('=') {
        Some((topic, table)) => (Some(topic.trim()), table.trim()),
        None => (None, entry),
    };
    let (schema, name) = match table.split_once('.') {
        Some((schema, name)) => (Some(schema), name),
        None => (None, table),
    };
    let topic = topic.unwrap_or(name);
    for part in [Some(topic), schema, Some(name)].into_iter().flatten() {
        if !is_valid_table_name(part) {
            return Err(format!(
                "`{entry}`: `{part}` is not a name of [A-Za-z_][A-Za-z0-9_]{{0,62}}"
            ));
        }
    }
    if is_reserved_table(topic) || is_reserved_table(name) {
        return Err(format!("`{entry}` names a reserved table"));
    }
    Ok(TableRef {
        topic: topic.to_string(),
        schema: schema.map(str::to_string),
        name: name.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_of_the_app_schema_is_read_under_its_own_name() {
        let list = TableList::parse("*").unwrap();
        assert_eq!(list.resolve("orders"), Some(TableRef::plain("orders")));
        assert!(list.first_renamed().is_none());
    }

    #[test]
    fn a_schema_qualified_table_is_the_topic_of_its_name_or_of_the_configured_one() {
        let list = TableList::parse("orders, app.items, stock=inventory.items").unwrap();
        assert!(!list.allows("ghosts"));
        assert_eq!(list.resolve("orders").unwrap().sql(), "\"orders\"");
        let items = list.resolve("items").unwrap();
        assert_eq!(items.sql(), "\"app\".\"items\"");
        assert!(items.renamed());
        assert_eq!(
            list.resolve("stock").unwrap().sql(),
            "\"inventory\".\"items\""
        );
        assert_eq!(list.first_renamed().unwrap().topic, "items");
    }

    #[test]
    fn explicit_entries_beside_every_table_win_for_their_topic() {
        let list = TableList::parse("*,app.items").unwrap();
        assert_eq!(
            list.resolve("items").unwrap().schema.as_deref(),
            Some("app")
        );
        assert_eq!(list.resolve("orders"), Some(TableRef::plain("orders")));
    }

    #[test]
    fn a_table_served_under_another_name_is_not_served_under_its_own_too() {
        let list = TableList::parse("*,stock=items").unwrap();
        assert_eq!(list.resolve("stock").unwrap().name, "items");
        assert!(!list.allows("items"));
        assert_eq!(list.candidates("items").len(), 1);
        assert!(list.allows("orders"));
    }

    #[test]
    fn ambiguous_reserved_or_malformed_entries_are_refused() {
        for bad in [
            "app.items,other.items",
            "a=app.items,b=app.items",
            "app.items.x",
            "app.",
            "=items",
            "bad-name",
            "_realtide_changes",
            "app._realtide_meta",
            "",
            " , ",
        ] {
            assert!(TableList::parse(bad).is_err(), "{bad:?} was accepted");
        }
        // The same entry twice is one entry.
        assert!(TableList::parse("orders,orders").is_ok());
    }
}
