//! `HistoryWriter`: one thread per server that stores the persisted
//! publishes of every topic. Topics hand it their groups; it takes every
//! group waiting when it is free and stores them in one transaction, so
//! many topics storing at once share commits instead of queuing theirs on
//! the database (SQLite's one writer, PostgreSQL's pool). Each group is
//! answered with its ids only after that commit. If the shared transaction
//! fails, each group is tried again alone, so one topic's failure is only
//! its own.

use std::sync::mpsc;

use prometheus::IntCounter;
use tokio::sync::oneshot;

use super::{NewMessage, insert_all};
use crate::db::{Database, DbError};

/// Messages stored in one transaction at most: a bound on what one
/// commit waits for, far above a burst of one topic.
const MESSAGES_PER_COMMIT: usize = 20_000;

struct Group {
    messages: Vec<NewMessage>,
    reply: oneshot::Sender<Result<Vec<String>, DbError>>,
}

/// The handle topics hold; cloning it is cheap.
#[derive(Clone)]
pub struct HistoryWriter {
    queue: mpsc::Sender<Group>,
}

impl HistoryWriter {
    /// Starts the writer's thread; it ends when every handle is dropped.
    /// `commits` counts the transactions that stored messages.
    pub fn start(db: Database, commits: IntCounter) -> std::io::Result<HistoryWriter> {
        let (queue, groups) = mpsc::channel::<Group>();
        std::thread::Builder::new()
            .name("history-writer".into())
            .spawn(move || {
                while let Ok(first) = groups.recv() {
                    let mut taken = vec![first];
                    let mut count = taken[0].messages.len();
                    while count < MESSAGES_PER_COMMIT {
                        match groups.try_recv() {
                            Ok(group) => {
                                count += group.messages.len();
                                taken.push(group);
                            }
                            Err(_) => break,
                        }
                    }
                    store(&db, taken, &commits);
                }
            })?;
        Ok(HistoryWriter { queue })
    }

    /// Stores `messages` atomically; answers their ids, in order, once
    /// they are committed.
    pub async fn store(&self, messages: Vec<NewMessage>) -> Result<Vec<String>, DbError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Group { messages, reply })
            .map_err(|_| DbError::Task("the history writer stopped".into()))?;
        answer
            .await
            .map_err(|_| DbError::Task("the history writer stopped".into()))?
    }
}

/// One transaction for all `groups`; alone each when that fails.
fn store(db: &Database, groups: Vec<Group>, commits: &IntCounter) {
    let store_one = |messages: &[NewMessage]| {
        let stored = db.blocking(|conn| insert_all(conn, messages));
        if stored.is_ok() {
            commits.inc();
        }
        stored
    };
    if let [_] = groups.as_slice() {
        for group in groups {
            let _ = group.reply.send(store_one(&group.messages));
        }
        return;
    }
    // Moved, not copied, into one list; each group is its run of it.
    let mut all = Vec::with_capacity(groups.iter().map(|g| g.messages.len()).sum());
    let mut waiting = Vec::with_capacity(groups.len());
    for group in groups {
        waiting.push((group.messages.len(), group.reply));
        all.extend(group.messages);
    }
    match store_one(&all) {
        Ok(ids) => {
            let mut ids = ids.into_iter();
            for (len, reply) in waiting {
                let _ = reply.send(Ok(ids.by_ref().take(len).collect()));
            }
        }
        Err(_) => {
            let mut rest = all.as_slice();
            for (len, reply) in waiting {
                let (mine, after) = rest.split_at(len);
                rest = after;
                let _ = reply.send(store_one(mine));
            }
        }
    }
}
