//! Row filters for table subscriptions: `{"status":"shipped"}` is equality,
//! `{"amount":{"gt":100,"lt":500}}` holds when every operator holds. Values
//! compare as JSON: numbers numerically, strings by code point, `null` equals
//! only `null`, and values of different types are never equal nor ordered.

use std::cmp::Ordering;

use serde_json::{Map, Value};
use thin_vec::ThinVec;

use crate::protocol::ProtocolError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    Neq,
    Lt,
    Lte,
    Gt,
    Gte,
    In,
}

impl Op {
    fn parse(name: &str) -> Option<Op> {
        Some(match name {
            "eq" => Op::Eq,
            "neq" => Op::Neq,
            "lt" => Op::Lt,
            "lte" => Op::Lte,
            "gt" => Op::Gt,
            "gte" => Op::Gte,
            "in" => Op::In,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Condition {
    column: String,
    op: Op,
    value: Value,
}

/// Every condition must hold (an empty filter matches every row).
///
/// A `ThinVec` (one pointer, no allocation while empty), not a `Vec`: every
/// subscription holds one, usually empty, and an idle subscription should
/// cost little.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    conditions: ThinVec<Condition>,
}

impl Filter {
    /// Parses a filter object; an unknown operator or a malformed entry is `bad_request`.
    /// A token's forced filter for `table` (its `realtime.filters` entry,
    /// `forced`): none when it names none.
    pub fn forced(forced: Option<&Value>, table: &str) -> Result<Filter, ProtocolError> {
        match forced {
            None => Ok(Filter::default()),
            Some(Value::Object(forced)) => Filter::parse(forced),
            Some(_) => Err(ProtocolError::forbidden(format!(
                "your token's filter for `{table}` is not an object"
            ))),
        }
    }

    pub fn parse(filter: &Map<String, Value>) -> Result<Filter, ProtocolError> {
        let mut conditions = Vec::new();
        for (column, spec) in filter {
            match spec {
                Value::Object(ops) => {
                    if ops.is_empty() {
                        return Err(ProtocolError::bad_request(format!(
                            "filter on `{column}` has no operator"
                        )));
                    }
                    for (name, value) in ops {
                        let op = Op::parse(name).ok_or_else(|| {
                            ProtocolError::bad_request(format!(
                                "unknown filter operator `{name}` (eq, neq, lt, lte, gt, gte, in)"
                            ))
                        })?;
                        if op == Op::In && !value.is_array() {
                            return Err(ProtocolError::bad_request(format!(
                                "`in` on `{column}` takes an array"
                            )));
                        }
                        conditions.push(Condition {
                            column: column.clone(),
                            op,
                            value: value.clone(),
                        });
                    }
                }
                value => conditions.push(Condition {
                    column: column.clone(),
                    op: Op::Eq,
                    value: value.clone(),
                }),
            }
        }
        Ok(Filter {
            conditions: conditions.into(),
        })
    }

    /// Both filters must hold: a token's forced filter and the client's own.
    pub fn and(self, other: Filter) -> Filter {
        if other.is_empty() {
            return self;
        }
        let mut conditions = self.conditions;
        conditions.extend(other.conditions);
        Filter { conditions }
    }

    pub fn is_empty(&self) -> bool {
        self.conditions.is_empty()
    }

    /// The first column this filter names that is not in `columns`.
    pub fn unknown_column<'a>(&'a self, columns: &[String]) -> Option<&'a str> {
        self.conditions
            .iter()
            .map(|c| c.column.as_str())
            .find(|c| !columns.iter().any(|known| known == c))
    }

    pub fn matches(&self, row: &Map<String, Value>) -> bool {
        self.conditions.iter().all(|c| match row.get(&c.column) {
            Some(value) => holds(c.op, value, &c.value),
            None => false,
        })
    }
}

fn holds(op: Op, actual: &Value, wanted: &Value) -> bool {
    match op {
        Op::Eq => json_eq(actual, wanted),
        Op::Neq => !json_eq(actual, wanted),
        Op::In => wanted
            .as_array()
            .is_some_and(|options| options.iter().any(|w| json_eq(actual, w))),
        Op::Lt => json_cmp(actual, wanted) == Some(Ordering::Less),
        Op::Lte => matches!(
            json_cmp(actual, wanted),
            Some(Ordering::Less | Ordering::Equal)
        ),
        Op::Gt => json_cmp(actual, wanted) == Some(Ordering::Greater),
        Op::Gte => matches!(
            json_cmp(actual, wanted),
            Some(Ordering::Greater | Ordering::Equal)
        ),
    }
}

fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(_), Value::Number(_)) => json_cmp(a, b) == Some(Ordering::Equal),
        _ => a == b,
    }
}

