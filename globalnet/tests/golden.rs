//! Golden files for the rendered nftables JSON. Review a change to them like
//! code; regenerate with `UPDATE_GOLDEN=1 cargo test -p causeway-globalnet --test golden`.

use std::net::SocketAddrV4;
use std::path::PathBuf;

use causeway_globalnet::ipam::ExportKey;
use causeway_globalnet::nft::{Observed, diff, render_pretty};
use causeway_globalnet::ruleset::{Input, Protocol, ServiceIngress, ServicePort, plan};

fn ep(s: &str) -> SocketAddrV4 {
    s.parse().unwrap()
}

fn input() -> Input {
    let mut i = Input::new(
        vec![
            "10.244.0.0/16".parse().unwrap(),
            "10.96.0.0/12".parse().unwrap(),
            "172.18.0.0/24".parse().unwrap(),
        ],
        vec![
            "242.1.0.0/16".parse().unwrap(),
            "242.2.0.0/16".parse().unwrap(),
        ],
    );
    i.egress = vec![
        "242.0.0.2".parse().unwrap(),
        "242.0.0.3".parse().unwrap(),
        "242.0.0.4".parse().unwrap(),
    ];
    i.services = vec![
        ServiceIngress {
            key: ExportKey::new("default", "web"),
            global_ip: "242.0.0.10".parse().unwrap(),
            ports: vec![
                ServicePort {
                    protocol: Protocol::Tcp,
                    port: 80,
                    endpoints: [ep("10.244.1.5:8080"), ep("10.244.2.5:8080")].into(),
                },
                ServicePort {
                    protocol: Protocol::Udp,
                    port: 53,
                    endpoints: [ep("10.244.1.5:5353")].into(),
                },
            ],
        },
        ServiceIngress {
            key: ExportKey::new("default", "idle"),
            global_ip: "242.0.0.11".parse().unwrap(),
            ports: vec![ServicePort {
                protocol: Protocol::Tcp,
                port: 443,
                endpoints: Default::default(),
            }],
        },
    ];
    i.hosts
        .insert("242.0.0.20".parse().unwrap(), "10.244.3.7".parse().unwrap());
    i.tunnel_mtu = Some(1420);
    i
}

fn check(name: &str, got: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; run with UPDATE_GOLDEN=1", path.display()));
    assert_eq!(
        got,
        want,
        "{} differs; review and regenerate",
        path.display()
    );
}

#[test]
fn full_table_from_empty() {
    let batch = diff(&plan(&input()), None);
    check("globalnet_create.json", &render_pretty(&batch));
}

/// Adding an export whose endpoint count is already served: map elements only.
#[test]
fn one_more_export() {
    let before = plan(&input());
    let mut i = input();
    i.services.push(ServiceIngress {
        key: ExportKey::new("shop", "cart"),
        global_ip: "242.0.0.12".parse().unwrap(),
        ports: vec![ServicePort {
            protocol: Protocol::Tcp,
            port: 8080,
            endpoints: [ep("10.244.1.8:8080"), ep("10.244.2.8:8080")].into(),
        }],
    });
    let batch = diff(&plan(&i), Some(&Observed::of_plan(&before)));
    check("globalnet_add_export.json", &render_pretty(&batch));
}

#[test]
fn rendering_is_byte_stable() {
    let a = render_pretty(&diff(&plan(&input()), None));
    let b = render_pretty(&diff(&plan(&input()), None));
    assert_eq!(a, b);
}

/// ClientIP session affinity on default/web: pin sets and rules appear.
#[test]
fn with_affinity() {
    let mut i = input();
    i.affinity.insert(ExportKey::new("default", "web"), 10800);
    let batch = diff(&plan(&i), None);
    check("globalnet_affinity.json", &render_pretty(&batch));
}
