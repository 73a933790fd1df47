//! End-to-end suites: each starts the real `flotilla` binary as a process and drives it with
//! real clients. Build the binary first (`cargo build --bin flotilla`; the test script does).

mod access;
mod at_rest;
mod autoscale;
mod clients;
mod escape;
mod flood;
mod harness;
mod hosts;
mod kube_client;
mod kubectl;
mod leader;
mod metrics;
mod nodes;
mod oci;
mod pods;
mod pressure;
mod registry;
mod restart;
mod serverless;
mod services;
mod store_crash;
mod workloads;
