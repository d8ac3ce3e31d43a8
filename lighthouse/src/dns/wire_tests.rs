//! Wire-level tests: sizes, truncation, malformed packets, golden answers.

use std::net::IpAddr;
use std::path::PathBuf;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};

use super::*;
use crate::dns::index::{
    Backing, ClusterExport, ClusterId, Endpoint, Index, Protocol, ServiceKey, ServicePort,
};
use crate::dns::resolve::ResolverOptions;

fn fixture() -> Index {
    crate::dns::resolve::tests::fixture()
}

/// `many` headless endpoints in cluster b, each with a named port.
fn big_index(many: u8) -> Index {
    let mut index = fixture();
    let endpoints = (0..many)
        .map(|i| {
            let ip: IpAddr = format!("242.1.1.{i}").parse().unwrap();
            Endpoint::new(Some(&format!("pod-{i}")), ip, true)
        })
        .collect();
    index.upsert_export(
        ServiceKey::new("default", "big").unwrap(),
        ClusterId::new("b").unwrap(),
        ClusterExport {
            ports: vec![ServicePort::new(Some("http"), Protocol::Tcp, 80)],
            backing: Backing::Headless { endpoints },
        },
    );
    index
}

fn query(name: &str, ty: RecordType, edns: Option<u16>) -> Vec<u8> {
    let mut m = Message::new(0x1234, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), ty));
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        m.set_edns(e);
    }
    m.to_vec().unwrap()
}

fn handle(packet: &[u8], transport: Transport, index: &Index) -> Handled {
    handle_packet(packet, transport, index, &ResolverOptions::default())
}

fn decode(handled: &Handled) -> Message {
    Message::from_vec(handled.response.as_ref().expect("a response")).unwrap()
}

#[test]
fn answer_echoes_id_flags_and_question() {
    let h = handle(
        &query("Web.Default.svc.clusterset.local.", RecordType::A, None),
        Transport::Udp,
        &fixture(),
    );
    let m = decode(&h);
    assert_eq!(m.metadata.id, 0x1234);
    assert_eq!(m.metadata.message_type, MessageType::Response);
    assert!(m.metadata.authoritative);
    assert!(m.metadata.recursion_desired);
    assert!(!m.metadata.recursion_available);
    assert_eq!(
        m.queries[0].name().to_ascii(),
        "Web.Default.svc.clusterset.local."
    );
    assert_eq!(m.answers.len(), 1);
    assert_eq!(
        m.answers[0].name.to_ascii(),
        "Web.Default.svc.clusterset.local."
    );
    assert!(m.edns.is_none(), "no OPT for a query without one");
    assert_eq!(h.qtype, Some(RecordType::A));
    assert_eq!(h.rcode, Some(ResponseCode::NoError));
}

#[test]
fn udp_answers_fit_the_clients_buffer_and_tcp_gets_them_whole() {
    let index = big_index(60);
    let name = "big.default.svc.clusterset.local.";
    // 60 A records (16 bytes each) do not fit 512 bytes.
    let plain = handle(&query(name, RecordType::A, None), Transport::Udp, &index);
    let m = decode(&plain);
    assert!(plain.truncated && m.metadata.truncation);
    assert!(m.answers.is_empty());
    assert_eq!(m.queries.len(), 1);
    assert!(plain.response.as_ref().unwrap().len() <= 512);
    // With EDNS 1232 they fit.
    let edns = handle(
        &query(name, RecordType::A, Some(1232)),
        Transport::Udp,
        &index,
    );
    let m = decode(&edns);
    assert!(!m.metadata.truncation);
    assert_eq!(m.answers.len(), 60);
    assert_eq!(m.edns.as_ref().unwrap().max_payload(), MAX_UDP_PAYLOAD);
    // A client that offers 64 KiB still gets at most our maximum.
    let srv = handle(
        &query(name, RecordType::SRV, Some(65000)),
        Transport::Udp,
        &index,
    );
    assert!(srv.response.as_ref().unwrap().len() <= usize::from(MAX_UDP_PAYLOAD));
    assert!(srv.truncated);
    // TCP: everything, additionals included.
    let tcp = handle(&query(name, RecordType::SRV, None), Transport::Tcp, &index);
    let m = decode(&tcp);
    assert!(!m.metadata.truncation);
    assert_eq!(m.answers.len(), 60);
    assert_eq!(m.additionals.len(), 60);
}

