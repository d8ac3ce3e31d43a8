use super::*;

fn source(cluster: &str, pod: &str, role: NodeRole) -> Source {
    Source {
        cluster: cluster.into(),
        pod: pod.into(),
        node: "node-0".into(),
        role,
        netns: format!("cw.t.{cluster}.{pod}"),
        nameserver: Some(Ipv4Addr::new(10, 244, 2, 3)),
    }
}

fn target(cluster: &str, exports_web: bool) -> Target {
    let octet = if cluster == "a" { 0 } else { 1 };
    Target {
        cluster: cluster.into(),
        pods: vec![
            (
                "web-0".into(),
                Ok(SocketAddr::from(([242, octet, 0, 11], 8080))),
            ),
            (
                "web-1".into(),
                Ok(SocketAddr::from(([242, octet, 0, 12], 8080))),
            ),
        ],
        service: if exports_web {
            Ok(SocketAddr::from(([242, octet, 0, 10], 80)))
        } else {
            Err(Verdict::Fail(format!(
                "{cluster} does not export default/web"
            )))
        },
        exports_web,
        headless_name: Ok(format!("cw-verify-{cluster}")),
    }
}

fn sources() -> Vec<Source> {
    vec![
        source("a", "web-0", NodeRole::Gateway),
        source("a", "client-0", NodeRole::Worker),
        source("b", "web-1", NodeRole::Gateway),
        source("b", "client-0", NodeRole::Worker),
    ]
}

#[test]
fn every_ordered_pair_gets_every_check_from_both_kinds_of_node() {
    let probes = plan(&sources(), &[target("a", true), target("b", true)], true);
    // 2 ordered pairs x 2 sources x (2 pods + service + DNS).
    assert_eq!(probes.len(), 16);
    for (from, to) in [("a", "b"), ("b", "a")] {
        for role in [NodeRole::Gateway, NodeRole::Worker] {
            let kinds: Vec<CheckKind> = probes
                .iter()
                .filter(|p| p.from.cluster == from && p.to == to && p.from.role == role)
                .map(|p| p.kind)
                .collect();
            assert_eq!(
                kinds,
                [
                    CheckKind::PodToPod,
                    CheckKind::PodToPod,
                    CheckKind::PodToService,
                    CheckKind::Dns
                ]
            );
        }
    }
    assert!(probes.iter().all(|p| p.from.cluster != p.to));
}

#[test]
fn pod_checks_expect_the_pod_behind_its_global_ip() {
    let probes = plan(
        &sources()[..1],
        &[target("a", true), target("b", true)],
        true,
    );
    let Action::Http { addr, cluster, pod } = &probes[1].action else {
        panic!("{:?}", probes[1]);
    };
    assert_eq!(addr.to_string(), "242.1.0.12:8080");
    assert_eq!(cluster, "b");
    assert_eq!(pod.as_deref(), Some("web-1"));
}

#[test]
fn dns_uses_the_web_name_only_when_the_source_does_not_export_it_itself() {
    // a does not export web, b does: a's lookups of web reach b.
    let probes = plan(&sources(), &[target("a", false), target("b", true)], true);
    let dns = |from: &str| {
        probes
            .iter()
            .find(|p| p.kind == CheckKind::Dns && p.from.cluster == from)
            .unwrap()
            .action
            .clone()
    };
    let Action::Dns {
        name,
        port,
        clusters,
        prefer,
        ..
    } = dns("a")
    else {
        panic!()
    };
    assert_eq!(name, SERVICE_DNS);
    assert_eq!(port, 80);
    assert_eq!(clusters, BTreeSet::from(["b".to_owned()]));
    assert_eq!(prefer, Some("242.1.0.10".parse().unwrap()));
    // b exports web itself, so its own ClusterIP would answer: b looks up
    // a's own headless export instead.
    let Action::Dns { name, port, .. } = dns("b") else {
        panic!()
    };
    assert_eq!(name, "cw-verify-a.default.svc.clusterset.local");
    assert_eq!(port, ECHO_PORT);
}

