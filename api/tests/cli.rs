//! The real `veza-jobs` binary, run as a process against a temporary SQLite file (and, for
//! `serve`, a fresh Postgres database when `TEST_POSTGRES_URL` is set).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use engine::config::Env;
use engine::job::JobState;
use engine::retention::PruneJobs;
use engine::{Backend, Engine, Registry};
use jobs::orphan_sweep::OrphanSweep;
use serde_json::Value;
use tempfile::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_veza-jobs");

/// A working directory with its own SQLite file and media root, and a clean environment.
struct Sandbox {
    dir: TempDir,
    url: String,
}

impl Sandbox {
    fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("jobs.db").display());
        Self::with_url(dir, url)
    }

    fn with_url(dir: TempDir, url: String) -> Self {
        std::fs::create_dir_all(dir.path().join("media")).expect("media dir");
        Self { dir, url }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The binary with only the variables given here: nothing leaks in from the test's
    /// environment, and the working directory (where `.env` is looked for) is the sandbox.
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .env_clear()
            .env("DATABASE_URL", &self.url)
            .env("MEDIA_ROOT", self.path().join("media"))
            .env("LOG_LEVEL", "info")
            .current_dir(self.path())
            .stdin(Stdio::null());
        cmd
    }

    fn run(&self, args: &[&str]) -> Run {
        self.run_with(args, &[])
    }

    fn run_with(&self, args: &[&str], vars: &[(&str, &str)]) -> Run {
        let mut cmd = self.command(args);
        cmd.envs(vars.iter().copied());
        Run::new(args, cmd.output().expect("run veza-jobs"))
    }

    /// Runs a command that must succeed; its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let run = self.run(args);
        assert_eq!(run.code(), 0, "{run}");
        run.stdout
    }

    /// Runs a `--json` command that must succeed; its output parsed.
    fn json(&self, args: &[&str]) -> Value {
        let out = self.ok(args);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {out}"))
    }

    fn migrate(&self) {
        self.ok(&["migrate"]);
    }

    /// An engine on the sandbox's database with every job kind, as the binary builds it.
    async fn engine(&self) -> Engine {
        let (db, backend) = engine::db::connect(&self.url, 2).await.expect("connect");
        jobs::schema::migrate(&db, backend).await.expect("migrate");
        let config = jobs::JobsConfig::read(&mut Env::from_map(HashMap::new()));
        let mut registry = Registry::new();
        jobs::register_all(&mut registry, &config);
        Engine::builder(db, backend, self.url.clone())
            .registry(registry)
            .build()
    }
}

