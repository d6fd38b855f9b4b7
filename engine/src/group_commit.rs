//! Group commit for [`crate::Engine::enqueue`]: concurrent single enqueues made outside any
//! transaction of the caller's are written together, in one commit (one INSERT, or one
//! transaction when unique keys need statements of their own), and each caller returns
//! once that commit is done (so durability is unchanged: an `Ok` means committed). A
//! commit costs far more than an insert (a WAL flush), so eight producers enqueueing one
//! job each pay for one commit, not eight.
//!
//! Writers pull what is queued when they are free: a lone enqueue is written at once, as
//! before; under load each transaction takes everything that queued while the previous one
//! committed. Postgres gets a few writers (commits of different connections overlap),
//! SQLite one (it has one writer anyway). A batch the database refuses is written again one
//! job per transaction, so one bad row fails only its own caller.

use std::ops::ControlFlow;

use tokio::sync::oneshot;

use crate::batch::Batcher;
use crate::db::Backend;
use crate::engine::{EncodedJob, Engine, WeakEngine};
use crate::error::{Error, Result};
use crate::job::Enqueued;
use crate::storage::{self, InsertJob, Notify};

/// Most jobs one group writes (within one INSERT of [`storage::insert_jobs`]).
const MAX_GROUP: usize = 256;
const _: () = assert!(MAX_GROUP <= storage::INSERT_CHUNK);

/// A job waiting for its group's commit.
pub(crate) struct Queued {
    pub(crate) job: EncodedJob,
    pub(crate) reply: oneshot::Sender<Result<Enqueued>>,
}

/// The queue of an engine's group-committed enqueues (its writers start on first use).
pub(crate) struct GroupCommit {
    queue: Batcher<Queued>,
}

impl GroupCommit {
    /// Starts the writers of `engine` (needs a tokio runtime).
    pub(crate) fn start(engine: &Engine) -> Self {
        let writers = match engine.backend() {
            Backend::Sqlite => 1,
            Backend::Postgres => 4,
        };
        // The writers hold a weak handle: they end when the engine is dropped.
        let weak = engine.downgrade();
        let queue = Batcher::start(writers, MAX_GROUP, move |group| commit(weak.clone(), group));
        Self { queue }
    }

    /// Queues `job`; its reply comes once its group has committed. False when the
    /// writers are gone (the engine is being dropped).
    pub(crate) fn send(&self, job: Queued) -> bool {
        self.queue.send(job)
    }
}

/// Writes `group` and answers each of its callers.
async fn commit(engine: WeakEngine, group: Vec<Queued>) -> ControlFlow<()> {
    let Some(engine) = engine.upgrade() else {
        for job in group {
            let _ = job.reply.send(Err(Error::ShuttingDown));
        }
        return ControlFlow::Break(());
    };
    match write(&engine, &group).await {
        Ok(results) => reply(group, results),
        Err(e) if group.len() == 1 => reply(group, vec![Err(e)]),
        Err(_) => {
            // One transaction each: a bad row fails only its own caller.
            for job in group {
                let result = write(&engine, std::slice::from_ref(&job))
                    .await
                    .and_then(|mut r| r.pop().unwrap_or(Err(Error::ShuttingDown)));
                let _ = job.reply.send(result);
            }
        }
    }
    ControlFlow::Continue(())
}

fn reply(group: Vec<Queued>, results: Vec<Result<Enqueued>>) {
    for (job, result) in group.into_iter().zip(results) {
        let _ = job.reply.send(result);
    }
}

/// Writes `group`: every row or none. `Err` when the write failed.
///
/// A group without unique keys is one INSERT, atomic on its own: it runs outside any
/// transaction, one round trip in all (a lone enqueue's whole write). A group with keys
/// needs several statements, so it runs in a transaction: the others in one statement, a
/// keyed one on its own, as it may meet its key's holder and report it as `Existing`.
async fn write(engine: &Engine, group: &[Queued]) -> Result<Vec<Result<Enqueued>>> {
    let rows: Vec<InsertJob<'_>> = group.iter().map(|q| q.job.row()).collect();
    if rows.iter().all(|row| row.unique_key.is_none()) {
        let now = engine.clock().now_ms();
        let mut conn = engine.db().acquire().await?;
        let ids = storage::insert_jobs(&mut conn, &rows, now, Notify::AfterCommit).await?;
        drop(conn);
        for kind in storage::due_kinds(&rows, now) {
            engine.wake_everywhere(kind);
        }
        return Ok(ids
            .into_iter()
            .map(|id| Ok(Enqueued::Inserted(id)))
            .collect());
    }
    let mut tx = engine.begin().await?;
    let plain: Vec<InsertJob<'_>> = rows
        .iter()
        .filter(|row| row.unique_key.is_none())
        .cloned()
        .collect();
    let mut ids = tx.insert_rows(&plain).await?.into_iter();
    let mut results = Vec::with_capacity(group.len());
    for row in &rows {
        results.push(Ok(match row.unique_key {
            None => Enqueued::Inserted(ids.next().expect("insert_rows returns an id a row")),
            Some(_) => tx.insert_row(row).await?,
        }));
    }
    tx.commit().await?;
    Ok(results)
}
