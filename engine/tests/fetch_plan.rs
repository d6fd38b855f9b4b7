//! The claim query is served by the `jobs_fetch` and `jobs_scheduled` partial indexes, in
//! the order they read, on both backends, even with a large backlog of finished jobs: no
//! sequential scan, no sort of the table; and an empty claim does not read the jobs that
//! wait for later (migration 0004_scheduled).

mod support;

use engine::storage::claim_pick_sql;
use engine::testing::{TestDb, query_plan};
use engine::{Backend, Clock, NewJob, backend_tests};
use support::{Behaviour, Probe, Runs, registry};

/// Whether `plan` (Postgres' EXPLAIN or SQLite's EXPLAIN QUERY PLAN) reads all of `table`.
fn scans(plan: &str, table: &str) -> bool {
    plan.lines().any(|line| {
        let words: Vec<&str> = line.split_whitespace().collect();
        words.windows(4).any(|w| w == ["Seq", "Scan", "on", table])
            || words.first() == Some(&"SCAN") && words.get(1) == Some(&table)
    })
}

/// The pick inside `storage::exchange` (without the row lock, which EXPLAIN does not need).
fn fetch() -> String {
    claim_pick_sql("'probe'", "9000000000000", "50", "")
}

backend_tests!(
    claim_query_uses_the_fetch_indexes_without_sorting_the_table,
    an_empty_claim_reads_no_job_waiting_for_later,
    jobs_that_come_due_are_claimed_in_priority_order_with_the_rest,
    throughput_reads_only_the_last_hours_attempts,
    a_large_claim_updates_its_rows_by_primary_key,
    a_jobs_detail_reads_only_that_jobs_rows,
    the_counts_read_each_part_through_its_own_index,
);

async fn claim_query_uses_the_fetch_indexes_without_sorting_the_table(t: TestDb) {
    // 20,000 finished jobs and 200 due ones, in several kinds, half of them written to run
    // later (and due since).
    let fill = match t.backend {
        Backend::Postgres => {
            "INSERT INTO jobs (kind, args, status, max_attempts, run_at, created_at, finished_at) \
             SELECT CASE WHEN n % 3 = 0 THEN 'probe' ELSE 'other' END, '{}', 'succeeded', 3, n, n, n \
             FROM generate_series(1, 20000) AS n"
        }
        Backend::Sqlite => {
            "WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < 20000) \
             INSERT INTO jobs (kind, args, status, max_attempts, run_at, created_at, finished_at) \
             SELECT CASE WHEN n % 3 = 0 THEN 'probe' ELSE 'other' END, '{}', 'succeeded', 3, n, n, n FROM s"
        }
    };
    sqlx::query(fill).execute(&t.db).await.unwrap();
    for i in 0..200 {
        sqlx::query("INSERT INTO jobs (kind, args, status, max_attempts, run_at, created_at, scheduled) VALUES ($1, '{}', 'pending', 3, $2, $2, $3)")
            .bind(if i % 2 == 0 { "probe" } else { "other" })
            .bind(i64::from(i))
            .bind(i % 4 / 2)
            .execute(&t.db)
            .await
            .unwrap();
    }
    sqlx::query("ANALYZE").execute(&t.db).await.unwrap();

    let plan = query_plan(&t.db, t.backend, &fetch(), &[] as &[i64]).await;
    eprintln!("{} plan:\n{plan}", t.backend.name());
    assert!(
        plan.contains("jobs_fetch") && plan.contains("jobs_scheduled"),
        "claim must read both fetch indexes:\n{plan}"
    );
    let lower = plan.to_lowercase();
    assert!(!lower.contains("seq scan"), "no scan:\n{plan}");
    // Sorting is allowed only for the merge of the two reads (at most 2 × 50 rows): a sort
    // node reads a LIMIT, never the table; each read comes in its index's order.
    let lines: Vec<&str> = lower.lines().map(str::trim_start).collect();
    for (i, line) in lines.iter().enumerate() {
        let sort_node = line.starts_with("->  sort") || line.starts_with("sort ");
        if sort_node {
            let input = lines[i + 1..].iter().find(|l| !l.starts_with("sort key"));
            assert!(
                input.is_some_and(|l| l.contains("limit")),
                "a sort reads the table:\n{plan}"
            );
        }
        if line.contains("temp b-tree") {
            assert_eq!(i, lines.len() - 1, "only the merge sorts:\n{plan}");
        }
    }
    if t.backend == Backend::Sqlite {
        // SQLite's plan shows the index constraints: the waiting jobs are read as a range
        // on run_at, which is what lets the read stop at the first one not yet due.
        assert!(
            plan.contains("jobs_scheduled (kind=? AND run_at<?)"),
            "the scheduled read is a run_at range:\n{plan}"
        );
    }
}

