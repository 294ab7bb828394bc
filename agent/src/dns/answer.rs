//! Builds the resolver's replies from the name table: answers for names the table contains,
//! NXDOMAIN for other `.silo` names, and SERVFAIL when no upstream resolver answered.

use std::net::IpAddr;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{RData, Record, RecordType};

use super::table::{Lookup, NameTable};

/// Time clients may cache an answer, in seconds. Short, because instances come and go.
pub const ANSWER_TTL_SECS: u32 = 5;

/// Action for one request.
#[derive(Debug)]
pub enum Reply {
    /// Send this reply.
    Local(Message),
    /// Forward the request unchanged to the upstream resolvers.
    Forward,
}

/// Decides the reply to `request`. Only standard queries with exactly one question are
/// answered: other opcodes get NOTIMP, and a message without a question gets FORMERR.
pub fn answer(request: &Message, table: &NameTable) -> Reply {
    if request.metadata.message_type != MessageType::Query {
        return Reply::Local(error_reply(request, ResponseCode::FormErr));
    }
    if request.metadata.op_code != OpCode::Query {
        return Reply::Local(error_reply(request, ResponseCode::NotImp));
    }
    let [query] = request.queries.as_slice() else {
        return Reply::Local(error_reply(request, ResponseCode::FormErr));
    };

    match table.lookup(&query.name.to_ascii()) {
        Lookup::Forward => Reply::Forward,
        Lookup::NotFound => Reply::Local(error_reply(request, ResponseCode::NXDomain)),
        Lookup::Found(addresses) => Reply::Local(address_reply(request, query, &addresses)),
    }
}

/// Returns a reply to `request` with `code` and no records.
pub fn error_reply(request: &Message, code: ResponseCode) -> Message {
    let mut reply = reply_to(request);
    reply.metadata.response_code = code;
    reply
}

/// Returns the reply for a name the table contains: the addresses of the queried type. A query
/// for another type gets NOERROR without records, because the name exists.
fn address_reply(request: &Message, query: &Query, addresses: &[IpAddr]) -> Message {
    let mut reply = reply_to(request);
    reply.metadata.authoritative = true;
    // NOTE: the reply is never truncated. At about 16 bytes per A record (an estimate), a
    // reply past 25 to 30 instances outgrows the 512 bytes of a UDP client without EDNS.
    let wants_any = query.query_type == RecordType::ANY;
    for address in addresses {
        let data = match address {
            IpAddr::V4(v4) if wants_any || query.query_type == RecordType::A => RData::A(A(*v4)),
            IpAddr::V6(v6) if wants_any || query.query_type == RecordType::AAAA => RData::AAAA(AAAA(*v6)),
            _ => continue,
        };
        reply.add_answer(Record::from_rdata(query.name.clone(), ANSWER_TTL_SECS, data));
    }
    reply
}