#[test]
fn additionals_are_dropped_before_answers_are_truncated() {
    // 7 SRV records (60 bytes each: SRV targets are never compressed) fit
    // 512 bytes; with their 7 additional A records they do not.
    let index = big_index(7);
    let h = handle(
        &query(
            "_http._tcp.big.default.svc.clusterset.local.",
            RecordType::SRV,
            None,
        ),
        Transport::Udp,
        &index,
    );
    let m = decode(&h);
    assert!(!m.metadata.truncation);
    assert_eq!(m.answers.len(), 7);
    assert!(m.additionals.is_empty());
    let tcp = decode(&handle(
        &query(
            "_http._tcp.big.default.svc.clusterset.local.",
            RecordType::SRV,
            None,
        ),
        Transport::Tcp,
        &index,
    ));
    assert_eq!(tcp.additionals.len(), 7);
}

/// A header: id 0xbeef, flags (QR/opcode/RD byte, RA/rcode byte), counts.
fn header(flags: [u8; 2], counts: [u16; 4]) -> Vec<u8> {
    let mut p = vec![0xbe, 0xef, flags[0], flags[1]];
    for c in counts {
        p.extend_from_slice(&c.to_be_bytes());
    }
    p
}

fn rcode_of(h: &Handled) -> ResponseCode {
    let m = decode(h);
    assert_eq!(m.metadata.id, 0xbeef);
    m.metadata.response_code
}

#[test]
fn malformed_packets_get_formerr_or_are_dropped() {
    let index = fixture();
    let question = {
        let q = query("web.default.svc.clusterset.local.", RecordType::A, None);
        q[12..].to_vec()
    };
    // Short of a header: nothing to answer to.
    for len in [0, 1, 11] {
        assert_eq!(
            handle(&vec![0u8; len], Transport::Udp, &index).response,
            None
        );
    }
    // A response (QR set) is never answered.
    let mut resp = header([0x81, 0x80], [1, 0, 0, 0]);
    resp.extend_from_slice(&question);
    assert_eq!(handle(&resp, Transport::Udp, &index).response, None);

    let formerr = |packet: Vec<u8>, what: &str| {
        let h = handle(&packet, Transport::Udp, &index);
        assert_eq!(rcode_of(&h), ResponseCode::FormErr, "{what}");
    };
    // Counts promising more than is there.
    formerr(header([1, 0], [1, 0, 0, 0]), "question missing");
    let mut p = header([1, 0], [1, 5, 0, 0]);
    p.extend_from_slice(&question);
    formerr(p, "answers missing");
    let mut p = header([1, 0], [1, 0, 0, 0]);
    p.extend_from_slice(&question[..question.len() - 3]);
    formerr(p, "question cut short");
    // A label longer than 63 bytes (0x40 is not a length).
    let mut p = header([1, 0], [1, 0, 0, 0]);
    p.push(64);
    p.extend_from_slice(&[b'a'; 64]);
    p.extend_from_slice(&[0, 0, 1, 0, 1]);
    formerr(p, "64-byte label");
    // A name over 255 bytes (five 63-byte labels).
    let mut p = header([1, 0], [1, 0, 0, 0]);
    for _ in 0..5 {
        p.push(63);
        p.extend_from_slice(&[b'a'; 63]);
    }
    p.extend_from_slice(&[0, 0, 1, 0, 1]);
    formerr(p, "256-byte name");
    // Compression loops: a pointer to itself, and two pointing at each other.
    let mut p = header([1, 0], [1, 0, 0, 0]);
    p.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
    formerr(p, "self pointer");
    let mut p = header([1, 0], [1, 0, 0, 0]);
    p.extend_from_slice(&[1, b'a', 0xc0, 16, 1, b'b', 0xc0, 12, 0, 1, 0, 1]);
    formerr(p, "pointer cycle");
    let mut p = header([1, 0], [1, 0, 0, 0]);
    p.extend_from_slice(&[0xc0, 200, 0, 1, 0, 1]);
    formerr(p, "pointer past the end");

    // Well-formed but not a single question.
    formerr(header([1, 0], [0, 0, 0, 0]), "no question");
    let mut p = header([1, 0], [2, 0, 0, 0]);
    p.extend_from_slice(&question);
    p.extend_from_slice(&question);
    formerr(p, "two questions");
    // Other opcodes (NOTIFY = 4, UPDATE = 5): NOTIMP.
    let mut p = header([4 << 3, 0], [1, 0, 0, 0]);
    p.extend_from_slice(&question);
    assert_eq!(
        rcode_of(&handle(&p, Transport::Udp, &index)),
        ResponseCode::NotImp
    );
}

