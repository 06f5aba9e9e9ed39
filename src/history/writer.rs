//! `HistoryWriter`: one thread per server that stores the persisted
//! publishes of every topic. Topics hand it their groups; it takes every
//! group waiting when it is free and stores them in one transaction, so
//! many topics storing at once share commits instead of queuing theirs on
//! the database (SQLite's one writer, PostgreSQL's pool). Each group is
//! answered with its ids only after that commit. If the shared transaction
//! fails, each group is tried again alone, so one topic's failure is only
//! its own. A cluster's topics also hand it the seqs the broker gave their
//! stored messages; those of every topic waiting share one transaction too.

use std::sync::mpsc;

use prometheus::IntCounter;
use tokio::sync::oneshot;

use super::{NewMessage, insert_all, set_seqs};
use crate::db::{Database, DbError};

/// Messages stored in one transaction at most: a bound on what one
/// commit waits for, far above a burst of one topic.
const MESSAGES_PER_COMMIT: usize = 20_000;

/// One topic's request: its items, and where the outcome goes once
/// committed.
struct Request<T, R> {
    items: Vec<T>,
    reply: oneshot::Sender<Result<R, DbError>>,
}

enum Job {
    /// Messages to store; answered with their ids, in order.
    Store(Request<NewMessage, Vec<String>>),
    /// Seqs for stored messages, by id.
    Number(Request<(String, u64), ()>),
}

/// The handle topics hold; cloning it is cheap.
#[derive(Clone)]
pub struct HistoryWriter {
    queue: mpsc::Sender<Job>,
}

impl HistoryWriter {
    /// Starts the writer's thread; it ends when every handle is dropped.
    /// `commits` counts the transactions that stored messages.
    pub fn start(db: Database, commits: IntCounter) -> std::io::Result<HistoryWriter> {
        let (queue, jobs) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("history-writer".into())
            .spawn(move || {
                while let Ok(first) = jobs.recv() {
                    let (mut groups, mut numberings) = (Vec::new(), Vec::new());
                    let mut count = 0;
                    let mut next = Some(first);
                    while let Some(job) = next.take() {
                        match job {
                            Job::Store(group) => {
                                count += group.items.len();
                                groups.push(group);
                            }
                            Job::Number(numbering) => {
                                count += numbering.items.len();
                                numberings.push(numbering);
                            }
                        }
                        if count < MESSAGES_PER_COMMIT {
                            next = jobs.try_recv().ok();
                        }
                    }
                    all_or_each(
                        numberings,
                        |numbered| db.blocking(|conn| set_seqs(conn, numbered)),
                        |_, _| (),
                    );
                    all_or_each(
                        groups,
                        |messages| {
                            let stored = db.blocking(|conn| insert_all(conn, messages));
                            if stored.is_ok() {
                                commits.inc();
                            }
                            stored
                        },
                        |ids, len| ids.drain(..len).collect(),
                    );
                }
            })?;
        Ok(HistoryWriter { queue })
    }

    /// Stores `messages` atomically; answers their ids, in order, once
    /// they are committed.
    pub async fn store(&self, messages: Vec<NewMessage>) -> Result<Vec<String>, DbError> {
        self.ask(messages, Job::Store).await
    }

    /// Gives stored messages their seqs; answers once committed.
    pub async fn number(&self, numbered: Vec<(String, u64)>) -> Result<(), DbError> {
        self.ask(numbered, Job::Number).await
    }

    async fn ask<T, R>(&self, items: Vec<T>, job: fn(Request<T, R>) -> Job) -> Result<R, DbError> {
        let stopped = || DbError::Task("the history writer stopped".into());
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(job(Request { items, reply }))
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

/// Runs `work` once over the items of every request, moved into one list
/// (one transaction); if that fails, once per request, so one topic's
/// failure is only its own. `share` takes a request's part of the outcome,
/// in order, by its number of items.
fn all_or_each<T, R, O>(
    requests: Vec<Request<T, R>>,
    work: impl Fn(&[T]) -> Result<O, DbError>,
    share: impl Fn(&mut O, usize) -> R,
) {
    if requests.is_empty() {
        return;
    }
    let alone = requests.len() == 1;
    // Moved, not copied, into one list (a lone request's is that list);
    // each request is its run of it.
    let mut all: Vec<T> = Vec::new();
    let mut waiting = Vec::with_capacity(requests.len());
    for request in requests {
        waiting.push((request.items.len(), request.reply));
        match all.is_empty() {
            true => all = request.items,
            false => all.extend(request.items),
        }
    }
    match work(&all) {
        Ok(mut outcome) => {
            for (len, reply) in waiting {
                let _ = reply.send(Ok(share(&mut outcome, len)));
            }
        }
        Err(error) if alone => {
            if let Some((_, reply)) = waiting.pop() {
                let _ = reply.send(Err(error));
            }
        }
        Err(_) => {
            let mut rest = all.as_slice();
            for (len, reply) in waiting {
                let (mine, after) = rest.split_at(len);
                rest = after;
                let _ = reply.send(work(mine).map(|mut outcome| share(&mut outcome, len)));
            }
        }
    }
}