/// A finished run.
struct Run {
    args: Vec<String>,
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Run {
    fn new(args: &[&str], out: Output) -> Self {
        Self {
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    fn code(&self) -> i32 {
        self.status.code().expect("exited, not killed")
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "veza-jobs {:?} → {}\n--- stdout\n{}\n--- stderr\n{}",
            self.args, self.status, self.stdout, self.stderr
        )
    }
}

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

#[test]
fn migrate_then_an_empty_job_list() {
    let s = Sandbox::sqlite();
    s.migrate();
    let page = s.json(&["jobs", "list", "--json"]);
    assert_eq!(page["jobs"], Value::Array(vec![]), "{page}");
    assert_eq!(page["next_cursor"], Value::Null);
    assert_eq!(s.ok(&["jobs", "list"]), "no jobs\n");
}

#[test]
fn a_bad_variable_exits_2_naming_it_and_every_other_problem() {
    let s = Sandbox::sqlite();
    let run = s.run_with(&["migrate"], &[("JOB_LEASE_TTL", "soon")]);
    assert_eq!(run.code(), 2, "{run}");
    assert!(run.stderr.contains("JOB_LEASE_TTL must be"), "{run}");
    // Every problem at once, from every crate's variables.
    let run = s.run_with(
        &["jobs", "list"],
        &[
            ("JOB_LEASE_TTL", "soon"),
            ("ORPHAN_TRACK_AGE", "never"),
            ("HTTP_ADDR", "nowhere"),
        ],
    );
    assert_eq!(run.code(), 2, "{run}");
    for var in ["JOB_LEASE_TTL", "ORPHAN_TRACK_AGE", "HTTP_ADDR"] {
        assert!(run.stderr.contains(&format!("{var} must be")), "{run}");
    }
    assert!(
        !s.path().join("jobs.db").exists(),
        "nothing may start before the configuration is valid"
    );
}

#[test]
fn dot_env_in_the_working_directory_is_loaded() {
    let s = Sandbox::sqlite();
    std::fs::write(s.path().join(".env"), "JOB_FETCH_BATCH=lots\n").expect("write .env");
    let run = s.run(&["migrate"]);
    assert_eq!(run.code(), 2, "{run}");
    assert!(run.stderr.contains("JOB_FETCH_BATCH must be"), "{run}");
    // The environment wins over .env.
    let run = s.run_with(&["migrate"], &[("JOB_FETCH_BATCH", "5")]);
    assert_eq!(run.code(), 0, "{run}");
    // A .env that does not parse is a configuration error too.
    std::fs::write(s.path().join(".env"), "JUNK LINE\n").expect("write .env");
    let run = s.run(&["migrate"]);
    assert_eq!(run.code(), 2, "{run}");
    assert!(run.stderr.contains(".env could not be loaded"), "{run}");
}

#[test]
fn schedules_are_listed_and_run_on_demand() {
    let s = Sandbox::sqlite();
    s.migrate();
    let table = s.ok(&["schedules", "list"]);
    let mut lines = table.lines();
    let header = lines.next().expect("header");
    for column in ["NAME", "KIND", "EVERY", "LAST RUN", "NEXT RUN"] {
        assert!(header.contains(column), "{table}");
    }
    let names: Vec<&str> = lines
        .by_ref()
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let config = jobs::JobsConfig::read(&mut Env::from_map(HashMap::new()));
    let every: Vec<&str> = jobs::schedules_for(&config)
        .iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, every, "every schedule, in order: {table}");
    for name in ["orphan_sweep", "prune_jobs"] {
        assert!(names.contains(&name), "{name} missing: {table}");
    }
    // The Stripe schedules are not hidden without saying why.
    let rest: Vec<&str> = lines.collect();
    assert_eq!(
        rest,
        [
            "not scheduled in this process:",
            &format!(
                "  transfer_seller_check, reverse_transfer_check, reconcile_transfers: {}",
                jobs::payments::config::NO_STRIPE
            ),
        ],
        "{table}"
    );

    let out = s.ok(&["schedules", "run", "prune_jobs"]);
    assert!(out.contains("enqueued job 1"), "{out}");
    // Its unique key holds while that job is unfinished.
    let out = s.ok(&["schedules", "run", "prune_jobs"]);
    assert!(out.contains("job 1, is unfinished"), "{out}");

    let list = s.json(&["schedules", "list", "--json"]);
    let prune = list
        .as_array()
        .expect("array")
        .iter()
        .find(|s| s["name"] == "prune_jobs")
        .expect("prune_jobs listed");
    assert_eq!(prune["last_job_id"], 1, "{list}");
    assert!(prune["last_run_at"].is_i64(), "{list}");
    let table = s.ok(&["schedules", "list"]);
    let row = table
        .lines()
        .find(|l| l.starts_with("prune_jobs"))
        .expect("row");
    assert!(
        row.split_whitespace()
            .any(|cell| cell.ends_with('Z') && cell.contains('T')),
        "times in RFC 3339 UTC: {row}"
    );

    let run = s.run(&["schedules", "run", "nope"]);
    assert_eq!(run.code(), 1, "{run}");
    assert!(run.stderr.contains("no schedule named \"nope\""), "{run}");
}

#[test]
fn schedules_list_says_which_worker_is_switched_off() {
    let s = Sandbox::sqlite();
    s.migrate();
    let stripe = [
        ("STRIPE_SECRET_KEY", "sk_test_1"),
        ("TRANSFER_RETRY_ENABLED", "false"),
    ];
    let run = s.run_with(&["schedules", "list"], &stripe);
    assert_eq!(run.code(), 0, "{run}");
    let listed: Vec<&str> = run
        .stdout
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(listed.contains(&"reverse_transfer_check"), "{run}");
    assert!(listed.contains(&"reconcile_transfers"), "{run}");
    assert!(!listed.contains(&"transfer_seller_check"), "{run}");
    assert!(
        run.stdout.ends_with(&format!(
            "not scheduled in this process:\n  transfer_seller_check: {}\n",
            jobs::payments::config::NO_PAYOUTS
        )),
        "{run}"
    );
    // Everything on: no note.
    let run = s.run_with(&["schedules", "list"], &stripe[..1]);
    assert!(!run.stdout.contains("not scheduled"), "{run}");
}

/// How many log lines of `logs` warn that STRIPE_SECRET_KEY is unset.
fn stripe_warnings(logs: &str) -> usize {
    logs.lines()
        .filter(|l| l.contains("WARN") && l.contains("STRIPE_SECRET_KEY is unset"))
        .count()
}

#[test]
fn commands_that_run_no_jobs_do_not_warn_about_stripe() {
    let s = Sandbox::sqlite();
    for args in [
        &["migrate"][..],
        &["jobs", "list"],
        &["schedules", "list"],
        &["api-key", "list"],
    ] {
        let run = s.run(args);
        assert_eq!(run.code(), 0, "{run}");
        assert_eq!(stripe_warnings(&run.stderr), 0, "{run}");
        assert!(!run.stderr.contains("WARN"), "{run}");
    }
}

#[test]
fn serve_and_worker_warn_about_stripe_once() {
    let s = Sandbox::sqlite();
    for (args, webhook) in [(&["serve"][..], true), (&["worker"], false)] {
        let addr = free_addr();
        let mut cmd = s.command(args);
        cmd.env("HTTP_ADDR", addr.to_string());
        let log = s.path().join(format!("{}.log", args[0]));
        let mut process = Running::start(cmd, log);
        let start = Instant::now();
        while !process.logs().contains("veza-jobs running") {
            process.assert_running();
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{}",
                process.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        if webhook {
            let (status, body) = get(addr, "/ready").expect("/ready");
            assert_eq!(status, 200, "{body}");
            let disabled = &json_body(&body)["disabled"];
            assert_eq!(
                disabled["stripe_jobs"],
                jobs::payments::config::NO_STRIPE,
                "{body}"
            );
        }
        let status = process.terminate(Duration::from_secs(10));
        assert_eq!(status.code(), Some(0));
        let logs = process.logs();
        assert_eq!(stripe_warnings(&logs), 1, "{logs}");
        let unsigned = logs
            .lines()
            .filter(|l| l.contains("WARN") && l.contains("EXPORT_SIGNING_KEY is unset"))
            .count();
        assert_eq!(unsigned, 1, "{logs}");
        // Without HTTP there is no webhook to speak of.
        assert_eq!(
            logs.contains("STRIPE_WEBHOOK_SECRET is unset"),
            webhook,
            "{logs}"
        );
    }
}

#[test]
fn show_of_an_unknown_job_exits_1() {
    let s = Sandbox::sqlite();
    s.migrate();
    for args in [
        &["jobs", "show", "999"][..],
        &["jobs", "show", "999", "--json"],
        &["jobs", "retry", "999"],
        &["jobs", "cancel", "999"],
    ] {
        let run = s.run(args);
        assert_eq!(run.code(), 1, "{run}");
        assert!(run.stderr.contains("job 999 not found"), "{run}");
    }
}

#[test]
fn api_keys_are_created_once_listed_without_the_key_and_revoked() {
    let s = Sandbox::sqlite();
    s.migrate();
    let out = s.ok(&["api-key", "create", "--name", "grafana", "--scope", "read"]);
    let key = out
        .split_whitespace()
        .find(|w| w.starts_with("vz_") && w.len() == 67)
        .unwrap_or_else(|| panic!("no key in {out}"))
        .to_owned();
    let created = s.json(&[
        "api-key", "create", "--name", "ops", "--scope", "admin", "--json",
    ]);
    assert!(
        created["key"]
            .as_str()
            .is_some_and(|k| k.starts_with("vz_"))
    );
    assert_eq!(created["scope"], "admin");

    let list = s.ok(&["api-key", "list"]);
    assert!(list.contains("grafana") && list.contains("read"), "{list}");
    assert!(list.contains(&key[..11]), "{list}");
    assert!(!list.contains(&key), "the list shows a key: {list}");
    let listed = s.json(&["api-key", "list", "--json"]);
    assert_eq!(listed.as_array().map(Vec::len), Some(2));
    assert!(listed[0]["key"].is_null() && listed[0]["revoked_at"].is_null());

    let out = s.ok(&["api-key", "revoke", "1"]);
    assert!(out.contains("revoked"), "{out}");
    assert!(s.json(&["api-key", "list", "--json"])[0]["revoked_at"].is_i64());
    let run = s.run(&["api-key", "revoke", "99"]);
    assert_eq!(run.code(), 1, "{run}");
    assert!(run.stderr.contains("no API key has id 99"), "{run}");
    assert_eq!(
        s.run(&["api-key", "create", "--name", "x", "--scope", "root"])
            .code(),
        2
    );
}

#[test]
fn api_key_names_with_control_characters_are_listed_escaped() {
    let s = Sandbox::sqlite();
    s.migrate();
    // A name with an ANSI sequence (clear the screen) and a right-to-left override.
    let name = "ci\u{1b}[2J\u{202e}evil";
    let created = s.ok(&["api-key", "create", "--name", name, "--scope", "read"]);
    let list = s.ok(&["api-key", "list"]);
    for out in [&created, &list] {
        assert!(
            !out.contains('\u{1b}'),
            "a raw ESC reached the terminal: {out:?}"
        );
        assert!(
            !out.contains('\u{202e}'),
            "a raw override reached the terminal: {out:?}"
        );
        assert!(out.contains("ci\\u{1b}[2J\\u{202e}evil"), "{out}");
    }
    // The JSON keeps the name as it is.
    assert_eq!(s.json(&["api-key", "list", "--json"])[0]["name"], name);
}

#[test]
fn an_unmigrated_database_says_so() {
    let s = Sandbox::sqlite();
    let run = s.run(&["jobs", "list"]);
    assert_eq!(run.code(), 1, "{run}");
    assert!(
        run.stderr.contains("run `veza-jobs migrate` first"),
        "{run}"
    );
}

fn status_of(s: &Sandbox, id: i64) -> String {
    let job = s.json(&["jobs", "show", &id.to_string(), "--json"]);
    job["status"].as_str().expect("status").to_owned()
}

#[test]
fn cancel_and_retry_change_state_and_refusals_exit_1() {
    let s = Sandbox::sqlite();
    let (sweep, prune, engine) = block_on(async {
        let engine = s.engine().await;
        let sweep = engine.enqueue(OrphanSweep {}).await.expect("enqueue").id();
        let prune = engine.enqueue(PruneJobs {}).await.expect("enqueue").id();
        (sweep, prune, engine)
    });

    let out = s.ok(&["jobs", "cancel", &sweep.to_string()]);
    assert_eq!(out, format!("job {sweep} is now cancelled\n"));
    assert_eq!(status_of(&s, sweep), "cancelled");

    // Cancelling it again is refused with the engine's reason.
    let run = s.run(&["jobs", "cancel", &sweep.to_string()]);
    assert_eq!(run.code(), 1, "{run}");
    assert!(
        run.stderr.contains(&format!(
            "job {sweep} is cancelled, and cancel needs pending or retrying"
        )),
        "{run}"
    );
    // So is retrying a pending job.
    let run = s.run(&["jobs", "retry", &prune.to_string()]);
    assert_eq!(run.code(), 1, "{run}");
    assert!(run.stderr.contains("needs failed or cancelled"), "{run}");

    let out = s.ok(&["jobs", "retry", &sweep.to_string()]);
    assert_eq!(out, format!("job {sweep} is now pending\n"));
    assert_eq!(status_of(&s, sweep), "pending");

    // Both changes are in the audit trail, by the CLI.
    let actors: Vec<(String, String, String)> = block_on(async {
        sqlx::query_as(
            "SELECT from_status, to_status, actor FROM transitions \
             WHERE entity = 'job' AND entity_id = $1 ORDER BY id",
        )
        .bind(sweep.to_string())
        .fetch_all(engine.db())
        .await
        .expect("transitions")
    });
    let cli = |f: &str, t: &str| (f.to_owned(), t.to_owned(), "cli".to_owned());
    assert_eq!(
        actors,
        [cli("pending", "cancelled"), cli("cancelled", "pending")]
    );
}

#[test]
fn jobs_are_listed_filtered_and_paged() {
    let s = Sandbox::sqlite();
    let ids = block_on(async {
        let engine = s.engine().await;
        let mut ids = Vec::new();
        for _ in 0..3 {
            ids.push(engine.enqueue(OrphanSweep {}).await.expect("enqueue").id());
        }
        ids.push(engine.enqueue(PruneJobs {}).await.expect("enqueue").id());
        engine
            .cancel(ids[0], &engine::Actor::cli())
            .await
            .expect("cancel");
        ids
    });
    let listed = |args: &[&str]| -> (Vec<i64>, Value) {
        let mut argv = vec!["jobs", "list", "--json"];
        argv.extend_from_slice(args);
        let page = s.json(&argv);
        let ids = page["jobs"]
            .as_array()
            .expect("jobs")
            .iter()
            .map(|j| j["id"].as_i64().expect("id"))
            .collect();
        (ids, page["next_cursor"].clone())
    };
    assert_eq!(listed(&[]).0, [ids[3], ids[2], ids[1], ids[0]]);
    assert_eq!(listed(&["--kind", "prune_jobs"]).0, [ids[3]]);
    assert_eq!(listed(&["--status", "cancelled"]).0, [ids[0]]);
    assert_eq!(
        listed(&["--kind", "orphan_sweep", "--status", "pending"]).0,
        [ids[2], ids[1]]
    );
    assert!(listed(&["--since", "2999-01-01T00:00:00Z"]).0.is_empty());
    assert_eq!(listed(&["--until", "2999-01-01T00:00:00Z"]).0.len(), 4);

    let (first, cursor) = listed(&["--limit", "3"]);
    assert_eq!(first, [ids[3], ids[2], ids[1]]);
    let cursor = cursor.as_i64().expect("a next cursor");
    let (rest, end) = listed(&["--limit", "3", "--cursor", &cursor.to_string()]);
    assert_eq!(rest, [ids[0]]);
    assert_eq!(end, Value::Null);

    let table = s.ok(&["jobs", "list", "--limit", "3"]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("ID  KIND"), "{table}");
    assert_eq!(lines.len(), 5, "header, 3 jobs, cursor hint: {table}");
    assert_eq!(lines[4], format!("more: --cursor {cursor}"));
    // Aligned: every job row has its status where the header has STATUS.
    let at = lines[0].find("STATUS").expect("STATUS column");
    for row in &lines[1..4] {
        assert!(row[at..].starts_with("pending"), "{table}");
    }

    let run = s.run(&["jobs", "list", "--status", "done"]);
    assert_eq!(run.code(), 2, "a usage error: {run}");
}

#[test]
fn show_prints_the_job_and_its_attempts() {
    let s = Sandbox::sqlite();
    let id = block_on(async {
        let engine = s.engine().await;
        let id = engine.enqueue(PruneJobs {}).await.expect("enqueue").id();
        engine::testing::drain(&engine).await;
        id
    });
    let job = s.json(&["jobs", "show", &id.to_string(), "--json"]);
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["kind"], "prune_jobs");
    assert_eq!(job["attempts"][0]["outcome"], "succeeded", "{job}");
    let text = s.ok(&["jobs", "show", &id.to_string()]);
    assert!(text.contains("status:      succeeded"), "{text}");
    assert!(text.contains("ATTEMPT  WORKER"), "{text}");
    let attempt = text.lines().last().expect("attempt row");
    assert!(attempt.contains("succeeded"), "{text}");
    // Times are RFC 3339 UTC.
    let created = text
        .lines()
        .find_map(|l| l.strip_prefix("created:"))
        .expect("created line")
        .trim();
    assert!(
        chrono::DateTime::parse_from_rfc3339(created).is_ok() && created.ends_with('Z'),
        "{created}"
    );
}

// ---- serve and worker ------------------------------------------------------------------

/// A child process killed (SIGKILL) if the test fails before it exits.
struct Running {
    child: Child,
    stderr: PathBuf,
}

impl Running {
    fn start(mut cmd: Command, stderr: PathBuf) -> Self {
        let file = std::fs::File::create(&stderr).expect("stderr file");
        let child = cmd
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn veza-jobs");
        Self { child, stderr }
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().expect("try_wait") {
            panic!("veza-jobs exited early with {status}:\n{}", self.logs());
        }
    }

