//! Any bytes, over UDP and TCP: the handler must not panic, a UDP answer
//! must fit the UDP maximum, and whatever it sends must decode as a
//! response with the request's id.

#![no_main]

use std::sync::LazyLock;

use causeway_lighthouse::dns::wire::MAX_UDP_PAYLOAD;
use causeway_lighthouse::dns::{Index, ResolverOptions, Transport, handle_packet, sample};
use hickory_proto::op::{Message, MessageType};
use libfuzzer_sys::fuzz_target;

static INDEX: LazyLock<Index> = LazyLock::new(|| sample::index(50));
static OPTS: LazyLock<ResolverOptions> = LazyLock::new(|| ResolverOptions {
    cluster_names: true,
    ..ResolverOptions::default()
});

fuzz_target!(|data: &[u8]| {
    for transport in [Transport::Udp, Transport::Tcp] {
        let handled = handle_packet(data, transport, &INDEX, &OPTS);
        let Some(bytes) = handled.response else {
            continue;
        };
        if transport == Transport::Udp {
            assert!(bytes.len() <= usize::from(MAX_UDP_PAYLOAD));
        }
        let response = Message::from_vec(&bytes).expect("our own answer decodes");
        assert_eq!(response.metadata.message_type, MessageType::Response);
        assert_eq!(&bytes[..2], &data[..2], "the id is echoed");
    }
});
