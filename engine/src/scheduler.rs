//! Named schedules that enqueue jobs: every interval or on a cron expression, optionally at
//! boot.
//!
//! The `schedules` row is the lock. A process fires a due schedule by moving its
//! `next_run_at` forward with a compare-and-set (`… WHERE next_run_at = :seen`) in the same
//! transaction as the enqueue, so however many processes share a database, each tick
//! enqueues exactly one job. The next run is computed from *now*, so after downtime a
//! schedule runs once, not once per missed tick. Scheduled jobs carry the unique key
//! `schedule:{name}`: a tick that finds the previous run unfinished enqueues nothing.
//!
//! A schedule's row remembers its expression. When a deploy changes it (a new interval, a
//! new cron), the row's next run moves to the earlier of the old one and the new
//! expression's next occurrence, so neither a long-parked old time nor a far-away new one
//! delays it.

use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;
use sqlx::Row;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::clock::{Millis, duration_ms, to_datetime};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::job::{Enqueued, Job};
use crate::state_machine::Actor;

/// How often a schedule fires.
#[derive(Debug, Clone)]
pub enum Every {
    /// A fixed interval, measured from the previous run.
    Interval(Duration),
    /// A cron expression with seconds (`sec min hour day-of-month month day-of-week`), UTC.
    Cron(Box<cron::Schedule>),
}

impl Every {
    /// Parses `"1h"`-style intervals (humantime) or 6/7-field cron expressions.
    pub fn parse(text: &str) -> Result<Self, String> {
        if let Ok(d) = humantime::parse_duration(text) {
            if d.is_zero() {
                return Err("an interval must be longer than zero".to_owned());
            }
            return Ok(Self::Interval(d));
        }
        cron::Schedule::from_str(text)
            .map(|s| Self::Cron(Box::new(s)))
            .map_err(|e| format!("{text:?} is neither a duration (\"1h\") nor a cron expression (\"0 0 3 * * *\"): {e}"))
    }

    /// The first run strictly after `t`.
    pub fn next_after(&self, t: Millis) -> Millis {
        match self {
            Self::Interval(d) => t.saturating_add(duration_ms(*d).max(1)),
            Self::Cron(s) => s
                .after(&to_datetime(t))
                .next()
                .map_or(Millis::MAX, |dt| dt.timestamp_millis()),
        }
    }

    /// Human-readable form.
    pub fn describe(&self) -> String {
        match self {
            Self::Interval(d) => format!("every {}", humantime::format_duration(*d)),
            Self::Cron(s) => format!("cron {s}"),
        }
    }
}

/// A named schedule of one job.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// Unique name (the row's key).
    pub name: &'static str,
    /// How often.
    pub every: Every,
    /// Also fire when a process starts (unless it ran in the last minute).
    pub run_at_boot: bool,
    /// The kind it enqueues.
    pub kind: &'static str,
    /// The args, as JSON.
    pub args: String,
}

impl Schedule {
    /// A schedule enqueuing `args` every `every`.
    pub fn new<J: Job>(name: &'static str, every: Every, args: &J) -> Self {
        Self {
            name,
            every,
            run_at_boot: false,
            kind: J::KIND,
            args: serde_json::to_string(args).expect("schedule args encode as JSON"),
        }
    }

    /// Also fire at boot.
    pub fn run_at_boot(mut self) -> Self {
        self.run_at_boot = true;
        self
    }

    /// The unique key of the jobs it enqueues.
    pub fn unique_key(&self) -> String {
        format!("schedule:{}", self.name)
    }
}

/// A schedule as listed.
#[derive(Debug, Clone, Serialize)]
pub struct ScheduleInfo {
    /// Name.
    pub name: String,
    /// Kind it enqueues.
    pub kind: String,
    /// Interval or cron.
    pub every: String,
    /// Fires at boot too.
    pub run_at_boot: bool,
    /// Last time it fired.
    pub last_run_at: Option<Millis>,
    /// Next time it fires.
    pub next_run_at: Millis,
    /// The job of its last run.
    pub last_job_id: Option<i64>,
}

/// Boot runs are skipped when the schedule fired this recently (another process booted).
const BOOT_GRACE: Duration = Duration::from_secs(60);
/// How often the loop looks for due schedules.
const TICK: Duration = Duration::from_secs(1);

