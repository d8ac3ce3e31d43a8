//! The `causeway` binary's library: the lab (simulated clusters in network
//! namespaces) and the namespace plumbing every daemon started inside one
//! relies on. `main.rs` is a thin clap shell over it.

pub mod benchmark;
pub mod broker;
pub mod cleanup;
pub mod daemon;
pub mod diagnose;
pub mod gather;
pub mod lab;
pub mod metrics;
pub mod netns;
pub mod show;
pub mod topology;
pub mod verify;