/// 20,000 jobs of the kind wait for tomorrow, none is due: an empty claim reads a couple of
/// index pages, not the 20,000 entries (before migration 0004 it walked them all: priority
/// comes before run_at in the claim order, so the scan could not stop at the first job not
/// yet due). Counted in Postgres' buffer accesses (EXPLAIN ANALYZE), which do not depend on
/// timing; SQLite's plan is checked above.
async fn an_empty_claim_reads_no_job_waiting_for_later(t: TestDb) {
    if t.backend != Backend::Postgres {
        return;
    }
    let engine = t.engine(registry(&Runs::default()), Clock::system());
    let later = engine.clock().now_ms() + 86_400_000;
    let jobs: Vec<_> = (0..20_000)
        .map(|i| NewJob::new(Probe::new(Behaviour::Succeed)).run_at(later + i))
        .collect();
    let mut tx = engine.begin().await.unwrap();
    tx.enqueue_many(jobs).await.unwrap();
    tx.commit().await.unwrap();
    sqlx::query("ANALYZE jobs").execute(&t.db).await.unwrap();
    // "Now" exactly as the claim spells it: the database's clock when no time is bound.
    let pick = claim_pick_sql(
        "'probe'",
        &engine::storage::lease_now_sql(Backend::Postgres, 1),
        "8",
        "FOR UPDATE SKIP LOCKED",
    );
    let plan: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF, FORMAT TEXT) {pick}"
    )))
    .bind(None::<i64>)
    .fetch_all(&t.db)
    .await
    .unwrap();
    let plan = plan.join("\n");
    eprintln!("{plan}");
    let blocks: u64 = plan
        .lines()
        .filter(|l| l.trim_start().starts_with("Buffers:"))
        .take(1) // the top node's line counts its children's
        .flat_map(|l| l.split_whitespace())
        .filter_map(|w| w.split('=').nth(1))
        .filter_map(|n| n.parse::<u64>().ok())
        .sum();
    assert!(
        blocks > 0 && blocks <= 10,
        "an empty claim over 20,000 waiting jobs read {blocks} pages:\n{plan}"
    );
}

/// A job written to run later waits in the other index; once due it is claimed in the same
/// order as the jobs queued to run at once: by priority, then due time. A job not yet due
/// is never claimed.
async fn jobs_that_come_due_are_claimed_in_priority_order_with_the_rest(t: TestDb) {
    let clock = Clock::manual(chrono::Utc::now());
    let engine = t.engine(registry(&Runs::default()), clock.clone());
    let now = clock.now_ms();
    let enqueue = async |priority: i32, run_at: i64| {
        engine
            .enqueue(
                NewJob::new(Probe::new(Behaviour::Succeed))
                    .priority(priority)
                    .run_at(run_at),
            )
            .await
            .unwrap()
            .id()
    };
    let low_now = enqueue(5, now).await;
    let urgent_later = enqueue(0, now + 1_000).await;
    let high_now = enqueue(1, now).await;
    let low_later = enqueue(5, now + 500).await;
    let not_yet = enqueue(0, now + 60_000).await;
    let flags: Vec<(i64, i32)> = sqlx::query_as("SELECT id, scheduled FROM jobs ORDER BY id")
        .fetch_all(&t.db)
        .await
        .unwrap();
    assert_eq!(
        flags,
        vec![
            (low_now, 0),
            (urgent_later, 1),
            (high_now, 0),
            (low_later, 1),
            (not_yet, 1)
        ]
    );

    clock.advance(std::time::Duration::from_secs(2));
    let now = clock.now_ms();
    let mut conn = engine.db().acquire().await.unwrap();
    // The ids of up to `room` jobs claimed now, sorted.
    let mut claim = async |room: usize| {
        let claimed = engine::storage::exchange(
            &mut conn,
            "w",
            "probe",
            &[],
            room,
            now,
            engine::storage::LeaseNow::At(now),
            60_000,
        )
        .await
        .unwrap()
        .claimed;
        let mut ids: Vec<i64> = claimed.iter().map(|j| j.id).collect();
        ids.sort_unstable();
        ids
    };
    let ids = claim(10).await;
    let mut expected = vec![urgent_later, high_now, low_later, low_now];
    expected.sort_unstable();
    assert_eq!(ids, expected, "every due job, and only those");

    // With room for two, the two most urgent are taken, wherever they wait.
    sqlx::query("UPDATE jobs SET status = 'pending', locked_by = NULL, lease_expires_at = NULL")
        .execute(&t.db)
        .await
        .unwrap();
    let ids = claim(2).await;
    let mut expected = vec![urgent_later, high_now];
    expected.sort_unstable();
    assert_eq!(ids, expected, "priority first, across both reads");
}

