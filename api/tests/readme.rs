//! The README's five-minute tour and its HTTP API examples, run as printed: every command
//! of their `sh` blocks, in order, through `sh` and the real `curl`, with the real binary
//! on `PATH`, in a new directory (so on a new SQLite database, or a new Postgres database
//! when `TEST_POSTGRES_URL` is set). The tour starts with `veza-jobs demo`; the only
//! changes made to a command are the server's address (a free port instead of
//! `localhost:8080`) and a `curl` that also reports the status code. Each command must exit
//! 0 and each HTTP answer must be 2xx.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use engine::Backend;
use engine::testing::TestDb;

const BIN: &str = env!("CARGO_BIN_EXE_veza-jobs");

/// The address the README's examples use.
const README_ADDR: &str = "localhost:8080";

/// Prepended to each command: `curl` as printed, plus a line with the status code of each
/// answer, and a bound on how long it may take.
const CURL_PRELUDE: &str =
    "curl() { command curl --max-time 30 -w '\\n@@status=%{http_code}\\n' \"$@\"; }\n";

fn readme() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The commands of the first `sh` block under the `## {heading}` section: continued lines
/// joined, comments and blank lines left out.
fn commands(readme: &str, heading: &str) -> Vec<String> {
    let section = readme
        .split("\n## ")
        .find(|s| s.starts_with(heading))
        .unwrap_or_else(|| panic!("no section {heading:?} in the README"));
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|rest| rest.split("\n```").next())
        .unwrap_or_else(|| panic!("no sh block in {heading:?}"));
    let mut out = Vec::new();
    let mut pending = String::new();
    for line in block.lines() {
        let line = strip_comment(line);
        let line = line.trim();
        if let Some(start) = line.strip_suffix('\\') {
            pending.push_str(start.trim_end());
            pending.push(' ');
            continue;
        }
        pending.push_str(line);
        let command = std::mem::take(&mut pending);
        if !command.is_empty() {
            out.push(command);
        }
    }
    assert!(
        pending.is_empty(),
        "a continued line ends the block: {pending}"
    );
    out
}

/// `line` without its shell comment (a `#` after a blank, outside quotes).
fn strip_comment(line: &str) -> &str {
    let mut quote = None;
    let mut previous = ' ';
    for (i, c) in line.char_indices() {
        match (quote, c) {
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '#') if previous.is_whitespace() => return &line[..i],
            _ => {}
        }
        previous = c;
    }
    line
}

/// A directory where the README's commands run, its environment (grown by `. ./file`)
/// and the server started in the background.
struct Session {
    dir: tempfile::TempDir,
    addr: SocketAddr,
    env: BTreeMap<String, String>,
    server: Option<Child>,
    ran: Vec<String>,
}

