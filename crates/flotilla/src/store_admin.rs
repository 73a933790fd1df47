//! `flotilla store …`: status and membership changes of a running store group, through any member.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::{Args, Subcommand};
use flotilla_store::{MembershipChange, StoreClient};

/// Which member to talk to, and as whom: the peer API answers members only, so `flotilla
/// store` calls as the member whose data directory it is given (run it on a member's machine).
#[derive(Debug, Args)]
pub(crate) struct Endpoint {
    #[arg(long, default_value = "https://127.0.0.1:2380")]
    endpoint: String,
    /// The data directory of a member of the group, whose credentials to call with.
    #[arg(long, env = "FLOTILLA_DATA_DIR", default_value_os_t = crate::default_data_dir())]
    data_dir: PathBuf,
}

impl Endpoint {
    async fn connect(&self) -> Result<StoreClient> {
        let tls = crate::peer::member_client(&self.data_dir)?;
        Ok(StoreClient::connect(&self.endpoint, &tls, TIMEOUT).await?)
    }
}

#[derive(Debug, Subcommand)]
pub(crate) enum StoreCommand {
    /// Print a member's view of the group as JSON.
    Status {
        #[command(flatten)]
        endpoint: Endpoint,
    },
    /// Add a member that replicates but does not vote yet; returns once it has caught up.
    AddLearner {
        #[command(flatten)]
        endpoint: Endpoint,
        id: u64,
        url: String,
    },
    /// Make a learner a voter.
    Promote {
        #[command(flatten)]
        endpoint: Endpoint,
        id: u64,
    },
    /// Remove a member from the group.
    Remove {
        #[command(flatten)]
        endpoint: Endpoint,
        id: u64,
    },
}

/// Membership changes wait for a learner to catch up, which can take a while on a big store.
const TIMEOUT: Duration = Duration::from_secs(120);

pub(crate) async fn run(command: StoreCommand) -> Result<()> {
    let (endpoint, change) = match command {
        StoreCommand::Status { endpoint } => {
            let status = endpoint.connect().await?.status().await?;
            return print(&status);
        }
        StoreCommand::AddLearner { endpoint, id, url } => (endpoint, MembershipChange::AddLearner { id, addr: url }),
        StoreCommand::Promote { endpoint, id } => (endpoint, MembershipChange::Promote { id }),
        StoreCommand::Remove { endpoint, id } => (endpoint, MembershipChange::Remove { id }),
    };
    let membership = endpoint.connect().await?.change_membership(change).await?;
    print(&membership)
}

/// Prints an answer as JSON.
fn print(answer: &impl serde::Serialize) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", serde_json::to_string_pretty(answer)?)?;
    Ok(())
}
