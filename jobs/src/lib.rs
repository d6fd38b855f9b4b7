//! veza-jobs' job kinds: one module per kind (args, handler, policy, tests), and the
//! domain state machines they drive.
//!
//! | kind | module | triggered by |
//! |---|---|---|
//! | `orphan_sweep` | [`orphan_sweep`] | schedule: at boot and hourly |
//! | `prune_jobs` | `engine::retention` | schedule: hourly |

use std::path::PathBuf;
use std::sync::Arc;

use engine::config::{Env, VarSpec};
use engine::scheduler::Schedule;
use engine::{Job, Registry};

pub mod orphan_sweep;
pub mod tracks;

macro_rules! var {
    ($ident:ident, $name:literal, $default:literal, $help:literal) => {
        #[doc = $help]
        pub const $ident: VarSpec = VarSpec {
            name: $name,
            default: $default,
            help: $help,
        };
    };
}

var!(
    MEDIA_ROOT,
    "MEDIA_ROOT",
    "./media",
    "Directory holding uploaded media; tracks' file_path is relative to it."
);
var!(
    ORPHAN_TRACK_AGE,
    "ORPHAN_TRACK_AGE",
    "1h",
    "A track still processing after this long with no file on disk is failed by orphan_sweep."
);

/// The job kinds' variables, in `.env.template` order.
pub const VARS: &[VarSpec] = &[MEDIA_ROOT, ORPHAN_TRACK_AGE];

/// Settings of every job kind.
#[derive(Debug, Clone)]
pub struct JobsConfig {
    /// Orphan sweep settings.
    pub sweep: orphan_sweep::SweepSettings,
}

impl JobsConfig {
    /// Reads the job kinds' variables.
    pub fn read(env: &mut Env) -> Self {
        Self {
            sweep: orphan_sweep::SweepSettings {
                media_root: PathBuf::from(env.string(&MEDIA_ROOT)),
                min_age: env.duration(&ORPHAN_TRACK_AGE),
            },
        }
    }
}

/// Registers every job kind (the engine's built-in `prune_jobs` included).
pub fn register_all(registry: &mut Registry, config: &JobsConfig) {
    engine::retention::register(registry);
    let sweep = Arc::new(config.sweep.clone());
    registry.register::<orphan_sweep::OrphanSweep, _, _>(move |args, ctx| {
        let sweep = Arc::clone(&sweep);
        async move { orphan_sweep::handle(args, ctx, &sweep).await }
    });
}

/// Every schedule.
pub fn schedules() -> Vec<Schedule> {
    vec![orphan_sweep::schedule(), engine::retention::schedule()]
}

/// Every kind's name, as registered by [`register_all`].
pub const KINDS: &[&str] = &[
    orphan_sweep::OrphanSweep::KIND,
    engine::retention::PruneJobs::KIND,
];
