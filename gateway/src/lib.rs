//! The gateway: elects one active gateway per cluster, brings up the cable
//! (WireGuard, kernel or embedded userspace), configures one peer per remote
//! cluster, routes remote subnets through it and health-checks every peer.
//! The route agent, on every node, sends remote traffic to the active gateway.
//!
//! So far: [`cable`] holds the WireGuard side. Remote Endpoint records and the
//! local CIDRs are planned into peers (pure), diffed against the device, and
//! the difference is applied through a [`cable::Cable`] backend.

pub mod cable;
pub mod engine;
mod error;
pub mod health;
pub mod route_agent;
pub mod routes;

pub use error::Error;
