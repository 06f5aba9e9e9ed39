//! What an operator asks of a session through the admin API: describe the
//! connection, or end it (4003).

use actix::prelude::*;
use actix_web_actors::ws::CloseCode;

use super::SessionActor;
use crate::protocol::close;
use crate::session::messages::{ConnectionInfo, Describe, Kick};

impl Handler<Describe> for SessionActor {
    type Result = MessageResult<Describe>;

    fn handle(&mut self, _msg: Describe, _ctx: &mut Self::Context) -> Self::Result {
        let mut subscriptions: Vec<String> = self
            .outbox
            .subscriptions()
            .into_iter()
            .map(|(_, spelling)| spelling.to_string())
            .collect();
        subscriptions.sort();
        MessageResult(ConnectionInfo {
            conn: self.wire_id.clone(),
            user_id: self.identity.user_id.as_deref().map(str::to_owned),
            subscriptions,
            tracked: self.tracked.len(),
            opened_at: self.opened_at,
            frames_in: self.frames_in,
            backlog_bytes: self.outbox.backlog_bytes(),
        })
    }
}

impl Handler<Kick> for SessionActor {
    type Result = ();

    fn handle(&mut self, _msg: Kick, ctx: &mut Self::Context) {
        tracing::info!(conn = %self.wire_id, "disconnected by an operator");
        self.close(
            ctx,
            CloseCode::Other(close::DISCONNECTED),
            "disconnected by an operator",
        );
    }
}
