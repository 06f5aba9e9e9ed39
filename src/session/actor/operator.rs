//! What an operator asks of a session through the admin API: describe the
//! connection. (Ending it, 4003, is a [`crate::session::messages::Disconnect`].)

use actix::prelude::*;

use super::SessionActor;
use crate::session::messages::{ConnectionInfo, Describe};

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
            conn: self.wire_id.to_string(),
            user_id: self.identity.user_id.as_deref().map(str::to_owned),
            subscriptions,
            tracked: self.tracked.len(),
            opened_at: self.opened_at,
            frames_in: self.frames_in,
            backlog_bytes: self.outbox.backlog_bytes(),
        })
    }
}
