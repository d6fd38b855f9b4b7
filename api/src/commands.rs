//! What each command does, given the configuration.

use engine::admin::{self, JobFilter};
use engine::{Actor, Enqueued};

use crate::app::{App, Signal};
use crate::auth::keys;
use crate::cli::{ApiKeyCommand, Command, JobsCommand, ListArgs, SchedulesCommand};
use crate::config::Config;
use crate::output;

/// Runs `command`. Output goes to stdout; an error is returned for the caller to print.
pub async fn execute(command: Command, config: Config) -> anyhow::Result<()> {
    match command {
        Command::Serve => serve(config, true).await,
        Command::Worker => serve(config, false).await,
        Command::Migrate => {
            let app = App::connect(config).await?;
            let result = app.migrate().await;
            app.close().await;
            result
        }
        Command::Demo => {
            let demo = crate::demo::seed(config).await?;
            print!("{}", demo.script());
            Ok(())
        }
        Command::Jobs(cmd) => {
            let app = App::connect(config).await?;
            let result = jobs(&app, cmd).await.map_err(with_hint);
            app.close().await;
            result
        }
        Command::ApiKey(cmd) => {
            let app = App::connect(config).await?;
            let result = api_keys(&app, cmd).await.map_err(with_hint);
            app.close().await;
            result
        }
        Command::Schedules(cmd) => {
            let app = App::connect(config).await?;
            let result = schedules(&app, cmd).await.map_err(with_hint);
            app.close().await;
            result
        }
    }
}

async fn serve(config: Config, http: bool) -> anyhow::Result<()> {
    // Before anything slow: a signal during start-up must not kill the process unstopped.
    let mut signal = Signal::install().await;
    let app = tokio::select! {
        app = App::connect(config) => app?,
        () = &mut signal => {
            tracing::info!("signal received while connecting; nothing started");
            return Ok(());
        }
    };
    let result = app.run(http, signal).await.map(drop);
    app.close().await;
    result
}

async fn jobs(app: &App, command: JobsCommand) -> anyhow::Result<()> {
    let engine = &app.engine;
    match command {
        JobsCommand::List(args) => {
            let page = admin::list_jobs(engine.db(), &filter(&args)).await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&page)?);
            } else {
                print!("{}", output::job_page(&page));
            }
        }
        JobsCommand::Show { id, json } => {
            let job = admin::get_job(engine.db(), id).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&job)?);
            } else {
                print!("{}", output::job_detail(&job));
            }
        }
        JobsCommand::Retry { id } => {
            let state = engine.retry(id, &Actor::cli()).await?;
            println!("job {id} is now {state}");
        }
        JobsCommand::Cancel { id } => {
            let state = engine.cancel(id, &Actor::cli()).await?;
            println!("job {id} is now {state}");
        }
    }
    Ok(())
}

fn filter(args: &ListArgs) -> JobFilter {
    JobFilter {
        kind: args.kind.clone(),
        status: args.status,
        since: args.since.map(|t| t.timestamp_millis()),
        until: args.until.map(|t| t.timestamp_millis()),
        before_id: args.cursor,
        limit: Some(args.limit),
        unique_key: None,
    }
}

async fn schedules(app: &App, command: SchedulesCommand) -> anyhow::Result<()> {
    let scheduler = app.scheduler();
    match command {
        SchedulesCommand::List { json } => {
            let list = scheduler.list().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                let left_out = jobs::payments::unscheduled(&app.config.jobs.payments);
                print!("{}", output::schedules(&list, &left_out));
            }
        }
        SchedulesCommand::Run { name } => match scheduler.run_now(&name, &Actor::cli()).await? {
            Enqueued::Inserted(id) => println!("schedule {name}: enqueued job {id}"),
            Enqueued::Existing(id) => println!(
                "schedule {name}: its previous run, job {id}, is unfinished; nothing new enqueued"
            ),
        },
    }
    Ok(())
}

async fn api_keys(app: &App, command: ApiKeyCommand) -> anyhow::Result<()> {
    let db = app.engine.db();
    let now = app.engine.clock().now_ms();
    match command {
        ApiKeyCommand::Create { name, scope, json } => {
            let created = keys::create(db, &name, scope, &Actor::cli(), now).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&created)?);
            } else {
                print!("{}", output::created_key(&created));
            }
        }
        ApiKeyCommand::List { json } => {
            let list = keys::list(db).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                print!("{}", output::api_keys(&list));
            }
        }
        ApiKeyCommand::Revoke { id } => match keys::revoke(db, id, &Actor::cli(), now).await? {
            Some(info) => println!(
                "API key {id} ({}) revoked at {}",
                output::one_line(&info.name),
                output::time(info.revoked_at.unwrap_or(now))
            ),
            None => anyhow::bail!("no API key has id {id}"),
        },
    }
    Ok(())
}

/// Adds what to do when the tables are missing: the database was never migrated.
fn with_hint(e: anyhow::Error) -> anyhow::Error {
    let text = crate::error_text(&e);
    if text.contains("no such table") || text.contains("does not exist") {
        e.context("the database is not migrated: run `veza-jobs migrate` first")
    } else {
        e
    }
}
