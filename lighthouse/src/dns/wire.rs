//! From request bytes to response bytes: decoding, checks, size limits.
//!
//! This is the whole of the server's logic that sees untrusted bytes, so it
//! is also what the fuzz target drives. It never panics on input and never
//! answers a packet that claims to be a response (no loops between servers).

use hickory_proto::op::{Edns, Header, Message, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::RecordType;
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};

use super::index::Index;
use super::resolve::{ResolverOptions, resolve};

/// The largest UDP payload the server sends, whatever the client offers
/// (the DNS flag day 2020 value, which avoids IP fragmentation).
pub const MAX_UDP_PAYLOAD: u16 = 1232;
/// The payload a client without EDNS may receive over UDP.
pub const MIN_UDP_PAYLOAD: u16 = 512;

/// How the query arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// UDP: the answer must fit the client's buffer.
    Udp,
    /// TCP: answers are whole (up to 65535 bytes).
    Tcp,
}

impl Transport {
    /// `udp` or `tcp`.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        }
    }
}

/// What became of one packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handled {
    /// The bytes to send back; `None` when the packet is dropped.
    pub response: Option<Vec<u8>>,
    /// The question's type, when the packet had one question.
    pub qtype: Option<RecordType>,
    /// The response code sent.
    pub rcode: Option<ResponseCode>,
    /// Whether the answer was cut to fit (TC set).
    pub truncated: bool,
}

impl Handled {
    fn dropped() -> Self {
        Self {
            response: None,
            qtype: None,
            rcode: None,
            truncated: false,
        }
    }
}

/// The mnemonic of a response code (`NOERROR`, `NXDOMAIN`, ...).
pub fn rcode_name(rcode: ResponseCode) -> &'static str {
    match rcode {
        ResponseCode::NoError => "NOERROR",
        ResponseCode::FormErr => "FORMERR",
        ResponseCode::ServFail => "SERVFAIL",
        ResponseCode::NXDomain => "NXDOMAIN",
        ResponseCode::NotImp => "NOTIMP",
        ResponseCode::Refused => "REFUSED",
        ResponseCode::BADVERS | ResponseCode::BADSIG => "BADVERS",
        _ => "OTHER",
    }
}

/// Answers one DNS message from `index`.
///
/// Dropped: packets shorter than a header and messages with QR set. FORMERR
/// (with no question): anything that does not decode (truncated, counts that
/// promise more than is there, labels over 63 bytes, bad compression
/// pointers). FORMERR also for a query without exactly one question, NOTIMP
/// for opcodes other than QUERY, BADVERS for EDNS versions above 0.
pub fn handle_packet(
    packet: &[u8],
    transport: Transport,
    index: &Index,
    opts: &ResolverOptions,
) -> Handled {
    let Ok(header) = Header::read(&mut BinDecoder::new(packet)) else {
        return Handled::dropped();
    };
    if header.metadata.message_type != MessageType::Query {
        return Handled::dropped();
    }
    let request = match Message::from_vec(packet) {
        Ok(request) => request,
        Err(error) => {
            tracing::debug!(%error, "undecodable DNS query");
            return error_response(&header.metadata, None, ResponseCode::FormErr);
        }
    };
    let qtype = request.queries.first().map(|q| q.query_type());
    let fail = |rcode| {
        let mut handled = error_response(&request.metadata, Some(&request), rcode);
        handled.qtype = qtype;
        handled
    };
    if request.metadata.op_code != OpCode::Query {
        return fail(ResponseCode::NotImp);
    }
    if request.queries.len() != 1 || !request.answers.is_empty() {
        return fail(ResponseCode::FormErr);
    }
    if request.edns.as_ref().is_some_and(|e| e.version() > 0) {
        return fail(ResponseCode::BADVERS);
    }

    let answer = resolve(&request.queries[0], index, opts);
    let mut response = response_to(&request.metadata, Some(&request));
    response.metadata.authoritative = answer.authoritative;
    response.metadata.response_code = answer.rcode;
    response.answers = answer.answers;
    response.authorities = answer.authorities;
    response.additionals = answer.additionals;

    let limit = match transport {
        Transport::Udp => usize::from(udp_limit(&request)),
        Transport::Tcp => usize::from(u16::MAX),
    };
    let (bytes, truncated) = encode_within(response, limit);
    Handled {
        response: bytes,
        qtype,
        rcode: Some(answer.rcode),
        truncated,
    }
}

/// The client's UDP buffer as EDNS states it, between 512 and our maximum.
fn udp_limit(request: &Message) -> u16 {
    match &request.edns {
        Some(edns) => edns.max_payload().clamp(MIN_UDP_PAYLOAD, MAX_UDP_PAYLOAD),
        None => MIN_UDP_PAYLOAD,
    }
}

/// A response skeleton: id, opcode, RD and CD from the request, the
/// question echoed as asked, and an OPT record if the request had one.
fn response_to(metadata: &Metadata, request: Option<&Message>) -> Message {
    let mut response = Message::new(metadata.id, MessageType::Response, metadata.op_code);
    response.metadata = Metadata::response_from_request(metadata);
    if let Some(request) = request {
        response.queries = request.queries.clone();
        if request.edns.is_some() {
            let mut edns = Edns::new();
            edns.set_max_payload(MAX_UDP_PAYLOAD);
            response.edns = Some(edns);
        }
    }
    response
}

fn error_response(metadata: &Metadata, request: Option<&Message>, rcode: ResponseCode) -> Handled {
    let mut response = response_to(metadata, request);
    response.metadata.response_code = rcode;
    if request.is_some_and(|r| r.queries.len() != 1) {
        response.queries.clear();
    }
    let (bytes, truncated) = encode_within(response, usize::from(MIN_UDP_PAYLOAD));
    Handled {
        response: bytes,
        qtype: None,
        rcode: Some(rcode),
        truncated,
    }
}

/// Encodes `response` in at most `limit` bytes: whole if it fits, else
/// without the additional section (which RFC 2181 lets a server drop
/// without TC), else with TC set and only the question.
fn encode_within(mut response: Message, limit: usize) -> (Option<Vec<u8>>, bool) {
    match response.to_vec() {
        Ok(bytes) if bytes.len() <= limit => return (Some(bytes), false),
        Ok(_) => {}
        Err(error) => {
            tracing::warn!(%error, "DNS response does not encode");
            response.answers.clear();
            response.authorities.clear();
            response.additionals.clear();
            response.metadata.response_code = ResponseCode::ServFail;
            return (response.to_vec().ok(), false);
        }
    }
    if !response.additionals.is_empty() {
        let mut lean = response.clone();
        lean.additionals.clear();
        if let Ok(bytes) = lean.to_vec()
            && bytes.len() <= limit
        {
            return (Some(bytes), false);
        }
    }
    response.answers.clear();
    response.authorities.clear();
    response.additionals.clear();
    response.metadata.truncation = true;
    match response.to_vec() {
        Ok(bytes) if bytes.len() <= limit => (Some(bytes), true),
        // A question too long for the limit: the header alone says TC.
        _ => {
            response.queries.clear();
            (response.to_vec().ok(), true)
        }
    }
}

#[cfg(test)]
#[path = "wire_tests.rs"]
mod tests;
