//! A changed row as it travels from the change log to clients: the text of
//! one JSON object, checked once when it is read and written into frames
//! as it is. Its values are parsed only when a subscriber's filter asks,
//! at most once per change however many filters ask.

use std::fmt;
use std::sync::OnceLock;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

#[derive(Clone)]
pub struct Row {
    json: Box<RawValue>,
    values: OnceLock<Map<String, Value>>,
}

impl Row {
    /// The row from its JSON text, or `None` unless the text is one JSON object.
    pub fn from_json(text: String) -> Option<Row> {
        if !text.trim_start().starts_with('{') {
            return None;
        }
        let json = RawValue::from_string(text).ok()?;
        Some(Row {
            json,
            values: OnceLock::new(),
        })
    }

    /// The row from its columns, written in their order.
    pub fn from_columns(columns: Vec<(String, Box<RawValue>)>) -> Row {
        let mut text = String::from("{");
        for (i, (column, value)) in columns.iter().enumerate() {
            if i > 0 {
                text.push(',');
            }
            text.push_str(&Value::from(column.as_str()).to_string());
            text.push(':');
            text.push_str(value.get());
        }
        text.push('}');
        Row {
            json: RawValue::from_string(text).expect("serde_json writes valid JSON"),
            values: OnceLock::new(),
        }
    }

    /// The row's JSON text, columns in the order the log holds them.
    pub fn json(&self) -> &str {
        self.json.get()
    }

    /// The row's values by column, parsed on first use.
    pub fn values(&self) -> &Map<String, Value> {
        self.values
            .get_or_init(|| serde_json::from_str(self.json.get()).unwrap_or_default())
    }
}

impl PartialEq for Row {
    fn eq(&self, other: &Row) -> bool {
        self.json.get() == other.json.get()
    }
}

impl fmt::Debug for Row {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.json.get())
    }
}

/// A JSON object's members in the order it spells them (a `Map` sorts
/// them), each value as its text.
pub struct Columns(pub Vec<(String, Box<RawValue>)>);

impl<'de> Deserialize<'de> for Columns {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct InOrder;
        impl<'de> Visitor<'de> for InOrder {
            type Value = Columns;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Columns, A::Error> {
                let mut columns = Vec::with_capacity(map.size_hint().unwrap_or(0));
                while let Some(member) = map.next_entry()? {
                    columns.push(member);
                }
                Ok(Columns(columns))
            }
        }
        deserializer.deserialize_map(InOrder)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_row_keeps_its_text_and_parses_its_values_when_asked() {
        let row = Row::from_json(r#" {"id":2,"name":"a\"b","at":null} "#.into()).unwrap();
        assert_eq!(row.json(), r#"{"id":2,"name":"a\"b","at":null}"#);
        assert_eq!(
            Value::Object(row.values().clone()),
            json!({"id": 2, "name": "a\"b", "at": null})
        );
    }

    #[test]
    fn only_one_whole_json_object_is_a_row() {
        for text in [
            "",
            "[1]",
            "1",
            r#"{"a":1"#,
            r#"{"a":1} {"b":2}"#,
            r#"{"a":}"#,
        ] {
            assert!(Row::from_json(text.into()).is_none(), "{text:?}");
        }
    }

    #[test]
    fn columns_keep_their_order_both_ways() {
        let Columns(columns) = serde_json::from_str(r#"{"z":1,"a":[true],"m":{"k":"v"}}"#).unwrap();
        let names: Vec<&str> = columns.iter().map(|(c, _)| c.as_str()).collect();
        assert_eq!(names, ["z", "a", "m"]);
        assert_eq!(
            Row::from_columns(columns).json(),
            r#"{"z":1,"a":[true],"m":{"k":"v"}}"#
        );
        let Columns(columns) = serde_json::from_str(r#"{"n": 1.50, "t": "x"}"#).unwrap();
        assert_eq!(
            Row::from_columns(columns).json(),
            r#"{"n":1.50,"t":"x"}"#,
            "values keep their spelling"
        );
    }
}
