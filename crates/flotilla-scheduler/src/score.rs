//! Scores: among the nodes a pod fits, which suits it best. Each scorer gives every node 0–100,
//! weighted as upstream's default profile weighs its plugins; the best total wins, ties broken
//! at random. Pure functions of the pod and the nodes as observed.

use crate::cluster::{NodeInfo, PodInfo};
use crate::filter::{term_matches, tolerates};

const MAX_SCORE: i64 = 100;

/// Upstream's default plugin weights.
const LEAST_ALLOCATED_WEIGHT: i64 = 1;
const BALANCED_WEIGHT: i64 = 1;
const SPREAD_WEIGHT: i64 = 2;
const NODE_AFFINITY_WEIGHT: i64 = 2;
const TAINT_WEIGHT: i64 = 3;

/// The total score of each of `nodes` for `pod`.
pub fn scores(pod: &PodInfo, nodes: &[&NodeInfo]) -> Vec<i64> {
    let mut totals = vec![0; nodes.len()];
    let mut add = |weight: i64, scores: Vec<i64>| {
        for (total, score) in totals.iter_mut().zip(scores) {
            *total += weight * score;
        }
    };
    add(LEAST_ALLOCATED_WEIGHT, nodes.iter().map(|n| least_allocated(pod, n)).collect());
    add(BALANCED_WEIGHT, nodes.iter().map(|n| balanced(pod, n)).collect());
    if let Some(owner) = &pod.owner {
        let counts: Vec<i64> = nodes.iter().map(|n| n.owners.get(owner).copied().unwrap_or(0) as i64).collect();
        add(SPREAD_WEIGHT, reverse_normalized(&counts));
    }
    let preferred = pod
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| a.preferred_during_scheduling_ignored_during_execution.as_deref())
        .unwrap_or_default();
    if !preferred.is_empty() {
        let sums: Vec<i64> = nodes
            .iter()
            .map(|n| {
                preferred
                    .iter()
                    .filter(|t| term_matches(&t.preference, &n.labels, &n.name))
                    .map(|t| t.weight as i64)
                    .sum()
            })
            .collect();
        add(NODE_AFFINITY_WEIGHT, normalized(&sums));
    }
    if nodes.iter().any(|n| n.taints.iter().any(|t| t.effect == "PreferNoSchedule")) {
        let intolerable: Vec<i64> = nodes
            .iter()
            .map(|n| {
                n.taints
                    .iter()
                    .filter(|t| t.effect == "PreferNoSchedule" && !pod.tolerations.iter().any(|tol| tolerates(tol, t)))
                    .count() as i64
            })
            .collect();
        add(TAINT_WEIGHT, reverse_normalized(&intolerable));
    }
    totals
}

/// The index of the best of `scores`, a tie broken at random (upstream's reservoir sampling).
pub fn best(scores: &[i64], rng: &mut fastrand::Rng) -> Option<usize> {
    let mut best = None;
    let mut ties = 0;
    for (i, &score) in scores.iter().enumerate() {
        match best {
            Some((_, top)) if score < top => {}
            Some((_, top)) if score == top => {
                ties += 1;
                if rng.usize(..ties) == 0 {
                    best = Some((i, score));
                }
            }
            _ => {
                best = Some((i, score));
                ties = 1;
            }
        }
    }
    best.map(|(i, _)| i)
}

/// Free capacity after placing the pod, cpu and memory averaged (upstream `LeastAllocated`).
fn least_allocated(pod: &PodInfo, node: &NodeInfo) -> i64 {
    let share = |requested: i64, capacity: i64| {
        if capacity <= 0 || requested > capacity { 0 } else { (capacity - requested) * MAX_SCORE / capacity }
    };
    let after = node.score_requested + pod.score_requests;
    (share(after.milli_cpu, node.allocatable.milli_cpu) + share(after.memory, node.allocatable.memory)) / 2
}

/// How evenly cpu and memory would be used (upstream `BalancedAllocation`: one minus the
/// standard deviation of the shares, which for two resources is half their difference).
fn balanced(pod: &PodInfo, node: &NodeInfo) -> i64 {
    let fraction = |requested: i64, capacity: i64| {
        if capacity <= 0 { 1.0 } else { (requested as f64 / capacity as f64).min(1.0) }
    };
    let after = node.score_requested + pod.score_requests;
    let cpu = fraction(after.milli_cpu, node.allocatable.milli_cpu);
    let memory = fraction(after.memory, node.allocatable.memory);
    ((1.0 - (cpu - memory).abs() / 2.0) * MAX_SCORE as f64) as i64
}

/// Scales raw values to 0–100, the highest getting 100.
fn normalized(raw: &[i64]) -> Vec<i64> {
    let max = raw.iter().copied().max().unwrap_or(0);
    raw.iter().map(|v| if max > 0 { v * MAX_SCORE / max } else { 0 }).collect()
}

/// Scales raw values to 0–100, the lowest getting 100 (fewer siblings, fewer taints).
fn reverse_normalized(raw: &[i64]) -> Vec<i64> {
    let max = raw.iter().copied().max().unwrap_or(0);
    raw.iter().map(|v| if max > 0 { MAX_SCORE - v * MAX_SCORE / max } else { MAX_SCORE }).collect()
}
