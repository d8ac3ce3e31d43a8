//! Globalnet: allocates global IPs from the cluster's global CIDR, plans the
//! nftables ruleset of Causeway's own table (NAT, MSS clamping) as plain data,
//! and applies it by diffing the plan against what the kernel holds.
