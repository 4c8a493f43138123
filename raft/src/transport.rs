//! The Raft transport's wire format: flatbuffers envelopes carrying the Raft messages of many
//! groups between two brokers (schema: `raft/schema/transport.fbs`, generated code committed in
//! `src/generated/`).
//!
//! Pure functions, on whichever core owns the connection. One envelope per write batches every
//! message due between two brokers, so the heartbeats of all the groups they share cost one
//! frame per tick, not one per group. Decoding verifies the buffer (flatbuffers' verifier)
//! and checks the limits before building anything: a malformed or oversized envelope is an
//! error for the connection, never a panic.

use protobuf::{Message as _, ProtobufEnum};
use raft::prelude::{Entry, EntryType, Message, MessageType, Snapshot};

use crate::types::{GroupId, NodeId};

#[allow(unused_imports, dead_code, clippy::all, clippy::pedantic, missing_docs)]
#[rustfmt::skip]
#[path = "generated/transport_generated.rs"]
mod generated;

use generated::ringlog::transport as fb;

/// Bounds on one envelope.
#[derive(Clone, Copy, Debug)]
pub struct TransportLimits {
    /// Largest envelope accepted (and produced: senders split before this).
    pub envelope_bytes_max: usize,
    /// Most Raft messages in one envelope.
    pub messages_per_envelope_max: usize,
}

impl Default for TransportLimits {
    fn default() -> Self {
        TransportLimits {
            envelope_bytes_max: 64 << 20,
            messages_per_envelope_max: 100_000,
        }
    }
}

/// Why an envelope was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TransportError {
    #[error("envelope of {0} bytes is over the limit of {1}")]
    TooLarge(usize, usize),
    #[error("envelope with {0} messages is over the limit of {1}")]
    TooManyMessages(usize, usize),
    #[error("malformed envelope: {0}")]
    Malformed(String),
}

/// A decoded envelope: sender, receiver, and each message with its group.
pub type Decoded = (NodeId, NodeId, Vec<(GroupId, Message)>);

/// Encodes the messages from broker `from` to broker `to`.
pub fn encode(from: NodeId, to: NodeId, messages: &[(GroupId, Message)]) -> Vec<u8> {
    let mut b = flatbuffers::FlatBufferBuilder::with_capacity(1024);
    let mut encoded = Vec::with_capacity(messages.len());
    for (group, m) in messages {
        let entries: Vec<_> = m
            .get_entries()
            .iter()
            .map(|e| {
                let data = b.create_vector(e.get_data());
                let context = b.create_vector(e.get_context());
                fb::Entry::create(
                    &mut b,
                    &fb::EntryArgs {
                        entry_type: e.get_entry_type().value() as i8,
                        term: e.term,
                        index: e.index,
                        data: Some(data),
                        context: Some(context),
                        sync_log: e.sync_log,
                    },
                )
            })
            .collect();
        let entries = b.create_vector(&entries);
        let snapshot = if m.has_snapshot() {
            // A Snapshot always encodes.
            m.get_snapshot().write_to_bytes().unwrap_or_default()
        } else {
            Vec::new()
        };
        let snapshot = b.create_vector(&snapshot);
        let context = b.create_vector(m.get_context());
        encoded.push(fb::RaftMessage::create(
            &mut b,
            &fb::RaftMessageArgs {
                group: group.0,
                msg_type: m.get_msg_type().value() as i8,
                to: m.to,
                from: m.from,
                term: m.term,
                log_term: m.log_term,
                index: m.index,
                entries: Some(entries),
                commit: m.commit,
                commit_term: m.commit_term,
                snapshot: Some(snapshot),
                request_snapshot: m.request_snapshot,
                reject: m.reject,
                reject_hint: m.reject_hint,
                context: Some(context),
                deprecated_priority: m.deprecated_priority,
                priority: m.priority,
            },
        ));
    }
    let messages = b.create_vector(&encoded);
    let env = fb::Envelope::create(
        &mut b,
        &fb::EnvelopeArgs {
            from_node: from.0,
            to_node: to.0,
            messages: Some(messages),
        },
    );
    b.finish(env, None);
    b.finished_data().to_vec()
}