/// 20,000 finished jobs as the runtime keeps them: two thirds succeeded at their first
/// attempt (recorded on the job row alone), a third at their second (an attempt row for
/// each attempt), job `n` finished at `n`; analysed.
async fn kept_history(t: &TestDb) {
    let series = match t.backend {
        Backend::Postgres => "SELECT n FROM generate_series(1, 20000) AS n",
        Backend::Sqlite => {
            "WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < 20000) \
             SELECT n FROM s"
        }
    };
    for sql in [
        format!(
            "INSERT INTO jobs (id, kind, args, status, attempt, max_attempts, run_at, created_at, \
                 started_at, finished_at, locked_by) \
             SELECT n, 'probe', '{{}}', 'succeeded', CASE WHEN n % 3 = 2 THEN 2 ELSE 1 END, 3, \
                 n, n, n, n, 'w' FROM ({series}) AS s"
        ),
        format!(
            "INSERT INTO job_attempts (job_id, attempt, worker_id, started_at, finished_at, outcome) \
             SELECT n, a.attempt, 'w', n, n, a.outcome FROM ({series}) AS s, \
                 (SELECT 1 AS attempt, 'retrying' AS outcome \
                  UNION ALL SELECT 2, 'succeeded') AS a \
             WHERE n % 3 = 2"
        ),
        "ANALYZE".to_owned(),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&t.db)
            .await
            .unwrap();
    }
}

/// `admin::throughput` counts the attempts of the last hour through `job_attempts_finished`
/// and `jobs_finished`, not by reading every attempt or job kept ([`kept_history`], 100 of
/// them recent).
async fn throughput_reads_only_the_last_hours_attempts(t: TestDb) {
    kept_history(&t).await;
    let plan = query_plan(
        &t.db,
        t.backend,
        engine::admin::THROUGHPUT_SQL,
        &[19_990, 19_900],
    )
    .await;
    // The attempts are the rows of job_attempts and the first-attempt successes on their
    // job rows (the view job_attempts_all): each read through its finished_at index.
    assert!(
        plan.contains("job_attempts_finished") && plan.contains("jobs_finished"),
        "the count must use both finished_at indexes:\n{plan}"
    );
    assert!(
        !scans(&plan, "job_attempts") && !scans(&plan, "jobs"),
        "no scan of every attempt or job:\n{plan}"
    );
}

/// A claim of 1,000 jobs from a backlog of 20,000 (the bench's tuned drain) updates the
/// rows it picked through the primary key. Joining the pick instead let Postgres hash the
/// whole table: a sequential scan of `jobs`, every job ever kept, on every large claim.
async fn a_large_claim_updates_its_rows_by_primary_key(t: TestDb) {
    if t.backend != Backend::Postgres {
        return;
    }
    sqlx::query(
        "INSERT INTO jobs (kind, args, status, max_attempts, run_at, created_at) \
         SELECT 'probe', '{}', 'pending', 3, n, n FROM generate_series(1, 20000) AS n",
    )
    .execute(&t.db)
    .await
    .unwrap();
    sqlx::query("ANALYZE").execute(&t.db).await.unwrap();
    let plan: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "EXPLAIN {}",
        engine::storage::EXCHANGE_SQL_PG.as_str()
    )))
    .bind("[]")
    .bind(1_000_000_i64)
    .bind("w")
    .bind("probe")
    .bind(Some(1_000_000_i64))
    .bind(1_000_i64)
    .bind(30_000_i64)
    .fetch_all(&t.db)
    .await
    .unwrap();
    let plan = plan.join("\n");
    assert!(
        !plan.to_lowercase().contains("seq scan on jobs"),
        "a claim must not read the whole table:\n{plan}"
    );
    assert!(plan.contains("jobs_pkey"), "claimed rows by id:\n{plan}");
}

/// `admin::get_jobs` (every `GET /v1/jobs/{id}`, a few at once) reads the jobs' own
/// attempts and children through indexes, not the whole view of attempts or every job
/// ([`kept_history`]).
async fn a_jobs_detail_reads_only_that_jobs_rows(t: TestDb) {
    kept_history(&t).await;
    let sql = engine::admin::get_jobs_sql(t.backend);
    let plan = query_plan(&t.db, t.backend, sql, &["[5000, 5001, 12000]".to_owned()]).await;
    assert!(
        !scans(&plan, "job_attempts") && !scans(&plan, "jobs"),
        "a few jobs' details must not scan a table:\n{plan}"
    );
    assert!(
        plan.contains("job_attempts_job"),
        "attempts by job:\n{plan}"
    );
}

