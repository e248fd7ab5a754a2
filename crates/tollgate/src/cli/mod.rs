//! The operator CLI for the management plane: `tollgate admin <group> <verb>` wraps each admin
//! API route, `tollgate apply -f DIR` syncs a directory of YAML declaratively. Both talk to a
//! running gateway's admin listener over HTTP, so an operator never hand-writes curl.

mod admin;
mod apply;
mod client;
mod table;

use anyhow::Result;
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;

pub use admin::AdminCommand;

/// Where the admin API is and how to authenticate: shared by `admin` and `apply`.
#[derive(Args)]
pub struct Connection {
    /// The admin listener's base URL (plain HTTP).
    #[arg(
        long,
        global = true,
        env = "TOLLGATE_ADMIN_URL",
        default_value = "http://127.0.0.1:9901"
    )]
    pub url: String,
    /// The bearer token: the platform admin token (`admin apis` and `admin usage` also take a
    /// tenant admin token, for that tenant's own; `apply` needs the platform one).
    // The value is never printed: not in help (hide_env_values), errors or output.
    #[arg(
        long,
        global = true,
        env = "TOLLGATE_ADMIN_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// Items per page when following list cursors (the CLI always fetches every page).
    #[arg(long, global = true, default_value_t = 100, hide = true,
        value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub page_size: u32,
}

// By hand, so that `{:?}` of the parsed command line cannot leak the token.
impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("url", &self.url)
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("page_size", &self.page_size)
            .finish()
    }
}

impl Connection {
    pub fn client(&self) -> Result<client::Client> {
        client::Client::new(&self.url, self.token.clone(), self.page_size)
    }
}

#[derive(Args, Debug)]
pub struct AdminArgs {
    #[command(flatten)]
    pub conn: Connection,
    /// Print the admin API's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: AdminCommand,
}

#[derive(Args, Debug)]
pub struct ApplyArgs {
    #[command(flatten)]
    pub conn: Connection,
    /// The directory: tenants.yaml, plans.yaml, consumers.yaml, apis/<tenant>/<api>.yaml|json.
    #[arg(long, short = 'f')]
    pub dir: PathBuf,
    /// Print the changes without making them.
    #[arg(long)]
    pub dry_run: bool,
    /// Also delete API-managed entities that are not in the directory.
    #[arg(long)]
    pub prune: bool,
}

/// `tollgate admin ...`.
pub fn admin(args: AdminArgs) -> ExitCode {
    finish(block_on(admin::run(args)))
}

/// `tollgate apply ...`.
pub fn apply(args: ApplyArgs) -> ExitCode {
    finish(block_on(apply::run(args)))
}

/// One request at a time: a single-threaded runtime is all a CLI needs.
fn block_on<T>(fut: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(fut)
}

/// Exit 0 on success; 1 with the problem (title, detail, each `errors[]` entry) on stderr.
fn finish(r: Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            match e.downcast_ref::<client::Problem>() {
                Some(p) => eprintln!("error: {p}"),
                None => eprintln!("error: {e:#}"),
            }
            ExitCode::FAILURE
        }
    }
}