#[test]
fn an_unexported_service_fails_with_the_command_that_exports_it() {
    let probes = plan(&sources(), &[target("a", true), target("b", false)], true);
    let svc = probes
        .iter()
        .find(|p| p.kind == CheckKind::PodToService && p.to == "b")
        .unwrap();
    assert!(
        matches!(&svc.action, Action::Verdict(Verdict::Fail(why)) if why.contains("does not export")),
        "{svc:?}"
    );
    let results = run_probes(vec![svc.clone()]);
    assert_eq!(results[0].outcome, Outcome::Fail);
    let report = report("t".into(), true, results);
    let err = failure(&report).unwrap().to_string();
    assert!(
        err.contains("a/web-0 -> b pod to service: b does not export"),
        "{err}"
    );
    assert!(render(&report).contains("FAIL"));
}

#[test]
fn a_missing_headless_export_fails_the_pod_checks_with_its_reason() {
    let mut b = target("b", true);
    b.pods = vec![(
        "web-0".into(),
        Err("no import of headless default/cw-verify-b from b within 15 s".into()),
    )];
    b.headless_name = Err("no import of headless default/cw-verify-b from b within 15 s".into());
    let probes = plan(&sources()[..1], &[target("a", true), b], true);
    let pod = &probes[0];
    assert_eq!(pod.kind, CheckKind::PodToPod);
    assert!(matches!(&pod.action, Action::Verdict(Verdict::Fail(w)) if w.contains("cw-verify-b")));
    // a exports web itself and b's headless export is missing: nothing to
    // look up, and the line says why.
    let dns = probes.iter().find(|p| p.kind == CheckKind::Dns).unwrap();
    assert!(
        matches!(&dns.action, Action::Verdict(Verdict::Fail(w))
            if w.contains("a exports default/web itself") && w.contains("cw-verify-b from b")),
        "{dns:?}"
    );
    // Without b's web export either, the line names the command that exports it.
    let mut b = target("b", false);
    b.headless_name = Err("no import".into());
    let probes = plan(&sources()[..1], &[target("a", true), b], true);
    let dns = probes.iter().find(|p| p.kind == CheckKind::Dns).unwrap();
    assert!(
        matches!(&dns.action, Action::Verdict(Verdict::Fail(w)) if w.contains("causeway lab export b")),
        "{dns:?}"
    );
}

#[test]
fn skips_do_not_fail_the_report() {
    let mut b = target("b", true);
    b.service = Err(Verdict::Skip("nothing to check here".into()));
    let probes: Vec<Probe> = plan(&sources()[..1], &[target("a", true), b], false)
        .into_iter()
        .filter(|p| p.kind == CheckKind::PodToService)
        .collect();
    let report = report("t".into(), false, run_probes(probes));
    assert_eq!((report.passed, report.failed, report.skipped), (0, 0, 1));
    assert!(failure(&report).is_none());
}

#[test]
fn a_reply_from_the_wrong_cluster_or_pod_is_a_failure() {
    let reply = EchoReply {
        cluster: "a".into(),
        pod: "web-0".into(),
        client: "242.1.0.2:4000".into(),
    };
    let b = BTreeSet::from(["b".to_owned()]);
    assert!(
        check_reply(&reply, &b, None)
            .unwrap_err()
            .contains("wrong cluster")
    );
    let a = BTreeSet::from(["a".to_owned()]);
    assert!(
        check_reply(&reply, &a, Some("web-1"))
            .unwrap_err()
            .contains("another pod")
    );
    assert!(check_reply(&reply, &a, Some("web-0")).is_ok());
}

#[test]
fn without_globalnet_dns_looks_up_the_headless_name() {
    // The web name would answer a ClusterIP, which the lab cannot serve.
    let probes = plan(
        &sources()[..1],
        &[target("a", false), target("b", true)],
        false,
    );
    let dns = probes.iter().find(|p| p.kind == CheckKind::Dns).unwrap();
    let Action::Dns { name, .. } = &dns.action else {
        panic!("{dns:?}")
    };
    assert_eq!(name, "cw-verify-b.default.svc.clusterset.local");
}
