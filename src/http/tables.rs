//! A table's rows over HTTP, for pages rendered on a server:
//! `GET /api/realtime/tables/<table>?filter=<JSON>` answers the rows that
//! match (the client's filter and the token's forced one) at one cut, with
//! its `seq` and `epoch`, read as a `snapshot: true` subscribe reads them.
//! A page that then subscribes with `since: seq` and that `epoch` gets
//! exactly the later changes. Credentials and rules are the socket's.

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use serde_json::Value;

use super::ApiError;
use crate::changes::Filter;
use crate::protocol::ProtocolError;
use crate::registry::ReadTableOf;
use crate::state::AppState;
use crate::topic::messages::{ReadTable, TableRows};
use crate::topic::{TopicKind, TopicName};

#[derive(Debug, Deserialize)]
pub struct TableQuery {
    /// A JSON object, as a subscribe's `filter`.
    filter: Option<String>,
    token: Option<String>,
}

/// `GET /api/realtime/tables/{table}`
pub async fn rows(
    req: HttpRequest,
    table: web::Path<String>,
    query: web::Query<TableQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let query = query.into_inner();
    let identity = super::client_identity(&req, query.token.as_deref(), &state)?;
    let name = TopicName::parse(&table, &state.config.project_id)?;
    if name.kind() != TopicKind::Table {
        return Err(ProtocolError::bad_request(format!(
            "`{name}` is a pub/sub topic, not a table"
        ))
        .into());
    }
    if !state.table_allowed(name.as_str()) {
        return Err(ProtocolError::forbidden(format!(
            "table `{name}` is not served (see --tables)"
        ))
        .into());
    }
    if !identity.grants.can_subscribe(name.as_str()) {
        return Err(ProtocolError::forbidden(format!(
            "your token does not allow reading `{name}`"
        ))
        .into());
    }
    let own = match query.filter.as_deref() {
        None => Filter::default(),
        Some(text) => match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(filter)) => Filter::parse(&filter)?,
            _ => {
                return Err(ProtocolError::bad_request("`filter` must be a JSON object").into());
            }
        },
    };
    let forced = Filter::forced(
        identity.grants.forced_filters.get(name.as_str()),
        name.as_str(),
    )?;
    let (reply, answer) = tokio::sync::oneshot::channel();
    state.registry.do_send(ReadTableOf {
        topic: name.clone(),
        read: ReadTable {
            filter: forced.and(own),
            reply,
        },
    });
    let rows = answer
        .await
        .map_err(|_| ProtocolError::unavailable("the topic stopped before answering"))??;
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .body(body(name.as_str(), &rows)))
}

/// The answer's JSON, each row's text spliced in as it is.
fn body(topic: &str, rows: &TableRows) -> String {
    let mut body = String::from(r#"{"topic":"#);
    body.push_str(&Value::from(topic).to_string());
    body.push_str(&format!(r#","seq":{},"epoch":"#, rows.seq));
    body.push_str(&Value::from(rows.epoch.as_str()).to_string());
    body.push_str(r#","key":"#);
    body.push_str(&Value::from(rows.key.clone()).to_string());
    body.push(',');
    crate::protocol::server::push_rows(&mut body, &rows.rows);
    body.push('}');
    body
}
