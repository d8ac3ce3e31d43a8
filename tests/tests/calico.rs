//! Calico-style clusters (`causeway lab up --cni calico`) and a mixed
//! clusterset (one Flannel, one Calico): the smoke subset of settled
//! decision 17. Causeway must work on top of Calico's datapath unchanged:
//! routed `cali*` veths with proxy ARP, VXLAN between nodes, and a
//! `natOutgoing` masquerade that would hide every pod behind its node if
//! Causeway's NAT did not bind first.

use std::time::{Duration, Instant};

use causeway_tests::{Lab, causeway, host_links, is_running, namespaces_with_prefix, ok};
use serde_json::Value;

const NAME: &str = "web.default.svc.clusterset.local";
/// b's first export under Globalnet (see globalnet.rs).
const B_WEB: &str = "http://242.1.0.10/";

fn pod_ip(status: &Value, cluster: &str, pod: &str) -> String {
    status["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == cluster)
        .and_then(|c| {
            c["pods"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["name"] == pod)
        })
        .map(|p| p["ip"].as_str().unwrap().to_owned())
        .unwrap_or_else(|| panic!("no pod {cluster}/{pod}"))
}

/// The address a reply says the server saw, without the port.
fn seen(reply: &Value) -> String {
    let client = reply["client"].as_str().expect("client in the reply");
    client.rsplit_once(':').unwrap().0.to_owned()
}

/// One of cluster `octet`'s egress global IPs (242.octet.0.2-9).
fn in_egress_pool(ip: &str, octet: u8) -> bool {
    let o: Vec<u8> = ip.split('.').map(|x| x.parse().unwrap()).collect();
    o[..3] == [242, octet, 0] && (2..=9).contains(&o[3])
}

/// The echo reply to a GET from `target` once it comes from `cluster`
/// (bounded: 20 s), for a name whose answer is still moving.
fn echo_from(lab: &Lab, target: &str, url: &str, cluster: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = lab.exec(target, &["curl", "-sS", "--max-time", "2", url]);
        if let Ok(reply) = serde_json::from_slice::<Value>(&out.stdout)
            && reply["cluster"] == cluster
        {
            return reply;
        }
        assert!(
            Instant::now() < deadline,
            "GET {url} from {target} is not answered by cluster {cluster} after 20 s: {} {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The node and pod look as Calico leaves them.
fn assert_calico_datapath(lab: &Lab, cluster: &str) {
    let status = lab.status();
    let client = pod_ip(&status, cluster, "client-0");
    let node = format!("{cluster}/node-2");
    let vxlan = ok(
        lab.exec(&node, &["ip", "-d", "link", "show", "vxlan.calico"]),
        "ip link show vxlan.calico",
    );
    assert!(
        vxlan.contains("id 4096") && vxlan.contains("dstport 4789"),
        "{vxlan}"
    );
    let routes = ok(lab.exec(&node, &["ip", "route"]), "node routes");
    assert!(
        routes.contains("10.244.0.0/26 via 10.244.0.0 dev vxlan.calico")
            || routes.contains("10.245.0.0/26 via 10.245.0.0 dev vxlan.calico"),
        "other nodes' blocks go over VXLAN: {routes}"
    );
    let host_route = routes
        .lines()
        .find(|l| l.starts_with(&format!("{client} dev cali")))
        .unwrap_or_else(|| panic!("no /32 host route to {client} on a cali* veth: {routes}"));
    let veth = host_route.split_whitespace().nth(2).unwrap();
    let proxy_arp = ok(
        lab.exec(
            &node,
            &["cat", &format!("/proc/sys/net/ipv4/conf/{veth}/proxy_arp")],
        ),
        "proxy_arp",
    );
    assert_eq!(proxy_arp.trim(), "1", "proxy ARP on {veth}");
    let pod_routes = ok(
        lab.exec(&format!("{cluster}/client-0"), &["ip", "route"]),
        "pod routes",
    );
    assert!(
        pod_routes.contains("default via 169.254.1.1 dev eth0")
            && pod_routes.contains("169.254.1.1 dev eth0"),
        "{pod_routes}"
    );
    let nat = ok(
        lab.exec(&node, &["iptables-nft", "-t", "nat", "-S"]),
        "iptables-nft -t nat -S",
    );
    assert!(
        nat.contains("-A POSTROUTING") && nat.contains("-j cali-POSTROUTING"),
        "{nat}"
    );
    assert!(
        nat.contains("-A cali-POSTROUTING") && nat.contains("-j cali-nat-outgoing"),
        "{nat}"
    );
    assert!(
        nat.lines()
            .any(|l| l.starts_with("-A cali-nat-outgoing") && l.contains("-j MASQUERADE")),
        "{nat}"
    );
}

#[test]
fn calico_clusters_with_identical_cidrs_connect_through_globalnet_and_down_leaves_nothing() {
    let links_before = host_links();
    let lab = Lab::up_with("cal", Some("calico"), &[]);
    assert_eq!(lab.cni("a"), "calico");
    assert_eq!(lab.cni("b"), "calico");
    assert_calico_datapath(&lab, "a");
    let status = lab.status();

    // Inside a cluster, across nodes over VXLAN, nothing is translated.
    let client = pod_ip(&status, "a", "client-0");
    for web in ["web-0", "web-1"] {
        let url = format!("http://{}:8080/", pod_ip(&status, "a", web));
        let reply = lab.echo("a/client-0", &url);
        assert_eq!(
            (&reply["cluster"], &reply["pod"]),
            (&"a".into(), &web.into())
        );
        assert_eq!(seen(&reply), client, "pod to pod is not NATed: {reply}");
    }

    // Across clusters by global IP and by name, from the worker node's pod:
    // b sees one of a's egress global IPs, not a node address (natOutgoing).
    lab.export("b", "default/web");
    let reply = lab.echo_eventually("a/client-0", B_WEB);
    assert_eq!(reply["cluster"], "b", "{reply}");
    assert!(in_egress_pool(&seen(&reply), 0), "b saw {reply}");
    let reply = lab.echo_eventually("a/client-0", &format!("http://{NAME}/"));
    assert_eq!(reply["cluster"], "b", "{reply}");
    assert!(in_egress_pool(&seen(&reply), 0), "b saw {reply}");

    // Failover: the standby takes over and the same global IP answers.
    let active = lab.active_gateway("b");
    ok(
        causeway(&["lab", "kill", "--name", &lab.name, &format!("b/{active}")]),
        "lab kill",
    );
    let reply = lab.echo_eventually("a/client-0", B_WEB);
    assert_eq!(reply["cluster"], "b", "{reply}");
    assert!(in_egress_pool(&seen(&reply), 0), "b saw {reply}");
    assert_ne!(lab.active_gateway("b"), active, "the standby is active");

    let pids: Vec<i64> = lab.status()["processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["pid"].as_i64().unwrap())
        .collect();
    let run_dir = format!("/run/causeway/lab/{}", lab.name);
    lab.down();
    assert_eq!(
        namespaces_with_prefix(&lab.netns_prefix()),
        Vec::<String>::new()
    );
    for pid in pids {
        assert!(!is_running(pid), "process {pid} is still running");
    }
    assert!(
        !std::path::Path::new(&run_dir).exists(),
        "{run_dir} is left"
    );
    assert_eq!(
        host_links(),
        links_before,
        "the host's own links are unchanged"
    );
}

#[test]
fn calico_clusters_with_distinct_cidrs_reach_pods_both_ways_without_nat() {
    let lab = Lab::up_with("cald", Some("calico"), &["--distinct-cidrs"]);
    assert_calico_datapath(&lab, "b");
    let status = lab.status();
    for (from, to) in [("a", "b"), ("b", "a")] {
        for client in ["client-0", "web-0"] {
            let client_ip = pod_ip(&status, from, client);
            for web in ["web-0", "web-1"] {
                let url = format!("http://{}:8080/", pod_ip(&status, to, web));
                let reply = lab.echo_eventually(&format!("{from}/{client}"), &url);
                assert_eq!(reply["cluster"], to, "{reply}");
                assert_eq!(reply["pod"], web, "{reply}");
                assert_eq!(
                    seen(&reply),
                    client_ip,
                    "{from}/{client} reached {to}/{web} as someone else"
                );
            }
        }
    }
}

#[test]
fn a_flannel_and_a_calico_cluster_find_each_others_services_by_name() {
    let lab = Lab::up_with("calm", Some("a=flannel,b=calico"), &[]);
    assert_eq!(lab.cni("a"), "flannel");
    assert_eq!(lab.cni("b"), "calico");
    let text = ok(
        causeway(&["lab", "status", "--name", &lab.name]),
        "lab status",
    );
    assert!(
        text.contains("cluster a  cni flannel") && text.contains("cluster b  cni calico"),
        "lab status names each cluster's CNI:\n{text}"
    );
    let url = format!("http://{NAME}/");

    // Flannel to Calico.
    lab.export("b", "default/web");
    let reply = echo_from(&lab, "a/client-0", &url, "b");
    assert!(in_egress_pool(&seen(&reply), 0), "b saw {reply}");

    // Calico to Flannel: only a exports now, so b's name leads to a.
    lab.export("a", "default/web");
    lab.unexport("b", "default/web");
    let reply = echo_from(&lab, "b/client-0", &url, "a");
    assert!(in_egress_pool(&seen(&reply), 1), "a saw {reply}");
}

/// `rp_filter` of `scope` (`all` or an interface) on `target`.
fn rp_filter(lab: &Lab, target: &str, scope: &str) -> String {
    let file = format!("/proc/sys/net/ipv4/conf/{scope}/rp_filter");
    ok(lab.exec(target, &["cat", &file]), "read rp_filter")
        .trim()
        .to_owned()
}

#[test]
fn strict_rp_filter_on_calico_nodes_is_loosened_where_the_path_needs_it() {
    let lab = Lab::up_with("calrp", Some("calico"), &["--distinct-cidrs"]);
    let status = lab.status();
    let nodes = ["b/node-0", "b/node-1", "b/node-2"];
    // Strict everywhere, as some distributions' sysctl defaults leave a
    // node: traffic from a that crossed b's gateway arrives over
    // vxlan.calico and its replies leave by eth0, which strict mode drops.
    for node in nodes {
        ok(
            lab.exec(
                node,
                &[
                    "sh",
                    "-c",
                    "for i in all eth0 vxlan.calico; do echo 1 > /proc/sys/net/ipv4/conf/$i/rp_filter; done",
                ],
            ),
            "set strict rp_filter",
        );
    }
    // The route agents loosen them on their next resync (every 10 s).
    let deadline = Instant::now() + Duration::from_secs(25);
    for node in nodes {
        for scope in ["all", "eth0", "vxlan.calico"] {
            while rp_filter(&lab, node, scope) != "2" {
                assert!(
                    Instant::now() < deadline,
                    "{node} still has strict rp_filter on {scope}"
                );
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }
    // One web pod is off the active gateway's node, so its path crosses
    // vxlan.calico; both answer a's pods as themselves.
    let client = pod_ip(&status, "a", "client-0");
    for web in ["web-0", "web-1"] {
        let url = format!("http://{}:8080/", pod_ip(&status, "b", web));
        let reply = lab.echo_eventually("a/client-0", &url);
        assert_eq!(
            (&reply["cluster"], &reply["pod"]),
            (&"b".into(), &web.into())
        );
        assert_eq!(seen(&reply), client, "{reply}");
    }
    // A pod's own veth stays strict, as Felix sets it.
    let routes = ok(lab.exec("b/node-2", &["ip", "route"]), "routes");
    let veth = routes
        .lines()
        .find_map(|l| {
            l.split_whitespace()
                .nth(2)
                .filter(|d| d.starts_with("cali"))
        })
        .expect("a cali* veth");
    assert_eq!(rp_filter(&lab, "b/node-2", veth), "1");
}
