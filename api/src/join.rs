//! Joining a cluster to the clusterset: the registry of joined clusters,
//! the pure global CIDR allocator, and the etcd functions behind
//! `causeway broker init` and `causeway join` (auth, per-cluster user and
//! role, atomic allocation).

mod allocate;
mod etcd;
mod kubernetes;

pub use allocate::{
    DEFAULT_GLOBAL_RANGE, DEFAULT_PREFIX_LEN, GlobalCidrRequest, JoinRequest, RegisteredCluster,
    Registry, allocate,
};
pub use etcd::{BrokerInitOptions, JoinOutput, broker_init, cluster_role, cluster_user, join};
pub use kubernetes::{
    KubeJoinOutput, POLICY_NAME, REGISTRY_CONFIGMAP, REGISTRY_KEY, broker_policy, cluster_access,
    kube_broker_init, kube_join,
};