/// Decodes and verifies an envelope.
pub fn decode(bytes: &[u8], limits: &TransportLimits) -> Result<Decoded, TransportError> {
    if bytes.len() > limits.envelope_bytes_max {
        return Err(TransportError::TooLarge(
            bytes.len(),
            limits.envelope_bytes_max,
        ));
    }
    let opts = flatbuffers::VerifierOptions {
        max_tables: limits.messages_per_envelope_max * 64 + 16,
        ..Default::default()
    };
    let env = flatbuffers::root_with_opts::<fb::Envelope>(&opts, bytes)
        .map_err(|e| TransportError::Malformed(e.to_string()))?;
    let list = env.messages().unwrap_or_default();
    if list.len() > limits.messages_per_envelope_max {
        return Err(TransportError::TooManyMessages(
            list.len(),
            limits.messages_per_envelope_max,
        ));
    }
    let mut out = Vec::with_capacity(list.len());
    for rm in list.iter() {
        let msg_type = MessageType::from_i32(rm.msg_type() as i32).ok_or_else(|| {
            TransportError::Malformed(format!("unknown message type {}", rm.msg_type()))
        })?;
        let mut m = Message::default();
        m.set_msg_type(msg_type);
        m.to = rm.to();
        m.from = rm.from();
        m.term = rm.term();
        m.log_term = rm.log_term();
        m.index = rm.index();
        m.commit = rm.commit();
        m.commit_term = rm.commit_term();
        m.request_snapshot = rm.request_snapshot();
        m.reject = rm.reject();
        m.reject_hint = rm.reject_hint();
        m.deprecated_priority = rm.deprecated_priority();
        m.priority = rm.priority();
        m.set_context(
            rm.context()
                .map(|c| c.bytes().to_vec())
                .unwrap_or_default()
                .into(),
        );
        let mut entries = Vec::new();
        for e in rm.entries().unwrap_or_default().iter() {
            let t = EntryType::from_i32(e.entry_type() as i32).ok_or_else(|| {
                TransportError::Malformed(format!("unknown entry type {}", e.entry_type()))
            })?;
            let mut entry = Entry::default();
            entry.set_entry_type(t);
            entry.term = e.term();
            entry.index = e.index();
            entry.set_data(
                e.data()
                    .map(|d| d.bytes().to_vec())
                    .unwrap_or_default()
                    .into(),
            );
            entry.set_context(
                e.context()
                    .map(|d| d.bytes().to_vec())
                    .unwrap_or_default()
                    .into(),
            );
            entry.sync_log = e.sync_log();
            entries.push(entry);
        }
        m.set_entries(entries.into());
        if let Some(s) = rm.snapshot() {
            if !s.is_empty() {
                let snap = Snapshot::parse_from_bytes(s.bytes())
                    .map_err(|e| TransportError::Malformed(format!("snapshot: {e}")))?;
                m.set_snapshot(snap);
            }
        }
        out.push((GroupId(rm.group()), m));
    }
    Ok((NodeId(env.from_node()), NodeId(env.to_node()), out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn message(
        group: u64,
        t: i32,
        fields: [u64; 8],
        entries: Vec<(i32, u64, Vec<u8>)>,
        ctx: Vec<u8>,
    ) -> (GroupId, Message) {
        let mut m = Message::default();
        m.set_msg_type(MessageType::from_i32(t).expect("valid type"));
        m.to = fields[0];
        m.from = fields[1];
        m.term = fields[2];
        m.log_term = fields[3];
        m.index = fields[4];
        m.commit = fields[5];
        m.commit_term = fields[6];
        m.reject_hint = fields[7];
        m.reject = fields[7] % 2 == 1;
        m.priority = fields[7] as i64 - 5;
        m.set_context(ctx.into());
        let entries: Vec<Entry> = entries
            .into_iter()
            .map(|(et, idx, data)| {
                let mut e = Entry::default();
                e.set_entry_type(EntryType::from_i32(et).expect("valid entry type"));
                e.index = idx;
                e.term = fields[2];
                e.set_data(data.into());
                e
            })
            .collect();
        m.set_entries(entries.into());
        (GroupId(group), m)
    }

    proptest! {
        #[test]
        fn round_trips(
            msgs in proptest::collection::vec(
                (any::<u64>(), 0i32..=18, any::<[u64; 8]>(),
                 proptest::collection::vec((0i32..=2, any::<u64>(), proptest::collection::vec(any::<u8>(), 0..64)), 0..4),
                 proptest::collection::vec(any::<u8>(), 0..16)),
                0..20),
        ) {
            let input: Vec<(GroupId, Message)> = msgs
                .into_iter()
                .map(|(g, t, f, e, c)| message(g, t, f, e, c))
                .collect();
            let bytes = encode(NodeId(1), NodeId(2), &input);
            let (from, to, got) = decode(&bytes, &TransportLimits::default()).expect("decodes");
            prop_assert_eq!((from, to), (NodeId(1), NodeId(2)));
            prop_assert_eq!(got, input);
        }

        #[test]
        fn garbage_is_an_error_not_a_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&bytes, &TransportLimits::default());
        }

        #[test]
        fn corrupted_envelopes_never_panic(flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
            let input = vec![message(3, 3, [1, 2, 3, 4, 5, 6, 7, 8], vec![(0, 9, b"data".to_vec())], b"ctx".to_vec())];
            let mut bytes = encode(NodeId(1), NodeId(2), &input);
            for (at, v) in flips {
                let i = at % bytes.len();
                bytes[i] ^= v | 1;
            }
            let _ = decode(&bytes, &TransportLimits::default());
        }
    }

    #[test]
    fn heartbeats_of_many_groups_share_one_envelope() {
        let hbs: Vec<(GroupId, Message)> = (0..1000)
            .map(|g| message(g, 8, [2, 1, 7, 0, 0, 42, 0, 0], vec![], vec![]))
            .collect();
        let bytes = encode(NodeId(1), NodeId(2), &hbs);
        // About 80 bytes per heartbeat, one frame for all of them.
        assert!(bytes.len() < 1000 * 120, "{}", bytes.len());
        let (_, _, got) = decode(&bytes, &TransportLimits::default()).unwrap();
        assert_eq!(got.len(), 1000);
    }

    #[test]
    fn limits_are_enforced() {
        let hbs: Vec<(GroupId, Message)> = (0..10)
            .map(|g| message(g, 8, [2, 1, 7, 0, 0, 42, 0, 0], vec![], vec![]))
            .collect();
        let bytes = encode(NodeId(1), NodeId(2), &hbs);
        let tight = TransportLimits {
            envelope_bytes_max: 64 << 20,
            messages_per_envelope_max: 5,
        };
        assert_eq!(
            decode(&bytes, &tight).unwrap_err(),
            TransportError::TooManyMessages(10, 5)
        );
        let tiny = TransportLimits {
            envelope_bytes_max: 10,
            messages_per_envelope_max: 5,
        };
        assert!(matches!(
            decode(&bytes, &tiny),
            Err(TransportError::TooLarge(..))
        ));
    }
}