/// Orders numbers with numbers and strings with strings; nothing else.
fn json_cmp(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            if let (Some(x), Some(y)) = (x.as_i64(), y.as_i64()) {
                Some(x.cmp(&y))
            } else if let (Some(x), Some(y)) = (x.as_u64(), y.as_u64()) {
                Some(x.cmp(&y))
            } else {
                x.as_f64()?.partial_cmp(&y.as_f64()?)
            }
        }
        // Rust orders UTF-8 strings by byte, which is code point order.
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn filter(v: Value) -> Result<Filter, ProtocolError> {
        Filter::parse(v.as_object().unwrap())
    }

    fn row(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn equality_and_operators() {
        let f = filter(json!({"status": "shipped", "amount": {"gt": 100, "lte": 500}})).unwrap();
        assert!(f.matches(&row(json!({"status": "shipped", "amount": 101}))));
        assert!(f.matches(&row(json!({"status": "shipped", "amount": 500.0}))));
        assert!(!f.matches(&row(json!({"status": "shipped", "amount": 100}))));
        assert!(!f.matches(&row(json!({"status": "pending", "amount": 200}))));
    }

    #[test]
    fn integers_and_reals_compare_numerically() {
        let f = filter(json!({"n": {"eq": 25}})).unwrap();
        assert!(f.matches(&row(json!({"n": 25.0}))));
        let big = filter(json!({"n": {"lt": 9007199254740993i64}})).unwrap();
        assert!(
            big.matches(&row(json!({"n": 9007199254740992i64}))),
            "exact for large integers"
        );
    }

    #[test]
    fn different_types_are_never_equal_nor_ordered() {
        let f = filter(json!({"n": {"lt": 5}})).unwrap();
        assert!(!f.matches(&row(json!({"n": "1"}))));
        assert!(!f.matches(&row(json!({"n": null}))));
        assert!(
            filter(json!({"n": {"neq": 5}}))
                .unwrap()
                .matches(&row(json!({"n": "5"})))
        );
        assert!(
            filter(json!({"n": null}))
                .unwrap()
                .matches(&row(json!({"n": null})))
        );
        assert!(
            !filter(json!({"n": null}))
                .unwrap()
                .matches(&row(json!({"n": 0})))
        );
    }

    #[test]
    fn strings_order_by_code_point_and_in_takes_a_list() {
        assert!(
            filter(json!({"s": {"gt": "Z"}}))
                .unwrap()
                .matches(&row(json!({"s": "a"})))
        );
        assert!(
            filter(json!({"s": {"lt": "é"}}))
                .unwrap()
                .matches(&row(json!({"s": "z"})))
        );
        let f = filter(json!({"s": {"in": ["a", "b"]}})).unwrap();
        assert!(f.matches(&row(json!({"s": "b"}))));
        assert!(!f.matches(&row(json!({"s": "c"}))));
    }

    #[test]
    fn malformed_filters_are_refused() {
        assert!(filter(json!({"a": {"like": "x"}})).is_err());
        assert!(filter(json!({"a": {"in": 3}})).is_err());
        assert!(filter(json!({"a": {}})).is_err());
    }

    #[test]
    fn unknown_columns_are_found() {
        let f = filter(json!({"a": 1, "zz": 2})).unwrap();
        assert_eq!(f.unknown_column(&["a".into(), "b".into()]), Some("zz"));
    }
}