/// `admin::stats` (the dashboard, `/metrics`, `GET /v1/queues`) counts the jobs waiting
/// and running through the claim's and the rescuer's indexes, since engine migration 0007
/// left `jobs_kind_status` to the finished jobs: only the finished part may read the table
/// (here, [`kept_history`], all of it is finished jobs). And the counts add up, a status
/// that comes in two parts (due and scheduled) included.
async fn the_counts_read_each_part_through_its_own_index(t: TestDb) {
    kept_history(&t).await;
    for sql in [
        "INSERT INTO jobs (id, kind, args, status, max_attempts, run_at, created_at, scheduled) \
         VALUES (30001, 'probe', '{}', 'pending', 3, 1, 1, 0), \
                (30002, 'probe', '{}', 'pending', 3, 1, 1, 1), \
                (30003, 'probe', '{}', 'retrying', 3, 9000000000000, 1, 1), \
                (30004, 'other', '{}', 'pending', 3, 5, 1, 0)",
        "INSERT INTO jobs (id, kind, args, status, max_attempts, run_at, created_at, locked_by, \
                           lease_expires_at) \
         VALUES (30005, 'probe', '{}', 'running', 3, 1, 1, 'w', 10)",
        "ANALYZE",
    ] {
        sqlx::query(sql).execute(&t.db).await.unwrap();
    }
    // A read of the table itself (SQLite's `SCAN jobs USING INDEX` reads an index).
    let table_reads = |plan: &str| {
        plan.lines()
            .filter(|line| line.contains("Seq Scan on jobs") || line.trim() == "SCAN jobs")
            .count()
    };
    let plan = query_plan(&t.db, t.backend, engine::admin::COUNTS_SQL, &[] as &[i64]).await;
    for index in ["jobs_fetch", "jobs_scheduled", "jobs_running_lease"] {
        assert!(plan.contains(index), "the counts read {index}:\n{plan}");
    }
    // The finished jobs are all the table here, and Postgres may well read it rather than
    // their index; no other part may.
    assert!(
        table_reads(&plan) <= 1,
        "the counts read the table once at most:\n{plan}"
    );
    let plan = query_plan(&t.db, t.backend, engine::admin::OLDEST_DUE_SQL, &[100_i64]).await;
    for index in ["jobs_fetch", "jobs_scheduled"] {
        assert!(
            plan.contains(index),
            "the oldest due job is read from {index}:\n{plan}"
        );
    }
    assert_eq!(
        table_reads(&plan),
        0,
        "the oldest due job, not the table:\n{plan}"
    );
    let stats = engine::admin::stats(&t.db, 100).await.unwrap();
    let probe = stats.iter().find(|s| s.kind == "probe").unwrap();
    assert_eq!(probe.counts["succeeded"], 20_000);
    assert_eq!(probe.counts["pending"], 2, "one due, one flagged scheduled");
    assert_eq!(probe.counts["retrying"], 1);
    assert_eq!(probe.counts["running"], 1);
    assert_eq!(probe.counts["failed"], 0);
    assert_eq!(probe.oldest_pending_age_ms, Some(99));
    let other = stats.iter().find(|s| s.kind == "other").unwrap();
    assert_eq!(other.counts["pending"], 1);
    assert_eq!(other.oldest_pending_age_ms, Some(95));
}

/// Postgres: the job list filtered by a kind and a finished state (an admin's "failed
/// jobs of this kind") reads `jobs_kind_status` newest first, though that index holds only
/// finished jobs since engine migration 0007: the statement tells the planner that a
/// finished state's jobs are finished. (SQLite plans the statement once, for any filter.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_lists_a_kinds_failed_jobs_from_the_finished_index() {
    let Some(t) = TestDb::new(Backend::Postgres).await else {
        return;
    };
    kept_history(&t).await;
    sqlx::query("UPDATE jobs SET status = 'failed' WHERE id % 1000 = 7")
        .execute(&t.db)
        .await
        .unwrap();
    sqlx::query("ANALYZE jobs").execute(&t.db).await.unwrap();
    let explain = format!("EXPLAIN {}", engine::admin::LIST_JOBS_SQL.as_str());
    let plan: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(explain))
        .bind(Some("probe"))
        .bind(Some("failed"))
        .bind(None::<i64>)
        .bind(None::<i64>)
        .bind(None::<i64>)
        .bind(51_i64)
        .bind(None::<String>)
        .fetch_all(&t.db)
        .await
        .unwrap();
    let plan = plan.join("\n");
    assert!(
        plan.contains("Backward using jobs_kind_status") && !scans(&plan, "jobs"),
        "a kind's failed jobs, newest first, from the index:\n{plan}"
    );
    let filter = engine::admin::JobFilter {
        kind: Some("probe".to_owned()),
        status: Some(engine::JobState::Failed),
        ..Default::default()
    };
    let page = engine::admin::list_jobs(&t.db, &filter).await.unwrap();
    let ids: Vec<i64> = page.jobs.iter().map(|j| j.id).collect();
    assert_eq!(ids, (0..20).rev().map(|k| k * 1000 + 7).collect::<Vec<_>>());
}