/// The schedules of this deployment.
#[derive(Clone)]
pub struct Scheduler {
    engine: Engine,
    schedules: Vec<Schedule>,
}

impl Scheduler {
    /// A scheduler over `schedules`. Panics on duplicate names or unregistered kinds:
    /// both are programming errors to catch at start-up.
    pub fn new(engine: Engine, schedules: Vec<Schedule>) -> Self {
        let mut names = std::collections::HashSet::new();
        for s in &schedules {
            assert!(
                names.insert(s.name),
                "schedule {:?} is defined twice",
                s.name
            );
            assert!(
                engine.registry().contains(s.kind),
                "schedule {:?} enqueues unregistered kind {:?}",
                s.name,
                s.kind
            );
        }
        Self { engine, schedules }
    }

    /// The schedules.
    pub fn schedules(&self) -> &[Schedule] {
        &self.schedules
    }

    /// Creates missing rows, moves the next run of schedules whose expression changed, and
    /// makes boot schedules due now. Run once per process start.
    pub async fn register(&self) -> Result<()> {
        let now = self.engine.clock().now_ms();
        for s in &self.schedules {
            let next = s.every.next_after(now);
            if next == Millis::MAX {
                tracing::warn!(schedule = s.name, every = %s.every.describe(), "schedule has no future run");
            }
            let first = if s.run_at_boot { now } else { next };
            let expression = s.every.describe();
            sqlx::query(
                "INSERT INTO schedules (name, next_run_at, expression) VALUES ($1, $2, $3) \
                 ON CONFLICT (name) DO NOTHING",
            )
            .bind(s.name)
            .bind(first)
            .bind(&expression)
            .execute(self.engine.db())
            .await?;
            let moved = sqlx::query(
                "UPDATE schedules SET expression = $3, \
                     next_run_at = CASE WHEN next_run_at < $2 THEN next_run_at ELSE $2 END \
                 WHERE name = $1 AND (expression IS NULL OR expression <> $3)",
            )
            .bind(s.name)
            .bind(next)
            .bind(&expression)
            .execute(self.engine.db())
            .await?
            .rows_affected();
            if moved > 0 {
                tracing::info!(schedule = s.name, every = %expression, "schedule changed; next run moved");
            }
            if s.run_at_boot {
                sqlx::query(
                    "UPDATE schedules SET next_run_at = $1 \
                     WHERE name = $2 AND next_run_at > $1 AND (last_run_at IS NULL OR last_run_at < $3)",
                )
                .bind(now)
                .bind(s.name)
                .bind(now - duration_ms(BOOT_GRACE))
                .execute(self.engine.db())
                .await?;
            }
        }
        Ok(())
    }

    /// Fires every due schedule once. Returns what each firing enqueued.
    pub async fn tick(&self) -> Result<Vec<(&'static str, Enqueued)>> {
        let now = self.engine.clock().now_ms();
        let due = sqlx::query("SELECT name, next_run_at FROM schedules WHERE next_run_at <= $1")
            .bind(now)
            .fetch_all(self.engine.db())
            .await?;
        let mut fired = Vec::new();
        for row in due {
            let name: String = row.try_get(0)?;
            let seen: Millis = row.try_get(1)?;
            let Some(schedule) = self.schedules.iter().find(|s| s.name == name) else {
                continue; // a schedule of another deployment or version
            };
            if let Some(enqueued) = self.fire(schedule, seen, now).await? {
                fired.push((schedule.name, enqueued));
            }
        }
        Ok(fired)
    }

    async fn fire(&self, s: &Schedule, seen: Millis, now: Millis) -> Result<Option<Enqueued>> {
        let mut tx = self.engine.begin().await?;
        let won = sqlx::query(
            "UPDATE schedules SET next_run_at = $1, last_run_at = $2 WHERE name = $3 AND next_run_at = $4",
        )
        .bind(s.every.next_after(now))
        .bind(now)
        .bind(s.name)
        .bind(seen)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if !won {
            return Ok(None); // another process took this tick
        }
        let enqueued = tx
            .enqueue_json(s.kind, &s.args, Some(&s.unique_key()))
            .await?;
        sqlx::query("UPDATE schedules SET last_job_id = $1 WHERE name = $2")
            .bind(enqueued.id())
            .bind(s.name)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        tracing::info!(
            schedule = s.name,
            job = enqueued.id(),
            new = matches!(enqueued, Enqueued::Inserted(_)),
            "schedule fired"
        );
        Ok(Some(enqueued))
    }

