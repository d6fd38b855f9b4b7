//! The claim query is served by the `jobs_fetch` partial index, in the order it reads, on
//! both backends, even with a large backlog of finished jobs: no sequential scan, no sort.

use engine::testing::{TestDb, query_plan};
use engine::{Backend, backend_tests};

/// The SELECT inside `storage::claim` (without the row lock, which EXPLAIN does not need).
const FETCH: &str = "SELECT id FROM jobs WHERE kind = 'probe' AND status IN ('pending', 'retrying') \
                     AND run_at <= 9000000000000 ORDER BY priority, run_at, id LIMIT 50";

backend_tests!(
    claim_query_uses_the_fetch_index_without_sorting,
    throughput_reads_only_the_last_hours_attempts,
);

async fn claim_query_uses_the_fetch_index_without_sorting(t: TestDb) {
    // 20,000 finished jobs and 200 due ones, in several kinds.
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
        sqlx::query("INSERT INTO jobs (kind, args, status, max_attempts, run_at, created_at) VALUES ($1, '{}', 'pending', 3, $2, $2)")
            .bind(if i % 2 == 0 { "probe" } else { "other" })
            .bind(i64::from(i))
            .execute(&t.db)
            .await
            .unwrap();
    }
    sqlx::query("ANALYZE").execute(&t.db).await.unwrap();

    let plan = query_plan(&t.db, t.backend, FETCH, &[]).await;
    eprintln!("{} plan:\n{plan}", t.backend.name());
    assert!(
        plan.contains("jobs_fetch"),
        "claim must use the fetch index:\n{plan}"
    );
    let lower = plan.to_lowercase();
    assert!(
        !lower.contains("seq scan") && !lower.contains("temp b-tree") && !lower.contains("sort"),
        "no scan or sort:\n{plan}"
    );
}

/// `admin::throughput` counts the attempts of the last hour through `job_attempts_finished`,
/// not by reading every attempt kept (20,000 here, 100 of them recent).
async fn throughput_reads_only_the_last_hours_attempts(t: TestDb) {
    let series = match t.backend {
        Backend::Postgres => "SELECT n FROM generate_series(1, 20000) AS n",
        Backend::Sqlite => {
            "WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < 20000) \
             SELECT n FROM s"
        }
    };
    for sql in [
        format!(
            "INSERT INTO jobs (id, kind, args, status, max_attempts, run_at, created_at, finished_at) \
             SELECT n, 'probe', '{{}}', 'succeeded', 3, n, n, n FROM ({series}) AS s"
        ),
        format!(
            "INSERT INTO job_attempts (job_id, attempt, worker_id, started_at, finished_at, outcome) \
             SELECT n, 1, 'w', n, n, 'succeeded' FROM ({series}) AS s"
        ),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&t.db)
            .await
            .unwrap();
    }
    sqlx::query("ANALYZE").execute(&t.db).await.unwrap();
    let plan = query_plan(
        &t.db,
        t.backend,
        engine::admin::THROUGHPUT_SQL,
        &[19_990, 19_900],
    )
    .await;
    assert!(
        plan.contains("job_attempts_finished"),
        "the count must use the finished_at index:\n{plan}"
    );
    let lower = plan.to_lowercase();
    let full_scan = lower
        .lines()
        .any(|l| l.contains("seq scan on job_attempts") || l.trim_start().starts_with("scan a"));
    assert!(!full_scan, "no scan of every attempt:\n{plan}");
}
