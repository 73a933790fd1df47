//! `flotilla store …`: status and membership changes of a running store group, through any member.

use std::time::Duration;

use anyhow::Result;
use clap::Subcommand;
use flotilla_store::{MembershipChange, StoreClient};

#[derive(Debug, Subcommand)]
pub(crate) enum StoreCommand {
    /// Print a member's view of the group as JSON.
    Status {
        #[arg(long, default_value = "http://127.0.0.1:2380")]
        endpoint: String,
    },
    /// Add a member that replicates but does not vote yet; returns once it has caught up.
    AddLearner {
        #[arg(long, default_value = "http://127.0.0.1:2380")]
        endpoint: String,
        id: u64,
        url: String,
    },
    /// Make a learner a voter.
    Promote {
        #[arg(long, default_value = "http://127.0.0.1:2380")]
        endpoint: String,
        id: u64,
    },
    /// Remove a member from the group.
    Remove {
        #[arg(long, default_value = "http://127.0.0.1:2380")]
        endpoint: String,
        id: u64,
    },
}

/// Membership changes wait for a learner to catch up, which can take a while on a big store.
const TIMEOUT: Duration = Duration::from_secs(120);

pub(crate) async fn run(command: StoreCommand) -> Result<()> {
    let (endpoint, change) = match command {
        StoreCommand::Status { endpoint } => {
            let status = StoreClient::connect(&endpoint, TIMEOUT).await?.status().await?;
            return print(&status);
        }
        StoreCommand::AddLearner { endpoint, id, url } => (endpoint, MembershipChange::AddLearner { id, addr: url }),
        StoreCommand::Promote { endpoint, id } => (endpoint, MembershipChange::Promote { id }),
        StoreCommand::Remove { endpoint, id } => (endpoint, MembershipChange::Remove { id }),
    };
    let membership = StoreClient::connect(&endpoint, TIMEOUT).await?.change_membership(change).await?;
    print(&membership)
}

/// Prints an answer as JSON.
fn print(answer: &impl serde::Serialize) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", serde_json::to_string_pretty(answer)?)?;
    Ok(())
}