    /// Enqueues the schedule's job now, outside its timing (`schedules run NAME`). The
    /// unique key still applies: if its previous run is unfinished, that job is returned.
    pub async fn run_now(&self, name: &str, actor: &Actor) -> Result<Enqueued> {
        let s = self
            .schedules
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| Error::ScheduleNotFound(name.to_owned()))?;
        let now = self.engine.clock().now_ms();
        let mut tx = self.engine.begin().await?;
        let enqueued = tx
            .enqueue_json(s.kind, &s.args, Some(&s.unique_key()))
            .await?;
        sqlx::query(
            "INSERT INTO schedules (name, next_run_at, last_run_at, last_job_id, expression) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (name) DO UPDATE SET last_run_at = $3, last_job_id = $4",
        )
        .bind(s.name)
        .bind(s.every.next_after(now))
        .bind(now)
        .bind(enqueued.id())
        .bind(s.every.describe())
        .execute(&mut *tx)
        .await?;
        crate::state_machine::record(&mut tx, "schedule", s.name, "idle", "run", actor, None, now)
            .await?;
        tx.commit().await?;
        Ok(enqueued)
    }

    /// Every schedule with its last and next run.
    pub async fn list(&self) -> Result<Vec<ScheduleInfo>> {
        let rows = sqlx::query("SELECT name, next_run_at, last_run_at, last_job_id FROM schedules")
            .fetch_all(self.engine.db())
            .await?;
        let now = self.engine.clock().now_ms();
        let mut out = Vec::new();
        for s in &self.schedules {
            let row = rows
                .iter()
                .find(|r| r.try_get::<String, _>(0).is_ok_and(|n| n == s.name));
            out.push(ScheduleInfo {
                name: s.name.to_owned(),
                kind: s.kind.to_owned(),
                every: s.every.describe(),
                run_at_boot: s.run_at_boot,
                last_run_at: row.and_then(|r| r.try_get(2).ok()).flatten(),
                next_run_at: row
                    .and_then(|r| r.try_get(1).ok())
                    .unwrap_or_else(|| s.every.next_after(now)),
                last_job_id: row.and_then(|r| r.try_get(3).ok()).flatten(),
            });
        }
        Ok(out)
    }

    /// Registers, then ticks every second until `stop`. Errors are logged and retried on
    /// the next tick; a database outage delays schedules, it does not stop them.
    pub fn start(self) -> SchedulerHandle {
        let (stop, mut stop_rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            while let Err(e) = self.register().await {
                tracing::warn!(error = %e, "registering schedules failed; retrying");
                tokio::select! { _ = tokio::time::sleep(TICK * 5) => {}, _ = stop_rx.changed() => return }
            }
            loop {
                if let Err(e) = self.tick().await {
                    tracing::warn!(error = %e, "scheduler tick failed; retrying");
                }
                tokio::select! { _ = tokio::time::sleep(TICK) => {}, _ = stop_rx.changed() => return }
            }
        });
        SchedulerHandle { stop, task }
    }
}

/// The running scheduler loop.
pub struct SchedulerHandle {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl SchedulerHandle {
    /// True while the loop runs.
    pub fn is_alive(&self) -> bool {
        !self.task.is_finished()
    }

    /// Stops the loop (a tick in progress finishes first).
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_parses_intervals_and_cron() {
        assert!(
            matches!(Every::parse("1h").unwrap(), Every::Interval(d) if d == Duration::from_secs(3600))
        );
        let cron = Every::parse("0 0 3 * * *").unwrap();
        // 2026-01-01T00:00:00Z → 03:00 the same day
        assert_eq!(
            cron.next_after(1_767_225_600_000),
            1_767_225_600_000 + 3 * 3_600_000
        );
        assert!(Every::parse("0s").is_err());
        assert!(
            Every::parse("sometimes")
                .unwrap_err()
                .contains("neither a duration")
        );
    }

    #[test]
    fn interval_next_run_is_measured_from_the_given_time() {
        let every = Every::Interval(Duration::from_secs(60));
        assert_eq!(every.next_after(1_000), 61_000);
    }
}
