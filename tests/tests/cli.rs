//! The binary's operator commands and their answers to bad input.

use causeway_tests::{causeway, fails, ok};

#[test]
fn crdgen_prints_every_crd_from_the_rust_types() {
    let out = ok(causeway(&["crdgen"]), "crdgen");
    let names: Vec<&str> = out
        .lines()
        .filter_map(|l| l.strip_prefix("  name: "))
        .filter(|n| n.contains('.'))
        .collect();
    for want in [
        "clusters.causeway.io",
        "gatewayendpoints.causeway.io",
        "exportedservices.causeway.io",
        "connectionstatuses.causeway.io",
        "serviceexports.multicluster.x-k8s.io",
        "serviceimports.multicluster.x-k8s.io",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
}

#[test]
fn bad_flags_get_errors_that_name_what_to_fix() {
    let err = fails(
        causeway(&[
            "join",
            "--cluster",
            "Not_A_Label",
            "--broker",
            "http://127.0.0.1:1",
            "--root-password-file",
            "/nonexistent",
            "--pod-cidr",
            "10.244.0.0/16",
            "--service-cidr",
            "10.96.0.0/12",
            "--out",
            "/tmp/x",
        ]),
        "join with a bad cluster id",
    );
    assert!(err.contains("--cluster"), "{err}");

    let err = fails(
        causeway(&[
            "join",
            "--cluster",
            "a",
            "--broker",
            "http://127.0.0.1:1",
            "--root-password-file",
            "/nonexistent",
            "--pod-cidr",
            "10.244.0.0/33",
            "--service-cidr",
            "10.96.0.0/12",
            "--out",
            "/tmp/x",
        ]),
        "join with a bad CIDR",
    );
    assert!(err.contains("--pod-cidr"), "{err}");

    let dir = std::env::temp_dir().join(format!("cw-key-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("wireguard.key");
    std::fs::write(&key, "aGVsbG8=\n").unwrap();
    std::os::unix::fs::PermissionsExt::set_mode(
        &mut std::fs::metadata(&key).unwrap().permissions(),
        0o644,
    );
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let err = fails(
        causeway(&[
            "gateway",
            "--cluster",
            "a",
            "--node",
            "n",
            "--store",
            "http://127.0.0.1:1",
            "--broker-config",
            "/nonexistent",
            "--key-file",
            key.to_str().unwrap(),
            "--private-ip",
            "127.0.0.1",
            "--pod-cidr",
            "10.244.0.0/16",
            "--service-cidr",
            "10.96.0.0/12",
            "--tunnel-ip",
            "10.244.0.254",
        ]),
        "gateway with a key file others can read",
    );
    assert!(err.contains("chmod 600"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();

    let err = fails(
        causeway(&["lighthouse", "--listen", "127.0.0.1:5353"]),
        "lighthouse without --cluster",
    );
    assert!(err.contains("--cluster"), "{err}");
}
