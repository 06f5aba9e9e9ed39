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

struct Group {
    messages: Vec<NewMessage>,
    reply: oneshot::Sender<Result<Vec<String>, DbError>>,
}

/// Seqs for stored messages, by id.
struct Numbering {
    numbered: Vec<(String, u64)>,
    reply: oneshot::Sender<Result<(), DbError>>,
}

enum Job {
    Store(Group),
    Number(Numbering),
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
                                count += group.messages.len();
                                groups.push(group);
                            }
                            Job::Number(numbering) => {
                                count += numbering.numbered.len();
                                numberings.push(numbering);
                            }
                        }
                        if count < MESSAGES_PER_COMMIT {
                            next = jobs.try_recv().ok();
                        }
                    }
                    if !numberings.is_empty() {
                        number(&db, numberings);
                    }
                    if !groups.is_empty() {
                        store(&db, groups, &commits);
                    }
                }
            })?;
        Ok(HistoryWriter { queue })
    }

    /// Stores `messages` atomically; answers their ids, in order, once
    /// they are committed.
    pub async fn store(&self, messages: Vec<NewMessage>) -> Result<Vec<String>, DbError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Job::Store(Group { messages, reply }))
            .map_err(|_| DbError::Task("the history writer stopped".into()))?;
        answer
            .await
            .map_err(|_| DbError::Task("the history writer stopped".into()))?
    }

    /// Gives stored messages their seqs; answers once committed.
    pub async fn number(&self, numbered: Vec<(String, u64)>) -> Result<(), DbError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Job::Number(Numbering { numbered, reply }))
            .map_err(|_| DbError::Task("the history writer stopped".into()))?;
        answer
            .await
            .map_err(|_| DbError::Task("the history writer stopped".into()))?
    }
}

/// One transaction for every numbering waiting; alone each when that fails.
fn number(db: &Database, numberings: Vec<Numbering>) {
    if let [_] = numberings.as_slice() {
        for numbering in numberings {
            let numbered = db.blocking(|conn| set_seqs(conn, &numbering.numbered));
            let _ = numbering.reply.send(numbered);
        }
        return;
    }
    let all: Vec<(String, u64)> = numberings
        .iter()
        .flat_map(|n| n.numbered.iter().cloned())
        .collect();
    match db.blocking(|conn| set_seqs(conn, &all)) {
        Ok(()) => {
            for numbering in numberings {
                let _ = numbering.reply.send(Ok(()));
            }
        }
        Err(_) => {
            for numbering in numberings {
                let numbered = db.blocking(|conn| set_seqs(conn, &numbering.numbered));
                let _ = numbering.reply.send(numbered);
            }
        }
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
