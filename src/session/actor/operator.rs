//! What an operator asks of a session through the admin API: describe the
//! connection. (Ending it, 4003, is a [`crate::outbox::messages::Disconnect`].)

use super::SessionActor;
use crate::outbox::messages::ConnectionInfo;

impl SessionActor {
    pub(super) fn describe(&self) -> ConnectionInfo {
        let mut subscriptions: Vec<String> = self
            .outbox
            .subscriptions()
            .into_iter()
            .map(|(_, spelling)| spelling.to_string())
            .collect();
        subscriptions.sort();
        ConnectionInfo {
            conn: self.outbox.wire_id().to_string(),
            user_id: self.identity.user_id.as_deref().map(str::to_owned),
            subscriptions,
            tracked: self.tracked.len(),
            opened_at: self.opened_at,
            frames_in: self.frames_in,
            backlog_bytes: self.outbox.backlog_bytes(),
            transport: match self.outbox.is_event_stream() {
                true => "sse",
                false => "websocket",
            },
        }
    }
}