impl Session {
    fn new(database_url: Option<&str>) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let addr = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port");
        let bin_dir = Path::new(BIN).parent().expect("the binary's directory");
        let system_path = std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".to_owned());
        let mut env = BTreeMap::from([
            (
                "PATH".to_owned(),
                format!("{}:{system_path}", bin_dir.display()),
            ),
            ("HOME".to_owned(), dir.path().display().to_string()),
            ("LOG_LEVEL".to_owned(), "info".to_owned()),
            ("HTTP_ADDR".to_owned(), addr.to_string()),
            (
                "EXPORT_LINK_BASE_URL".to_owned(),
                format!("http://{addr}/v1/exports"),
            ),
        ]);
        if let Some(url) = database_url {
            env.insert("DATABASE_URL".to_owned(), url.to_owned());
        }
        Self {
            dir,
            addr,
            env,
            server: None,
            ran: Vec::new(),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn sh(&self, script: &str) -> Command {
        let mut cmd = Command::new("sh");
        cmd.arg("-u")
            .arg("-c")
            .arg(script)
            .env_clear()
            .envs(&self.env)
            .current_dir(self.path())
            .stdin(Stdio::null());
        cmd
    }

    fn server_log(&self) -> String {
        std::fs::read_to_string(self.path().join("serve.log")).unwrap_or_default()
    }

    /// Runs one README command.
    fn run(&mut self, command: &str) {
        let command = command.replace(README_ADDR, &self.addr.to_string());
        if command.starts_with("cargo ") {
            assert_eq!(
                command, "cargo install --path api",
                "the README's examples call veza-jobs, and say once how to install it"
            );
            // The binary under test is on PATH already.
        } else if let Some(file) = command.strip_prefix(". ") {
            self.source(file);
        } else if let Some(background) = command.strip_suffix('&') {
            self.start_server(background.trim());
        } else if command == "kill -TERM %1" {
            self.stop_server();
        } else {
            self.run_foreground(&command);
        }
        self.ran.push(command);
    }

    /// `. ./file`: the variables it exports join the environment of later commands.
    fn source(&mut self, file: &str) {
        let out = self
            .sh(&format!(". {file} && env"))
            .output()
            .expect("run sh");
        assert!(
            out.status.success(),
            ". {file} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The environment is the session's own (no multi-line values): one per line.
        for pair in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some((name, value)) = pair.split_once('=')
                && !["PWD", "OLDPWD", "SHLVL", "_"].contains(&name)
            {
                self.env.insert(name.to_owned(), value.to_owned());
            }
        }
    }

    /// `… &`: started in the background (with its log in `serve.log`), then awaited until
    /// it answers `/health`, as a person would before going on.
    fn start_server(&mut self, command: &str) {
        assert!(
            self.server.is_none(),
            "a second background command: {command}"
        );
        let log = std::fs::File::create(self.path().join("serve.log")).expect("log file");
        let child = self
            .sh(&format!("exec {command}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn the server");
        self.server = Some(child);
        let start = Instant::now();
        while health(self.addr) != Some(200) {
            if let Some(status) = self
                .server
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("{command} exited with {status}:\n{}", self.server_log());
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "{command}: no answer on {}:\n{}",
                self.addr,
                self.server_log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `kill -TERM %1`: the background server stops, with exit code 0.
    fn stop_server(&mut self) {
        let mut child = self
            .server
            .take()
            .expect("kill %1 without a background job");
        let kill = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(kill.success());
        let start = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                break status;
            }
            assert!(
                start.elapsed() < Duration::from_secs(40),
                "the server still runs 40 s after SIGTERM:\n{}",
                self.server_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_eq!(status.code(), Some(0), "{}", self.server_log());
    }

    /// Any other command: exit 0, and every HTTP answer 2xx.
    fn run_foreground(&self, command: &str) {
        let out = self
            .sh(&format!("{CURL_PRELUDE}{command}"))
            .output()
            .expect("run sh");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let context = || {
            format!(
                "{command}\n--- exit {}\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n--- server log\n{}",
                out.status,
                self.server_log()
            )
        };
        assert!(out.status.success(), "{}", context());
        let statuses: Vec<&str> = stdout
            .lines()
            .filter_map(|l| l.strip_prefix("@@status="))
            .collect();
        if command.starts_with("curl ") {
            assert!(!statuses.is_empty(), "no HTTP answer: {}", context());
        }
        for status in statuses {
            assert!(status.starts_with('2'), "HTTP {status}: {}", context());
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(mut child) = self.server.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The status of `GET /health`, if anything answers.
fn health(addr: SocketAddr) -> Option<u16> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET /health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    answer.split_whitespace().nth(1)?.parse().ok()
}

/// Runs the tour, then the HTTP API examples, in one session.
fn the_readme_runs_as_printed(database_url: Option<&str>) {
    let readme = readme();
    let tour = commands(&readme, "Five-minute tour");
    let api = commands(&readme, "HTTP API");
    assert!(
        tour.iter().any(|c| c.starts_with("veza-jobs demo")),
        "the tour seeds with veza-jobs demo: {tour:#?}"
    );
    assert_eq!(
        api.last().map(String::as_str),
        Some("kill -TERM %1"),
        "the server is stopped after the last example that needs it, not before"
    );
    let curl = Command::new("curl").arg("--version").output();
    assert!(
        curl.is_ok_and(|o| o.status.success()),
        "the README's examples need curl on PATH (e.g. apt-get install curl)"
    );
    let mut session = Session::new(database_url);
    for command in tour.iter().chain(&api) {
        session.run(command);
    }
    assert!(
        session.server.is_none(),
        "the examples leave no server running"
    );
    assert!(
        session.ran.len() >= 40,
        "ran only {} commands: {:#?}",
        session.ran.len(),
        session.ran
    );
    // The download link of the demo's export gave the ZIP itself.
    let zip = std::fs::read(session.path().join("export.zip")).expect("export.zip");
    assert!(zip.starts_with(b"PK"), "export.zip is not a ZIP");
}

#[test]
fn the_readme_examples_run_as_printed_on_sqlite() {
    the_readme_runs_as_printed(None);
}

#[test]
fn the_readme_examples_run_as_printed_on_postgres() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let Some(db) = TestDb::with_schema(Backend::Postgres, jobs::schema::migrator).await else {
            return;
        };
        let url = db.url.clone();
        tokio::task::spawn_blocking(move || the_readme_runs_as_printed(Some(&url)))
            .await
            .expect("the README session");
        drop(db);
    });
}

#[test]
fn commands_are_read_as_a_shell_reads_them() {
    let readme = "intro\n## Tour\n\ntext\n```sh\n# a comment\ncurl -s 'a#b' x  # why\n\
                  veza-jobs a \\\n     --b c   # more\n\n```\n```sh\nnot this\n```\n";
    assert_eq!(
        commands(readme, "Tour"),
        ["curl -s 'a#b' x", "veza-jobs a --b c"]
    );
}