    /// Sends SIGTERM and waits for the exit status.
    fn terminate(&mut self, within: Duration) -> ExitStatus {
        let kill = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(kill.success(), "kill -TERM failed");
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                start.elapsed() < within,
                "still running {within:?} after SIGTERM:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn free_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr")
}

/// A GET over a fresh connection: status code and body.
fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    get_with(addr, path, &[])
}

/// A GET with extra headers.
fn get_with(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Connection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not HTTP: {response:?}")))?;
    let body = response
        .split_once("\r\n\r\n")
        .map_or("", |(_, body)| body)
        .to_owned();
    Ok((status, body))
}

fn json_body(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// `veza-jobs <args>` on `sandbox` answers /health, /ready and /openapi.json, then exits 0
/// on SIGTERM.
fn serve_answers_and_stops(s: &Sandbox, args: &[&str]) {
    let addr = free_addr();
    let mut cmd = s.command(args);
    cmd.env("HTTP_ADDR", addr.to_string())
        .env("SHUTDOWN_SERVICE_TIMEOUT", "3s")
        .env("SHUTDOWN_TIMEOUT", "5s");
    let mut server = Running::start(cmd, s.path().join("serve.log"));

    let start = Instant::now();
    let (status, body) = loop {
        server.assert_running();
        match get(addr, "/health") {
            Ok(answer) => break answer,
            Err(e) if start.elapsed() > Duration::from_secs(30) => {
                panic!("no answer on {addr}: {e}\n{}", server.logs())
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    assert_eq!(status, 200, "{body}");
    assert_eq!(json_body(&body), serde_json::json!({"status": "ok"}));

    let (status, body) = get(addr, "/ready").expect("/ready");
    assert_eq!(status, 200, "{body}\n{}", server.logs());
    let ready = json_body(&body);
    assert_eq!(ready["status"], "ok", "{ready}");
    for part in ["database", "workers", "scheduler"] {
        assert_eq!(ready["checks"][part], "ok", "{ready}");
    }

    let (status, body) = get(addr, "/openapi.json").expect("/openapi.json");
    assert_eq!(status, 200);
    let spec = json_body(&body);
    for path in ["/health", "/ready"] {
        assert!(spec["paths"][path]["get"].is_object(), "{path} in {spec}");
    }

    // A key made with the CLI opens /v1 on the running server, and never shows in its logs.
    let created = s.json(&[
        "api-key", "create", "--name", "e2e", "--scope", "read", "--json",
    ]);
    let key = created["key"].as_str().expect("key").to_owned();
    let (status, body) = get_with(addr, "/v1/jobs", &[("X-API-Key", &key)]).expect("/v1/jobs");
    assert_eq!(status, 200, "{body}");
    let (status, _) = get(addr, "/v1/jobs").expect("/v1/jobs");
    assert_eq!(status, 401);

    let status = server.terminate(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "{}", server.logs());
    let logs = server.logs();
    assert!(!logs.contains(&key), "a key in the logs: {logs}");
    assert!(logs.contains("shutdown complete"), "{logs}");
    assert!(
        get(addr, "/health").is_err(),
        "the listener is closed after shutdown"
    );
}

#[test]
fn serve_answers_health_and_ready_then_stops_on_sigterm() {
    let s = Sandbox::sqlite();
    serve_answers_and_stops(&s, &["serve"]);
}

#[test]
fn serve_is_the_default_command() {
    let s = Sandbox::sqlite();
    serve_answers_and_stops(&s, &[]);
}

#[test]
fn serve_on_postgres() {
    block_on(async {
        let Some(db) =
            engine::testing::TestDb::with_schema(Backend::Postgres, jobs::schema::migrator).await
        else {
            return;
        };
        let s = Sandbox::with_url(tempfile::tempdir().expect("temp dir"), db.url.clone());
        tokio::task::spawn_blocking(move || serve_answers_and_stops(&s, &["serve"]))
            .await
            .expect("serve test");
        drop(db);
    });
}

#[test]
fn worker_runs_jobs_without_http_and_stops_on_sigterm() {
    let s = Sandbox::sqlite();
    s.migrate();
    let out = s.ok(&["schedules", "run", "prune_jobs"]);
    assert!(out.contains("enqueued job 1"), "{out}");

    let addr = free_addr();
    let mut cmd = s.command(&["worker"]);
    cmd.env("HTTP_ADDR", addr.to_string())
        .env("JOB_POLL_INTERVAL", "100ms");
    let mut worker = Running::start(cmd, s.path().join("worker.log"));
    let start = Instant::now();
    loop {
        worker.assert_running();
        if status_of(&s, 1) == JobState::Succeeded.as_str() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "job 1 did not run:\n{}",
            worker.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(get(addr, "/health").is_err(), "worker serves no HTTP");
    let status = worker.terminate(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "{}", worker.logs());
}

#[test]
fn sigterm_while_connecting_exits_0_at_once() {
    // A "database" that accepts connections and never answers: connecting hangs.
    let silent = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!(
        "postgres://postgres@{}/x",
        silent.local_addr().expect("addr")
    );
    let s = Sandbox::with_url(tempfile::tempdir().expect("temp dir"), url);
    let mut cmd = s.command(&["serve"]);
    cmd.env("HTTP_ADDR", free_addr().to_string());
    let mut server = Running::start(cmd, s.path().join("serve.log"));
    std::thread::sleep(Duration::from_millis(500));
    server.assert_running();
    let status = server.terminate(Duration::from_secs(3));
    assert_eq!(status.code(), Some(0), "{}", server.logs());
    assert!(
        server.logs().contains("signal received while connecting"),
        "{}",
        server.logs()
    );
}

#[test]
fn serve_on_an_address_in_use_exits_1_naming_it() {
    let s = Sandbox::sqlite();
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let run = s.run_with(&["serve"], &[("HTTP_ADDR", &addr)]);
    assert_eq!(run.code(), 1, "{run}");
    assert!(
        run.stderr.contains(&format!("cannot listen on {addr}")),
        "{run}"
    );
}

// ---- demo ------------------------------------------------------------------------------

/// The `export NAME=value` lines of `veza-jobs demo`, unquoted.
fn demo_exports(stdout: &str) -> HashMap<String, String> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("export "))
        .map(|l| {
            let (name, rest) = l.split_once('=').expect("NAME=value");
            let value = match rest.strip_prefix('\'') {
                Some(quoted) => quoted.split_once('\'').expect("closing quote").0,
                None => rest.split_whitespace().next().unwrap_or_default(),
            };
            (name.to_owned(), value.to_owned())
        })
        .collect()
}

/// `veza-jobs demo` on `s`: what it made is what it printed, made through the domain's
/// functions (audit trail, state machines, real job runs); a second run is refused and
/// changes nothing. With `signing_key`, `EXPORT_SIGNING_KEY` is set.
fn demo_seeds_then_refuses(s: &Sandbox, signing_key: Option<&str>) {
    let vars: Vec<(&str, &str)> = signing_key
        .map(|k| ("EXPORT_SIGNING_KEY", k))
        .into_iter()
        .collect();
    let run = s.run_with(&["demo"], &vars);
    assert_eq!(run.code(), 0, "{run}");
    let out = demo_exports(&run.stdout);
    let id = |name: &str| -> i64 {
        out.get(name)
            .unwrap_or_else(|| panic!("{name} not printed: {run}"))
            .parse()
            .unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    let key = |name: &str| out.get(name).unwrap_or_else(|| panic!("{name}: {run}"));

    // The jobs ran for real: a thumbnail failed for good, a payout is retrying.
    let failed = s.json(&["jobs", "show", &id("FAILED_JOB").to_string(), "--json"]);
    assert_eq!(
        (&failed["kind"], &failed["status"]),
        (&Value::from("thumbnail"), &Value::from("failed")),
        "{failed}"
    );
    // Its first attempt waited for its children (one per size); the last one failed with
    // the child's error.
    let attempts = failed["attempts"].as_array().expect("attempts");
    assert!(
        attempts
            .last()
            .and_then(|a| a["error"].as_str())
            .is_some_and(|e| e.contains("truncated JPEG")),
        "{failed}"
    );
    let retrying = s.json(&["jobs", "show", &id("RETRYING_JOB").to_string(), "--json"]);
    assert_eq!(
        (&retrying["kind"], &retrying["status"]),
        (&Value::from("transfer_seller"), &Value::from("retrying")),
        "{retrying}"
    );
    assert!(
        retrying["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("no Stripe connected account")),
        "{retrying}"
    );
    // The thumbnails of one cover are on disk; the covers are real images.
    let media = s.path().join("media");
    let thumbs = media.join(format!("thumbnails/{}", id("THUMBED_TRACK_ID")));
    assert!(thumbs.join("64.jpg").is_file() && thumbs.join("512.webp").is_file());
    for cover in ["night-drive.jpg", "low-tide.png"] {
        image::open(media.join("demo/covers").join(cover))
            .unwrap_or_else(|e| panic!("{cover}: {e}"));
    }

    block_on(async {
        let engine = s.engine().await;
        let db = engine.db();
        let mut conn = db.acquire().await.expect("conn");
        // The given-up payout: created by the webhook's event, failed by its job, given up
        // by the CLI, each step audited.
        let transfer = jobs::transfers::state::load(&mut conn, id("TRANSFER_ID"))
            .await
            .expect("load")
            .expect("the transfer");
        assert_eq!(
            transfer.status(),
            jobs::transfers::TransferStatus::PermanentlyFailed
        );
        assert_eq!(transfer.seller_id, id("SELLER_ID"));
        let trail = engine::state_machine::history(
            &mut conn,
            "seller_transfer",
            &id("TRANSFER_ID").to_string(),
        )
        .await
        .expect("history");
        let steps: Vec<(&str, &str)> = trail
            .iter()
            .map(|t| {
                (
                    t.to_status.as_str(),
                    t.actor.split(':').next().unwrap_or(""),
                )
            })
            .collect();
        assert_eq!(
            steps,
            [
                ("pending", "webhook"),
                ("failed", "job"),
                ("permanently_failed", "cli")
            ],
            "{trail:?}"
        );
        // Tracks became ready through their state machine.
        let ready = engine::state_machine::history(&mut conn, "track", &out["TRACK_ID"])
            .await
            .expect("history");
        assert_eq!(
            (ready[0].from_status.as_str(), ready[0].to_status.as_str()),
            ("processing", "ready")
        );
        // The partial refund is listed for an admin.
        let refunds = jobs::payments::orders::list_partial_refunds(&mut conn, 0, 10)
            .await
            .expect("refunds");
        assert_eq!(refunds.len(), 1, "{refunds:?}");
        // Each key has its scope.
        let now = engine.clock().now_ms();
        for (name, scope) in [
            ("KEY", api::auth::Scope::Admin),
            ("READ_KEY", api::auth::Scope::Read),
            ("WRITE_KEY", api::auth::Scope::Write),
        ] {
            let caller = api::auth::keys::authenticate(db, key(name), now)
                .await
                .expect("authenticate")
                .unwrap_or_else(|| panic!("{name} is refused"));
            assert_eq!(caller.scope, scope, "{name}");
        }
        // Eve's deletion is pending; Ada is active.
        let eve = jobs::users::deletion_status(db, id("LEAVING_USER_ID"))
            .await
            .expect("status");
        assert_eq!(eve.status, jobs::users::UserStatus::DeletionRequested);
        drop(conn);
        engine.db().close().await;
    });

    // The download link is signed with the configured key, or with the one printed.
    let url = key("DOWNLOAD_URL");
    let printed = out.get("EXPORT_SIGNING_KEY");
    assert_eq!(printed.is_some(), signing_key.is_none(), "{run}");
    let signer = signing_key.or(printed.map(String::as_str)).expect("a key");
    let query = url.split_once('?').expect("a query").1;
    let param = |name: &str| {
        query
            .split('&')
            .find_map(|p| p.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("{name} in {url}"))
    };
    let export_id: i64 = url
        .split("/exports/")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .and_then(|id| id.parse().ok())
        .expect("export id");
    assert!(
        jobs::exports::token_is_valid(
            &jobs::exports::SigningKey::new(signer.as_bytes().to_vec()),
            export_id,
            param("expires").parse().expect("expires"),
            param("token"),
        ),
        "{url}"
    );

    // Again: refused, naming what is there, and nothing is added.
    let again = s.run_with(&["demo"], &vars);
    assert_eq!(again.code(), 1, "{again}");
    assert!(
        again
            .stderr
            .contains("the database is not empty (3 users, 3 tracks, 2 orders, 4 api_keys)"),
        "{again}"
    );
    assert_eq!(again.stdout, "", "{again}");
    let keys = s.json(&["api-key", "list", "--json"]);
    assert_eq!(keys.as_array().map(Vec::len), Some(4), "{keys}");
}

#[test]
fn demo_seeds_an_empty_database_and_refuses_a_second_run() {
    let s = Sandbox::sqlite();
    demo_seeds_then_refuses(&s, None);
}

#[test]
fn demo_on_postgres_with_a_configured_signing_key() {
    block_on(async {
        let Some(db) =
            engine::testing::TestDb::with_schema(Backend::Postgres, jobs::schema::migrator).await
        else {
            return;
        };
        let s = Sandbox::with_url(tempfile::tempdir().expect("temp dir"), db.url.clone());
        tokio::task::spawn_blocking(move || {
            demo_seeds_then_refuses(&s, Some("a-signing-key-of-at-least-32-characters"));
        })
        .await
        .expect("demo test");
        drop(db);
    });
}
