//! Golden frames recorded between real TopGun TypeScript clients and real servers
//! (/work/shared/wire): every client frame must decode through the full ingress path, and
//! every server frame must decode too, proving the types read what real servers send.

use serde_json::Value;

use crate::protocol::Message;
use crate::protocol::codec::{DecodeError, Frame, decode, decode_batch_data};

const WIRE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/wire");

pub(super) fn hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

/// Every recorded frame of one client generation: (file, line record).
pub(super) fn frames(generation: &str) -> Vec<(String, Value)> {
    let dir = format!("{WIRE}/{generation}");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    files.sort();
    assert!(files.len() >= 9, "wire recordings missing in {dir}");
    let mut out = Vec::new();
    for path in files {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        for line in std::fs::read_to_string(&path).unwrap().lines() {
            let record: Value = serde_json::from_str(line).unwrap();
            if record.get("hex").is_some() {
                out.push((name.clone(), record));
            }
        }
    }
    out
}

/// The frame the 2026-01 client sends after its HLC was poisoned by a numeric PONG timestamp.
fn is_nan_millis_frame(record: &Value) -> bool {
    record["decoded"].to_string().contains("NaN")
}

fn check_decodes(file: &str, record: &Value) -> Message {
    let bytes = hex(record["hex"].as_str().unwrap());
    let message = decode(Frame::Binary(&bytes))
        .unwrap_or_else(|e| panic!("{file} seq {}: {e:?}", record["seq"]));
    assert_eq!(
        message.type_name(),
        record["type"].as_str().unwrap(),
        "{file}"
    );
    message
}

fn check_generation(generation: &str) -> (usize, usize) {
    let (mut client, mut server) = (0, 0);
    for (file, record) in frames(generation) {
        let from_client = record["dir"] == "c2s" || file == "encodings.jsonl";
        if from_client && is_nan_millis_frame(&record) {
            let bytes = hex(record["hex"].as_str().unwrap());
            assert_eq!(
                decode(Frame::Binary(&bytes)),
                Err(DecodeError::NonFiniteNumber {
                    path: "/payload/ops/0/record/timestamp/millis".into()
                })
            );
            continue;
        }
        let message = check_decodes(&file, &record);
        if from_client {
            client += 1;
            continue;
        }
        server += 1;
        if let Message::Batch(batch) = message {
            let inner = decode_batch_data(&batch.data.0).unwrap();
            assert_eq!(inner.len(), batch.count as usize);
            let expected = record["batchInner"].as_array().unwrap();
            assert_eq!(inner.len(), expected.len());
            for (bytes, expected) in inner.iter().zip(expected) {
                let message = decode(Frame::Binary(bytes)).unwrap();
                assert_eq!(message.type_name(), expected["decoded"]["type"]);
                server += 1;
            }
        }
    }
    (client, server)
}

#[test]
fn every_2026_01_frame_decodes() {
    let (client, server) = check_generation("client-2026-01");
    assert_eq!(
        (client, server),
        (95, 78),
        "client and server frames checked"
    );
}

#[test]
fn every_2026_08_frame_decodes() {
    let (client, server) = check_generation("client-2026-08");
    assert_eq!(
        (client, server),
        (107, 72),
        "client and server frames checked"
    );
}

fn first_of(generation: &str, file: &str, type_name: &str) -> Message {
    let (file, record) = frames(generation)
        .into_iter()
        .find(|(f, r)| f == file && r["type"] == type_name)
        .unwrap();
    check_decodes(&file, &record)
}

#[test]
fn legacy_ops_drop_undefined_fields_and_keep_tombstones() {
    let Message::OpBatch(batch) = first_of("client-2026-01", "c-ormap.jsonl", "OP_BATCH") else {
        panic!("not an OP_BATCH");
    };
    let op = &batch.payload.ops[0];
    assert_eq!(op.map_name.split('-').next(), Some("wire"));
    assert!(op.record.is_none(), "ext-0 record is absent");
    assert!(op.or_tag.is_none(), "ext-0 orTag is absent");
    let record = op.or_record.as_ref().unwrap();
    assert_eq!(record.tag, record.timestamp.to_string());
    assert_eq!(op.numeric_id(), Ok(1));
}

#[test]
fn both_sort_forms_and_both_counter_spellings_decode() {
    for generation in ["client-2026-01", "client-2026-08"] {
        let Message::QuerySub(sub) = first_of(generation, "b-lww-and-query.jsonl", "QUERY_SUB")
        else {
            panic!("not a QUERY_SUB");
        };
        let sort = sub.payload.query.sort.unwrap().fields();
        assert_eq!(sort.len(), 1);
        assert_eq!(sort[0].field, "prio");
        let Message::CounterSync(sync) = first_of(generation, "f-counter.jsonl", "COUNTER_SYNC")
        else {
            panic!("not a COUNTER_SYNC");
        };
        assert_eq!(sync.payload.state.positive.get("wire-client-f"), Some(&1.0));
        let Message::CounterResponse(resp) =
            first_of(generation, "f-counter.jsonl", "COUNTER_RESPONSE")
        else {
            panic!("not a COUNTER_RESPONSE");
        };
        assert!(resp.payload.state.positive.is_empty());
    }
}

#[test]
fn float64_and_uint64_millis_both_decode() {
    let Message::Ping(ping) = first_of("client-2026-01", "a-connect-auth-heartbeat.jsonl", "PING")
    else {
        panic!("not a PING");
    };
    assert_eq!(ping.timestamp, 1_795_698_307_400);
    let Message::Pong(pong) = first_of("client-2026-08", "a-connect-auth-heartbeat.jsonl", "PONG")
    else {
        panic!("not a PONG");
    };
    assert_eq!(pong.server_time, 1_795_698_254_065);
}

#[test]
fn vector_query_sent_as_index_object_decodes_to_bytes() {
    let Message::VectorSearch(search) =
        first_of("client-2026-08", "x-extra-sends.jsonl", "VECTOR_SEARCH")
    else {
        panic!("not a VECTOR_SEARCH");
    };
    assert_eq!(
        search.payload.query_vector.0,
        vec![205, 204, 204, 61, 205, 204, 76, 62, 154, 153, 153, 62]
    );
}
