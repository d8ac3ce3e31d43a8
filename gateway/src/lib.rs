//! The gateway: elects one active gateway per cluster, brings up the cable
//! (WireGuard, kernel or embedded userspace), configures one peer per remote
//! cluster, routes remote subnets through it and health-checks every peer.
//! The route agent, on every node, sends remote traffic to the active gateway.
