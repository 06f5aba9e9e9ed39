//! The session actor's context: actix's own context machinery
//! ([`ContextParts`], [`ContextFut`]), run inside the connection's task
//! rather than spawned on its own.
//!
//! Why not actix-web-actors' `WebsocketContext`: it decodes the client's
//! bytes itself, keeps going after a framing error (so a bad header was
//! decoded again on every poll, and the connection lingered), and it writes
//! the session's control frames into a buffer of its own, behind which a
//! pong waited while replies went straight to the socket. Here the session
//! reads whole messages from [`crate::http::inbound::Incoming`] and writes
//! every frame, control frames included, through its outbox.

use actix::dev::{
    AsyncContextParts, ContextFut, ContextParts, Envelope, Mailbox, OneshotSender, ToEnvelope,
};
use actix::prelude::*;
use futures_util::Stream;

/// A session actor's execution context.
pub struct SessionContext<A>
where
    A: Actor<Context = SessionContext<A>>,
{
    parts: ContextParts<A>,
}

/// The running session: a future the connection's task polls; it ends
/// when the actor has stopped.
pub type SessionTask<A> = ContextFut<A, SessionContext<A>>;

/// Starts `actor` with `incoming` as its stream of client messages.
pub fn start<A, S>(actor: A, incoming: S) -> SessionTask<A>
where
    A: Actor<Context = SessionContext<A>> + StreamHandler<S::Item>,
    S: Stream + 'static,
{
    let mailbox = Mailbox::default();
    let mut ctx = SessionContext {
        parts: ContextParts::new(mailbox.sender_producer()),
    };
    ctx.add_stream(incoming);
    ContextFut::new(ctx, actor, mailbox)
}

impl<A> ActorContext for SessionContext<A>
where
    A: Actor<Context = Self>,
{
    fn stop(&mut self) {
        self.parts.stop();
    }

    fn terminate(&mut self) {
        self.parts.terminate();
    }

    fn state(&self) -> ActorState {
        self.parts.state()
    }
}

impl<A> AsyncContext<A> for SessionContext<A>
where
    A: Actor<Context = Self>,
{
    fn spawn<F>(&mut self, fut: F) -> SpawnHandle
    where
        F: ActorFuture<A, Output = ()> + 'static,
    {
        self.parts.spawn(fut)
    }

    fn wait<F>(&mut self, fut: F)
    where
        F: ActorFuture<A, Output = ()> + 'static,
    {
        self.parts.wait(fut);
    }

    fn waiting(&self) -> bool {
        self.parts.waiting()
            || matches!(
                self.parts.state(),
                ActorState::Stopping | ActorState::Stopped
            )
    }

    fn cancel_future(&mut self, handle: SpawnHandle) -> bool {
        self.parts.cancel_future(handle)
    }

    fn address(&self) -> Addr<A> {
        self.parts.address()
    }
}

impl<A> AsyncContextParts<A> for SessionContext<A>
where
    A: Actor<Context = Self>,
{
    fn parts(&mut self) -> &mut ContextParts<A> {
        &mut self.parts
    }
}

impl<A, M> ToEnvelope<A, M> for SessionContext<A>
where
    A: Actor<Context = SessionContext<A>> + Handler<M>,
    M: Message + Send + 'static,
    M::Result: Send,
{
    fn pack(msg: M, tx: Option<OneshotSender<M::Result>>) -> Envelope<A> {
        Envelope::new(msg, tx)
    }
}
