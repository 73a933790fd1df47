//! More than one control plane at once: in a three-member group every member runs the
//! scheduler and the controllers, and Leases decide which one acts. Killing the leader hands
//! the work to another member within the lease duration, and at no moment do two controller
//! managers act on the same objects: a ReplicaSet never has more pods than it asks for.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};

use crate::harness::{Ports, Server};
use crate::kubectl::Kubectl;
use crate::pods::apply;

const SECRET: &str = "the-leader-election-test-group-secret-42";
const REPLICAS: usize = 5;

/// Starts member `id` of the group whose members listen on `all`.
fn member(dir: &std::path::Path, id: usize, all: &[Ports]) -> Result<Server> {
    let initial: Vec<String> =
        all.iter().enumerate().map(|(i, p)| format!("{}=https://127.0.0.1:{}", i + 1, p.peer)).collect();
    let args = [
        "--no-node",
        "--member-id",
        &id.to_string(),
        "--initial-cluster",
        &initial.join(","),
        "--cluster-token",
        SECRET,
        "--leader-elect-lease-duration",
        "4s",
        "--leader-elect-renew-deadline",
        "3s",
        "--leader-elect-retry-period",
        "1s",
    ];
    Server::start_with(&dir.join(format!("member-{id}")), all[id - 1].clone(), &args)
}

/// The member (1-based) that holds the Lease `name`, as its holder identity says.
fn holder(k: &Kubectl, name: &str) -> Result<Option<usize>> {
    let identity = k.ok(&["get", "lease", "-n", "kube-system", name, "-o", "jsonpath={.spec.holderIdentity}"])?;
    Ok(identity.rsplit_once("_member").and_then(|(_, id)| id.parse().ok()))
}

fn pods(k: &Kubectl) -> Result<usize> {
    Ok(k.ok(&["get", "pods", "-l", "app=lead", "-o", "name"])?.lines().count())
}

#[test]
fn one_controller_manager_acts_while_leaders_are_killed() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ports: Vec<Ports> = (0..3).map(|_| Ports::free()).collect();
    // Members wait for a quorum before they are ready: start them side by side.
    let starting: Vec<_> = (1..=3)
        .map(|id| {
            let (dir, ports) = (dir.path().to_path_buf(), ports.clone());
            std::thread::spawn(move || member(&dir, id, &ports))
        })
        .collect();
    let mut members: Vec<Option<Server>> =
        starting.into_iter().map(|t| t.join().expect("a starting thread").map(Some)).collect::<Result<_>>()?;
    let mut k = Kubectl::new("1.33", members[0].as_ref().context("member 1")?)?;
    let rs = format!(
        "apiVersion: apps/v1\nkind: ReplicaSet\nmetadata:\n  name: lead\nspec:\n  replicas: {REPLICAS}\n  selector:\n    matchLabels: {{app: lead}}\n  template:\n    metadata:\n      labels: {{app: lead}}\n    spec:\n      containers:\n      - name: c\n        image: hello:v1\n"
    );
    apply(&k, &rs)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while pods(&k)? != REPLICAS {
        ensure!(Instant::now() < deadline, "the ReplicaSet never got its pods");
        std::thread::sleep(Duration::from_millis(200));
    }

    for round in 0..3 {
        let leader = holder(&k, "kube-controller-manager")?.context("no controller manager leads")?;
        ensure!(holder(&k, "kube-scheduler")?.is_some(), "no scheduler leads");
        // Kill the leader; talk to a member that stays.
        members[leader - 1].take().context("the leader runs")?.kill()?;
        let survivor = members.iter().flatten().next().context("two members stay")?;
        k = k.for_server(survivor);
        // A pod goes while no one leads; the next leader replaces it, once.
        let victim = k.ok(&["get", "pods", "-l", "app=lead", "-o", "jsonpath={.items[0].metadata.name}"])?;
        k.ok(&["delete", "pod", &victim, "--wait=false"])?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut most = 0;
        let mut replaced = false;
        while Instant::now() < deadline {
            let now = pods(&k)?;
            most = most.max(now);
            ensure!(now <= REPLICAS, "round {round}: {now} pods of a ReplicaSet of {REPLICAS}: two controllers acted");
            let new_leader = holder(&k, "kube-controller-manager")?;
            if now == REPLICAS && new_leader.is_some_and(|l| l != leader) {
                replaced = true;
                // Watch a little longer: a second creator would show now.
                std::thread::sleep(Duration::from_secs(2));
                ensure!(pods(&k)? == REPLICAS, "round {round}: more pods appeared after the replacement");
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        ensure!(replaced, "round {round}: no other member took over (most pods seen: {most})");
        // The killed member comes back, as a candidate.
        members[leader - 1] = Some(member(dir.path(), leader, &ports)?);
    }
    Ok(())
}