/// Returns an empty reply with the request's id, opcode, flags and questions.
fn reply_to(request: &Message) -> Message {
    let mut reply = Message::response(request.metadata.id, request.metadata.op_code);
    reply.metadata.recursion_desired = request.metadata.recursion_desired;
    reply.metadata.checking_disabled = request.metadata.checking_disabled;
    reply.metadata.recursion_available = true;
    reply.add_queries(request.queries.iter().cloned());
    reply
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::str::FromStr;

    use colex_proto as proto;
    use hickory_proto::rr::Name;

    use super::*;

    fn table() -> NameTable {
        let hostnames = BTreeMap::from([
            ("db.internal".to_owned(), "10.1.2.3".parse().expect("valid address")),
            ("v6.internal".to_owned(), "2001:db8::1".parse().expect("valid address")),
        ]);
        let mut table = NameTable::new(&hostnames);
        table.set_names(&proto::Names {
            names: vec![
                proto::SiloName {
                    silo: "web".to_owned(),
                    index: 0,
                    addresses: vec!["10.69.1.2".to_owned()],
                    ..Default::default()
                },
                proto::SiloName {
                    silo: "web".to_owned(),
                    index: 1,
                    addresses: vec!["10.69.2.2".to_owned()],
                    ..Default::default()
                },
            ],
        });
        table
    }

    fn request(name: &str, query_type: RecordType) -> Message {
        let mut request = Message::new(0x1234, MessageType::Query, OpCode::Query);
        request.metadata.recursion_desired = true;
        request.add_query(Query::query(Name::from_str(name).expect("valid name"), query_type));
        request
    }

    /// Encodes and decodes `reply`, as a client would see it, and returns its code and
    /// addresses.
    fn decoded(reply: Reply) -> (ResponseCode, Vec<String>) {
        let Reply::Local(message) = reply else {
            panic!("expected a local reply, got {reply:?}");
        };
        let bytes = message.to_vec().expect("reply encodes");
        let message = Message::from_vec(&bytes).expect("reply decodes");
        assert_eq!(message.metadata.id, 0x1234);
        assert_eq!(message.metadata.message_type, MessageType::Response);
        assert_eq!(message.queries.len(), 1);
        let addresses = message
            .answers
            .iter()
            .map(|record| match &record.data {
                RData::A(a) => a.0.to_string(),
                RData::AAAA(aaaa) => aaaa.0.to_string(),
                other => panic!("unexpected record {other:?}"),
            })
            .collect();
        (message.metadata.response_code, addresses)
    }

    #[test]
    fn silo_name_gets_every_instance() {
        let (code, addresses) = decoded(answer(&request("web.silo.", RecordType::A), &table()));
        assert_eq!(code, ResponseCode::NoError);
        assert_eq!(addresses, ["10.69.1.2", "10.69.2.2"]);
    }

    #[test]
    fn index_name_gets_one_instance() {
        let (code, addresses) = decoded(answer(&request("1.web.silo.", RecordType::A), &table()));
        assert_eq!(code, ResponseCode::NoError);
        assert_eq!(addresses, ["10.69.2.2"]);
    }

    #[test]
    fn hostnames_get_their_record_type() {
        let table = table();
        let (_, addresses) = decoded(answer(&request("db.internal.", RecordType::A), &table));
        assert_eq!(addresses, ["10.1.2.3"]);
        let (_, addresses) = decoded(answer(&request("v6.internal.", RecordType::AAAA), &table));
        assert_eq!(addresses, ["2001:db8::1"]);
    }

    #[test]
    fn other_type_of_known_name_is_empty() {
        let (code, addresses) = decoded(answer(&request("web.silo.", RecordType::AAAA), &table()));
        assert_eq!(code, ResponseCode::NoError);
        assert!(addresses.is_empty(), "{addresses:?}");
    }

    #[test]
    fn unknown_silo_is_nxdomain() {
        let (code, addresses) = decoded(answer(&request("nope.silo.", RecordType::A), &table()));
        assert_eq!(code, ResponseCode::NXDomain);
        assert!(addresses.is_empty(), "{addresses:?}");
    }

    #[test]
    fn mixed_case_name_is_answered() {
        let (code, addresses) = decoded(answer(&request("WeB.SiLo.", RecordType::A), &table()));
        assert_eq!(code, ResponseCode::NoError);
        assert_eq!(addresses, ["10.69.1.2", "10.69.2.2"]);
    }

    #[test]
    fn other_names_are_forwarded() {
        let reply = answer(&request("example.com.", RecordType::A), &table());
        assert!(matches!(reply, Reply::Forward), "{reply:?}");
    }

    #[test]
    fn request_without_question_is_formerr() {
        let empty = Message::new(0x1234, MessageType::Query, OpCode::Query);
        let Reply::Local(reply) = answer(&empty, &table()) else {
            panic!("expected a local reply");
        };
        assert_eq!(reply.metadata.response_code, ResponseCode::FormErr);
    }
}
