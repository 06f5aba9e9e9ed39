//! Requests the app's backend decides (the subscribe and publish proxies,
//! PROTOCOL §10). Each call runs while the session goes on serving the
//! connection's other requests, and calls of different connections run
//! side by side; the outcomes apply in the order the requests came, so one
//! connection's publishes keep their order whatever each call takes.

use std::collections::VecDeque;
use std::future::Future;

use actix::prelude::*;

use super::{Ctx, SessionActor};
use crate::protocol::{ErrorCode, ProtocolError};

/// Decisions one connection may have waiting on the backend: past them, a
/// request is refused at once, so a slow backend costs bounded memory.
pub const MAX_WAITING: usize = 256;

type Apply = Box<dyn FnOnce(&mut SessionActor, &mut Ctx)>;

/// The connection's requests waiting on the backend, in arrival order:
/// each slot fills when its answer comes, and the filled ones at the front
/// apply.
#[derive(Default)]
pub struct Decisions {
    /// The number of the request in the front slot.
    first: u64,
    slots: VecDeque<Option<Apply>>,
}

impl SessionActor {
    /// Runs `call` (a proxy call), then `then` with its answer, after every
    /// earlier request that waits on the backend has applied.
    pub(super) fn after_backend<T: 'static>(
        &mut self,
        ctx: &mut Ctx,
        call: impl Future<Output = T> + 'static,
        then: impl FnOnce(&mut SessionActor, &mut Ctx, T) + 'static,
    ) -> Result<(), ProtocolError> {
        if self.decisions.slots.len() >= MAX_WAITING {
            return Err(ProtocolError::new(
                ErrorCode::RateLimited,
                format!("{MAX_WAITING} requests already wait on the app's backend"),
            ));
        }
        let number = self.decisions.first + self.decisions.slots.len() as u64;
        self.decisions.slots.push_back(None);
        ctx.spawn(call.into_actor(self).map(move |answer, session, ctx| {
            let decisions = &mut session.decisions;
            let index = (number - decisions.first) as usize;
            decisions.slots[index] = Some(Box::new(move |s, c| then(s, c, answer)));
            while let Some(Some(_)) = session.decisions.slots.front() {
                let apply = session.decisions.slots.pop_front().flatten();
                session.decisions.first += 1;
                if let Some(apply) = apply {
                    apply(session, ctx);
                }
            }
        }));
        Ok(())
    }
}