#[test]
fn edns_version_above_zero_gets_badvers() {
    let mut m = Message::new(0xbeef, MessageType::Query, OpCode::Query);
    m.add_query(Query::query(
        Name::from_ascii("web.default.svc.clusterset.local.").unwrap(),
        RecordType::A,
    ));
    let mut e = Edns::new();
    e.set_version(1);
    m.set_edns(e);
    let h = handle(&m.to_vec().unwrap(), Transport::Udp, &fixture());
    assert_eq!(h.rcode, Some(ResponseCode::BADVERS));
    // 16 on the wire, which hickory decodes as BADSIG (they share the value).
    assert_eq!(u16::from(rcode_of(&h)), 16);
    assert!(
        decode(&h).edns.is_some(),
        "the high rcode bits need the OPT"
    );
}

#[test]
fn random_and_mutated_packets_never_panic() {
    let index = big_index(20);
    let seeds = [
        query(
            "web.default.svc.clusterset.local.",
            RecordType::A,
            Some(1232),
        ),
        query(
            "_pg._tcp.db.default.svc.clusterset.local.",
            RecordType::SRV,
            None,
        ),
        query("big.default.svc.clusterset.local.", RecordType::ANY, None),
    ];
    // xorshift: deterministic, no dependency.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut answered = 0;
    for i in 0..20_000 {
        let mut p = seeds[i % seeds.len()].clone();
        for _ in 0..(next() % 4 + 1) {
            let at = (next() as usize) % p.len();
            p[at] = next() as u8;
        }
        if next() % 5 == 0 {
            let len = (next() as usize) % p.len();
            p.truncate(len);
        }
        for transport in [Transport::Udp, Transport::Tcp] {
            let h = handle(&p, transport, &index);
            if let Some(bytes) = &h.response {
                answered += 1;
                if transport == Transport::Udp {
                    assert!(bytes.len() <= usize::from(MAX_UDP_PAYLOAD));
                }
            }
        }
    }
    assert!(answered > 1000, "only {answered} answered");
}

/// The response rendered for review: size, then hickory's text form.
fn golden_text(packet: &[u8], transport: Transport) -> String {
    let h = handle(packet, transport, &fixture());
    let bytes = h.response.expect("a response");
    let m = Message::from_vec(&bytes).unwrap();
    format!("; {} bytes over {}\n{m}", bytes.len(), transport.as_str())
}

fn check_golden(file: &str, text: &str) {
    let path: PathBuf = [env!("CARGO_MANIFEST_DIR"), "tests", "golden", file]
        .iter()
        .collect();
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 writes it)", path.display()));
    assert_eq!(
        text,
        want,
        "{} differs (UPDATE_GOLDEN=1 rewrites it)",
        path.display()
    );
}

#[test]
fn golden_answers() {
    let z = "svc.clusterset.local.";
    let cases = [
        (
            "a_clustersetip.txt",
            query(&format!("web.default.{z}"), RecordType::A, Some(1232)),
            Transport::Udp,
        ),
        (
            "srv_named_port.txt",
            query(
                &format!("_http._tcp.web.default.{z}"),
                RecordType::SRV,
                None,
            ),
            Transport::Udp,
        ),
        (
            "srv_headless.txt",
            query(&format!("_pg._tcp.db.default.{z}"), RecordType::SRV, None),
            Transport::Tcp,
        ),
        (
            "a_headless.txt",
            query(&format!("db.default.{z}"), RecordType::A, None),
            Transport::Udp,
        ),
        (
            "nxdomain.txt",
            query(&format!("nosuch.default.{z}"), RecordType::A, None),
            Transport::Udp,
        ),
        (
            "nodata_ent.txt",
            query(&format!("b.db.default.{z}"), RecordType::A, None),
            Transport::Udp,
        ),
        (
            "refused.txt",
            query("web.default.svc.cluster.local.", RecordType::A, None),
            Transport::Udp,
        ),
        (
            "dns_version.txt",
            query("dns-version.clusterset.local.", RecordType::TXT, None),
            Transport::Udp,
        ),
    ];
    for (file, packet, transport) in cases {
        check_golden(file, &golden_text(&packet, transport));
    }
}
