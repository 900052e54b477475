//! Codec tests: the byte examples of PROTOCOL.md §1.4/§1.6, outbound integer and optional
//! rules, inbound normalisation and limits, and round trips per message family.

use indexmap::IndexMap;
use proptest::prelude::*;
use serde_json::{Value, json};

use crate::hlc::Timestamp;
use crate::protocol::codec::*;
use crate::protocol::*;
use crate::query::{Query, SortDirection, SortField, SortSpec};
use crate::record::{LwwRecord, OrMapRecord};

fn bytes_of(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn round_trip(message: Message) {
    let packed = encode_msgpack(&message).unwrap();
    assert_no_ext(&packed);
    assert_eq!(decode(Frame::Binary(&packed)).unwrap(), message, "msgpack");
    let text = encode_json(&message).unwrap();
    assert_eq!(decode(Frame::Text(&text)).unwrap(), message, "json");
}

/// Fails when the encoding contains any msgpack ext value (in particular `d4 00 00`).
fn assert_no_ext(bytes: &[u8]) {
    fn walk(value: &rmpv::Value) {
        match value {
            rmpv::Value::Ext(t, _) => panic!("ext {t} emitted"),
            rmpv::Value::Array(items) => items.iter().for_each(walk),
            rmpv::Value::Map(entries) => entries.iter().for_each(|(k, v)| {
                walk(k);
                walk(v);
            }),
            _ => {}
        }
    }
    walk(&rmpv::decode::read_value(&mut &bytes[..]).unwrap());
}

fn ts(millis: u64) -> Timestamp {
    Timestamp::new(millis, 2, "node-1")
}

#[test]
fn ping_with_float64_timestamp_decodes() {
    let frame = bytes_of(&[
        &[0xde, 0x00, 0x02, 0xa4],
        b"type",
        &[0xa4],
        b"PING",
        &[0xa9],
        b"timestamp",
        &[0xcb, 0x42, 0x78, 0xbc, 0xfe, 0x56, 0x80, 0x00, 0x00],
    ]);
    assert_eq!(
        decode(Frame::Binary(&frame)).unwrap(),
        Message::Ping(Ping {
            timestamp: 1_700_000_000_000
        })
    );
}

#[test]
fn large_integers_are_encoded_as_float64() {
    let packed = encode_msgpack(&Message::Ping(Ping {
        timestamp: 1_700_000_000_000,
    }))
    .unwrap();
    let expected = bytes_of(&[
        &[0x82, 0xa4],
        b"type",
        &[0xa4],
        b"PING",
        &[0xa9],
        b"timestamp",
        &[0xcb, 0x42, 0x78, 0xbc, 0xfe, 0x56, 0x80, 0x00, 0x00],
    ]);
    assert_eq!(packed, expected);
}

#[test]
fn integer_width_boundaries_follow_msgpackr() {
    let encode_data = |data: Value| {
        let packed = encode_msgpack(&Message::TopicPub(TopicPub {
            payload: TopicPubPayload {
                topic: "t".into(),
                data,
            },
        }))
        .unwrap();
        // The data value is the last token of the frame.
        packed
    };
    assert!(encode_data(json!(4_294_967_295u64)).ends_with(&[0xce, 0xff, 0xff, 0xff, 0xff]));
    assert!(encode_data(json!(-2_147_483_648i64)).ends_with(&[0xd2, 0x80, 0x00, 0x00, 0x00]));
    let mut big = vec![0xcb];
    big.extend_from_slice(&4_294_967_296f64.to_be_bytes());
    assert!(encode_data(json!(4_294_967_296u64)).ends_with(&big));
    let mut negative = vec![0xcb];
    negative.extend_from_slice(&(-2_147_483_649f64).to_be_bytes());
    assert!(encode_data(json!(-2_147_483_649i64)).ends_with(&negative));
    assert!(encode_data(json!(7)).ends_with(&[0x07]));
}

#[test]
fn batch_example_bytes_decode_and_batches_round_trip() {
    let frame = bytes_of(&[
        &[0xde, 0x00, 0x03, 0xa4],
        b"type",
        &[0xa5],
        b"BATCH",
        &[0xa5],
        b"count",
        &[0x03, 0xa4],
        b"data",
        &[0xc4, 0x04, 0xde, 0xad, 0xbe, 0xef],
    ]);
    let Message::Batch(batch) = decode(Frame::Binary(&frame)).unwrap() else {
        panic!("not a BATCH");
    };
    assert_eq!(
        (batch.count, batch.data.0.clone()),
        (3, vec![0xde, 0xad, 0xbe, 0xef])
    );
    assert!(
        decode_batch_data(&batch.data.0).is_err(),
        "dummy data is not a valid layout"
    );

    let inner = [
        Message::AuthAck(AuthAck::default()),
        Message::Pong(Pong::new(1_700_000_000_001)),
    ];
    let encoded: Vec<Vec<u8>> = inner.iter().map(|m| encode_msgpack(m).unwrap()).collect();
    let frame = encode_batch(&encoded).unwrap();
    let Message::Batch(batch) = decode(Frame::Binary(&frame)).unwrap() else {
        panic!("not a BATCH");
    };
    assert_eq!(batch.count, 2);
    assert_eq!(&batch.data.0[..4], &[2, 0, 0, 0]);
    let parts = decode_batch_data(&batch.data.0).unwrap();
    let decoded: Vec<Message> = parts
        .iter()
        .map(|p| decode(Frame::Binary(p)).unwrap())
        .collect();
    assert_eq!(decoded, inner);
}

#[test]
fn tombstones_keep_explicit_nil_value() {
    let event = Message::ServerEvent(ServerEvent {
        payload: ServerEventPayload {
            map_name: "m".into(),
            key: "k".into(),
            event_type: EventType::Remove,
            record: Some(LwwRecord {
                value: None,
                timestamp: ts(1_700_000_000_000),
                ttl_ms: None,
            }),
            or_record: None,
            or_tag: None,
            epoch: None,
        },
        timestamp: None,
    });
    let packed = encode_msgpack(&event).unwrap();
    let value_nil = bytes_of(&[&[0xa5], b"value", &[0xc0]]);
    assert!(packed.windows(value_nil.len()).any(|w| w == value_nil));
    let ttl = b"ttlMs";
    assert!(
        !packed.windows(ttl.len()).any(|w| w == ttl),
        "absent optionals are omitted"
    );
    round_trip(event);
}

#[test]
fn pong_is_built_without_timestamp_and_counters_emit_four_keys() {
    let json = encode_json(&Message::Pong(Pong::new(5))).unwrap();
    assert_eq!(json, r#"{"type":"PONG","serverTime":5}"#);

    let mut state = CounterState::default();
    state.positive.insert("a".into(), 2.0);
    let message = Message::CounterUpdate(CounterUpdate {
        payload: CounterStatePayload {
            name: "likes".into(),
            state,
        },
    });
    let decoded: Value = serde_json::from_str(&encode_json(&message).unwrap()).unwrap();
    assert_eq!(
        decoded["payload"]["state"],
        json!({"p": {"a": 2.0}, "n": {}, "positive": {"a": 2.0}, "negative": {}})
    );
    round_trip(message);
}

#[test]
fn live_updates_carry_both_change_fields() {
    let leave = QueryUpdate::leave("q", "k");
    let value = serde_json::to_value(Message::QueryUpdate(leave.clone())).unwrap();
    assert_eq!(
        value["payload"],
        json!({"queryId": "q", "key": "k", "value": null, "type": "REMOVE", "changeType": "LEAVE"})
    );
    assert_eq!(leave.change(), Some(ChangeType::Leave));
    let enter = QueryUpdate::enter("q", "k", json!({"a": 1}));
    assert_eq!(enter.payload.legacy_type, Some(LegacyQueryChange::Update));
    assert_eq!(enter.change(), Some(ChangeType::Enter));

    let hit = SearchHit {
        key: "a4".into(),
        value: Value::Null,
        score: 1.5,
        matched_terms: vec!["websocket".into()],
    };
    let update = SearchUpdate::new("s", hit, ChangeType::Update);
    let value = serde_json::to_value(Message::SearchUpdate(update.clone())).unwrap();
    assert_eq!(value["payload"]["type"], "UPDATE");
    assert_eq!(value["payload"]["changeType"], "UPDATE");
    round_trip(Message::QueryUpdate(leave));
    round_trip(Message::SearchUpdate(update));
}

#[test]
fn both_sort_forms_round_trip() {
    let fields = SortSpec::Fields(vec![SortField {
        field: "prio".into(),
        direction: SortDirection::Desc,
    }]);
    let object = SortSpec::Object(IndexMap::from([("prio".to_owned(), SortDirection::Desc)]));
    for sort in [fields, object] {
        round_trip(Message::QuerySub(QuerySub {
            payload: QuerySubPayload {
                query_id: "q1".into(),
                map_name: "todos".into(),
                query: Query {
                    sort: Some(sort),
                    limit: Some(2),
                    ..Query::default()
                },
                fields: None,
            },
        }));
    }
}

#[test]
fn representative_messages_of_every_family_round_trip() {
    let op = ClientOp {
        id: Some("12".into()),
        map_name: "todos".into(),
        key: "t1".into(),
        op_type: Some(OpType::OrAdd),
        record: None,
        or_record: Some(Box::new(OrMapRecord {
            value: json!("red"),
            timestamp: ts(1_795_698_232_491),
            tag: "1795698232491:2:node-1".into(),
            ttl_ms: Some(5_000_000_000),
        })),
        or_tag: None,
        write_concern: Some(WriteConcern::Persisted),
        timeout: Some(5000),
    };
    let messages = vec![
        Message::AuthRequired(AuthRequired {}),
        Message::Auth(Auth {
            token: "jwt".into(),
            protocol_version: Some(1),
            device_token: None,
        }),
        Message::Error(ErrorMessage {
            payload: ErrorPayload {
                code: 400,
                message: "Invalid message format".into(),
                details: Some(vec![ErrorDetail {
                    path: "/payload/ops".into(),
                    reason: "too many".into(),
                }]),
            },
        }),
        Message::OpBatch(OpBatch {
            payload: OpBatchPayload {
                ops: vec![op],
                write_concern: None,
                timeout: None,
            },
        }),
        Message::OpAck(OpAck {
            payload: OpAckPayload {
                last_id: "12".into(),
                achieved_level: Some(WriteConcern::Applied),
                results: None,
            },
        }),
        Message::SyncRespBuckets(SyncRespBuckets {
            payload: BucketsPayload {
                map_name: "todos".into(),
                path: "f5".into(),
                buckets: [("5".to_owned(), 4_066_377_064u32)].into(),
            },
        }),
        Message::OrMapSyncInit(OrMapSyncInit {
            map_name: "tags".into(),
            root_hash: 0,
            bucket_hashes: Default::default(),
            last_sync_timestamp: Some(0),
            claimed_epoch: None,
        }),
        Message::TopicMessage(TopicMessage {
            payload: TopicMessagePayload {
                topic: "chat/room-1".into(),
                data: json!({"text": "hi", "n": [1, -2.5, null]}),
                publisher_id: None,
                timestamp: 1_795_698_234_851,
            },
        }),
        Message::LockGranted(LockGranted {
            payload: LockGrantedPayload {
                request_id: "r".into(),
                name: "lock".into(),
                fencing_token: 7,
            },
        }),
        Message::JournalEvent(JournalEvent {
            event: JournalEntry {
                sequence: "42".into(),
                event_type: JournalEventType::Delete,
                map_name: "todos".into(),
                key: "t1".into(),
                value: None,
                previous_value: Some(json!({"a": 1})),
                timestamp: ts(1),
                node_id: "server".into(),
                metadata: None,
            },
        }),
        Message::EntryProcessResponse(EntryProcessResponse {
            request_id: "r".into(),
            success: false,
            result: None,
            new_value: None,
            error: Some("Entry processing not available".into()),
        }),
        Message::VectorSearch(VectorSearch {
            payload: VectorSearchPayload {
                id: "v".into(),
                map_name: "docs".into(),
                index_name: None,
                query_vector: Bytes(vec![0, 0, 128, 63]),
                k: 3,
                ef_search: None,
                options: None,
            },
        }),
        Message::HybridSearch(HybridSearch {
            payload: HybridSearchPayload {
                request_id: "h".into(),
                request: HybridSearchRequest {
                    map_name: "docs".into(),
                    query_text: "hello".into(),
                    methods: vec![SearchMethod::FullText],
                    k: 3,
                    query_vector: None,
                    predicate: None,
                    include_value: Some(true),
                    min_score: None,
                },
            },
        }),
        Message::PartitionMapRequest(PartitionMapRequest::default()),
        Message::MergeRejected(MergeRejected {
            map_name: "m".into(),
            key: "k".into(),
            attempted_value: json!(3),
            reason: "rejected".into(),
            timestamp: ts(1_700_000_000_000),
        }),
        Message::GcPrune(GcPrune {
            payload: GcPrunePayload {
                older_than: ts(1_697_408_000_000),
            },
        }),
    ];
    for message in messages {
        round_trip(message);
    }
}

fn msgpack(value: &rmpv::Value) -> Vec<u8> {
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, value).unwrap();
    out
}

fn mp_map(entries: Vec<(&str, rmpv::Value)>) -> rmpv::Value {
    rmpv::Value::Map(entries.into_iter().map(|(k, v)| (k.into(), v)).collect())
}

#[test]
fn ext0_is_absent_in_maps_and_null_in_arrays() {
    let undefined = rmpv::Value::Ext(0, vec![0]);
    let frame = msgpack(&mp_map(vec![
        ("type", "TOPIC_PUB".into()),
        (
            "payload",
            mp_map(vec![
                ("topic", "t".into()),
                (
                    "data",
                    rmpv::Value::Array(vec![1.into(), undefined.clone()]),
                ),
                ("extra", undefined),
            ]),
        ),
    ]));
    let value = decode_value(Frame::Binary(&frame), &Limits::default()).unwrap();
    assert_eq!(
        value,
        json!({"type": "TOPIC_PUB", "payload": {"topic": "t", "data": [1, null]}})
    );
}

#[test]
fn malformed_frames_fail_with_located_errors() {
    let limits = Limits::default();
    let bad_key = msgpack(&rmpv::Value::Map(vec![(1.into(), 2.into())]));
    assert_eq!(
        decode_value(Frame::Binary(&bad_key), &limits),
        Err(DecodeError::NonStringKey {
            path: String::new()
        })
    );
    let infinite = msgpack(&mp_map(vec![(
        "a/b",
        rmpv::Value::Array(vec![rmpv::Value::F64(f64::INFINITY)]),
    )]));
    assert_eq!(
        decode_value(Frame::Binary(&infinite), &limits),
        Err(DecodeError::NonFiniteNumber {
            path: "/a~1b/0".into()
        })
    );
    let mut trailing = msgpack(&mp_map(vec![("type", "PING".into())]));
    trailing.push(0xc0);
    assert_eq!(
        decode_value(Frame::Binary(&trailing), &limits),
        Err(DecodeError::TrailingBytes(1))
    );
    let other_ext = msgpack(&mp_map(vec![("t", rmpv::Value::Ext(-1, vec![0; 4]))]));
    assert_eq!(
        decode_value(Frame::Binary(&other_ext), &limits),
        Err(DecodeError::UnsupportedExt {
            path: "/t".into(),
            ext_type: -1
        })
    );
}

#[test]
fn depth_and_size_limits_apply_to_both_encodings() {
    let limits = Limits {
        max_depth: 3,
        max_frame_bytes: 64,
    };
    let ok = r#"{"type":"X","a":{"b":[]}}"#;
    assert!(decode_value(Frame::Text(ok), &limits).is_ok());
    let deep = r#"{"type":"X","a":{"b":[[]]}}"#;
    assert_eq!(
        decode_value(Frame::Text(deep), &limits),
        Err(DecodeError::TooDeep {
            path: "/a/b/0".into(),
            max: 3
        })
    );
    let deep_mp = msgpack(&mp_map(vec![(
        "a",
        mp_map(vec![(
            "b",
            rmpv::Value::Array(vec![rmpv::Value::Array(vec![])]),
        )]),
    )]));
    assert_eq!(
        decode_value(Frame::Binary(&deep_mp), &limits),
        Err(DecodeError::TooDeep {
            path: "/a/b/0".into(),
            max: 3
        })
    );
    let big = "x".repeat(65);
    assert_eq!(
        decode_value(Frame::Text(&big), &limits),
        Err(DecodeError::FrameTooLarge { size: 65, max: 64 })
    );
}

#[test]
fn json_frames_normalise_integral_floats_and_name_unknown_types() {
    let text = r#"{"type":"PING","timestamp":1.7e12}"#;
    assert_eq!(
        decode(Frame::Text(text)).unwrap(),
        Message::Ping(Ping {
            timestamp: 1_700_000_000_000
        })
    );
    let as_binary = decode(Frame::Binary(text.as_bytes())).unwrap();
    assert_eq!(as_binary.type_name(), "PING");
    assert_eq!(
        decode(Frame::Text(r#"{"type":"NOPE"}"#)),
        Err(DecodeError::UnknownType("NOPE".into()))
    );
    assert_eq!(
        decode(Frame::Text(r#"{"t":1}"#)),
        Err(DecodeError::MissingType)
    );
    assert_eq!(decode(Frame::Text("[1]")), Err(DecodeError::NotAnObject));
    let fractional = r#"{"type":"PING","timestamp":1.5}"#;
    assert!(matches!(
        decode(Frame::Text(fractional)),
        Err(DecodeError::Invalid { .. })
    ));
}

proptest! {
    #[test]
    fn writes_round_trip_for_any_clock_and_user_numbers(
        millis in 0u64..(1u64 << 53),
        counter in any::<u32>(),
        int in -(1i64 << 53)..=(1i64 << 53),
        float in -1e300f64..1e300,
        id in 0u64..u64::MAX,
    ) {
        let op = ClientOp {
            id: Some(id.to_string()),
            map_name: "m".into(),
            key: "k".into(),
            op_type: Some(OpType::Put),
            record: Some(LwwRecord {
                value: Some(json!({"i": int, "f": float}).into()),
                timestamp: Timestamp::new(millis, counter, "n"),
                ttl_ms: None,
            }),
            or_record: None,
            or_tag: None,
            write_concern: None,
            timeout: None,
        };
        prop_assert_eq!(op.numeric_id(), Ok(id));
        let message = Message::OpBatch(OpBatch {
            payload: OpBatchPayload { ops: vec![op], write_concern: None, timeout: None },
        });
        let packed = encode_msgpack(&message).unwrap();
        let decoded = decode(Frame::Binary(&packed)).unwrap();
        // Integral floats come back as integers, so compare numerically.
        let Message::OpBatch(batch) = &decoded else { panic!("not an OP_BATCH") };
        let record = batch.payload.ops[0].record.as_ref().unwrap();
        prop_assert_eq!(record.timestamp.millis, millis);
        prop_assert_eq!(record.timestamp.counter, counter);
        let value = record.value.as_ref().unwrap();
        prop_assert_eq!(value["i"].as_f64(), Some(int as f64));
        prop_assert_eq!(value["f"].as_f64(), Some(float));
    }
}
