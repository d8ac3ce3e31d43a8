//! `causeway lighthouse corefile`: the CoreDNS configuration that forwards
//! the cluster-set zone (and nothing else) to Causeway's DNS server, for the
//! three common ways CoreDNS is configured.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::str::FromStr;

use crate::Error;

/// How the cluster's CoreDNS is configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    /// ConfigMap `kube-system/coredns`, key `Corefile` (kubeadm, most
    /// distributions).
    Kubeadm,
    /// k3s: ConfigMap `kube-system/coredns-custom`, whose `*.server` keys
    /// k3s's CoreDNS imports.
    K3s,
    /// RKE2: the `rke2-coredns` Helm chart, changed through a
    /// HelmChartConfig.
    Rke2,
}

impl FromStr for Flavour {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        match s.to_ascii_lowercase().as_str() {
            "kubeadm" => Ok(Flavour::Kubeadm),
            "k3s" => Ok(Flavour::K3s),
            "rke2" => Ok(Flavour::Rke2),
            _ => Err(Error::InvalidFlavour(s.to_owned())),
        }
    }
}

/// What the stanza forwards where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorefileOptions {
    /// The zone, without trailing dot (`clusterset.local`).
    pub zone: String,
    /// Causeway's DNS service address (its ClusterIP and port).
    pub upstream: SocketAddr,
    /// CoreDNS cache time in seconds; at most the records' TTL, so a cluster
    /// that fails leaves answers as fast as Causeway drops it.
    pub cache_seconds: u32,
}

impl CorefileOptions {
    /// Options for the default zone with a 5 s cache.
    pub fn new(upstream: SocketAddr) -> Self {
        Self {
            zone: "clusterset.local".to_owned(),
            upstream,
            cache_seconds: crate::dns::resolve::DEFAULT_TTL,
        }
    }
}

/// The server block itself, indented by `indent` spaces.
fn server_block(opts: &CorefileOptions, indent: usize) -> String {
    let pad = " ".repeat(indent);
    let zone = opts.zone.trim_end_matches('.');
    format!(
        "{pad}{zone}:53 {{\n\
         {pad}    errors\n\
         {pad}    cache {cache}\n\
         {pad}    forward . {upstream}\n\
         {pad}}}\n",
        cache = opts.cache_seconds,
        upstream = opts.upstream,
    )
}

/// Renders what to add to CoreDNS's configuration, with comments saying
/// where it goes. Only the zone is forwarded, so nothing else reaches
/// Causeway and no forwarding loop can form.
pub fn render(flavour: Flavour, opts: &CorefileOptions) -> String {
    let zone = opts.zone.trim_end_matches('.');
    let mut out = String::new();
    match flavour {
        Flavour::Kubeadm => {
            let _ = writeln!(
                out,
                "# Add this server block to the Corefile in ConfigMap kube-system/coredns\n\
                 # (kubectl -n kube-system edit configmap coredns), after the \".:53\" block.\n\
                 # CoreDNS's reload plugin picks it up within about a minute."
            );
            out.push_str(&server_block(opts, 0));
        }
        Flavour::K3s => {
            let _ = writeln!(
                out,
                "# k3s's CoreDNS imports every *.server key of ConfigMap kube-system/coredns-custom.\n\
                 # Apply this (kubectl apply -f -); if coredns-custom exists, add the key to it.\n\
                 apiVersion: v1\n\
                 kind: ConfigMap\n\
                 metadata:\n  \
                   name: coredns-custom\n  \
                   namespace: kube-system\n\
                 data:\n  \
                   {zone}.server: |"
            );
            out.push_str(&server_block(opts, 4));
        }
        Flavour::Rke2 => {
            let _ = writeln!(
                out,
                "# RKE2 renders CoreDNS's Corefile from the rke2-coredns chart's `servers` value.\n\
                 # Helm replaces a list whole, so this repeats the chart's default \".\" server;\n\
                 # keep any change you made to it. Apply with kubectl apply -f -.\n\
                 apiVersion: helm.cattle.io/v1\n\
                 kind: HelmChartConfig\n\
                 metadata:\n  \
                   name: rke2-coredns\n  \
                   namespace: kube-system\n\
                 spec:\n  \
                   valuesContent: |-\n    \
                     servers:\n    \
                     - zones:\n      \
                       - zone: .\n      \
                       port: 53\n      \
                       plugins:\n      \
                       - name: errors\n      \
                       - name: health\n        \
                         configBlock: |-\n          \
                           lameduck 5s\n      \
                       - name: ready\n      \
                       - name: kubernetes\n        \
                         parameters: cluster.local in-addr.arpa ip6.arpa\n        \
                         configBlock: |-\n          \
                           pods insecure\n          \
                           fallthrough in-addr.arpa ip6.arpa\n          \
                           ttl 30\n      \
                       - name: prometheus\n        \
                         parameters: 0.0.0.0:9153\n      \
                       - name: forward\n        \
                         parameters: . /etc/resolv.conf\n      \
                       - name: cache\n        \
                         parameters: 30\n      \
                       - name: loop\n      \
                       - name: reload\n      \
                       - name: loadbalance\n    \
                     - zones:\n      \
                       - zone: {zone}\n      \
                       port: 53\n      \
                       plugins:\n      \
                       - name: errors\n      \
                       - name: cache\n        \
                         parameters: {cache}\n      \
                       - name: forward\n        \
                         parameters: . {upstream}",
                cache = opts.cache_seconds,
                upstream = opts.upstream,
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> CorefileOptions {
        CorefileOptions::new("10.96.100.53:53".parse().unwrap())
    }

    #[test]
    fn kubeadm_stanza_forwards_only_the_zone() {
        let text = render(Flavour::Kubeadm, &opts());
        let body: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            body,
            [
                "clusterset.local:53 {",
                "    errors",
                "    cache 5",
                "    forward . 10.96.100.53:53",
                "}",
            ]
        );
    }

    #[test]
    fn k3s_is_a_coredns_custom_configmap() {
        let text = render(Flavour::K3s, &opts());
        assert!(text.contains("name: coredns-custom\n  namespace: kube-system\n"));
        assert!(
            text.contains(
                "  clusterset.local.server: |\n    clusterset.local:53 {\n        errors\n"
            )
        );
        assert!(
            text.ends_with("        forward . 10.96.100.53:53\n    }\n"),
            "{text}"
        );
    }

    #[test]
    fn rke2_keeps_the_default_server_and_adds_the_zone() {
        let text = render(Flavour::Rke2, &opts());
        assert!(text.contains("kind: HelmChartConfig\nmetadata:\n  name: rke2-coredns\n"));
        assert!(text.contains("      - zone: .\n"));
        assert!(text.contains("      - zone: clusterset.local\n"));
        assert!(
            text.contains("        parameters: . 10.96.100.53:53\n"),
            "{text}"
        );
        assert_eq!(text.matches("- name: forward").count(), 2);
    }

    #[test]
    fn flavours_parse() {
        assert_eq!("RKE2".parse::<Flavour>().unwrap(), Flavour::Rke2);
        assert!("microk8s".parse::<Flavour>().is_err());
    }
}
