//! The msgpack fast path (`codec/tape.rs`) against the general decoder: on every recorded
//! frame and on random mutations of them, the fast path either declines or yields exactly the
//! message (and JS-`undefined` note) the general path yields; and it does not decline frames
//! real clients send.

use proptest::prelude::*;
use rmpv::Value as Mp;

use super::golden::{frames, hex};
use crate::protocol::Message;
use crate::protocol::codec::msgpack_writer::MsgpackWriter;
use crate::protocol::codec::{
    DecodeError, Frame, Limits, decode_batch_data, decode_msgpack_fast, decode_typed,
    decode_value_noting_undefined,
};
use crate::protocol::validate;

/// Decode → validate → type, the general way.
fn general(bytes: &[u8], limits: &Limits) -> Result<(Message, bool), DecodeError> {
    let decoded = decode_value_noting_undefined(Frame::Binary(bytes), limits)?;
    let type_name = decoded
        .value
        .get("type")
        .and_then(|t| t.as_str())
        .ok_or(DecodeError::MissingType)?
        .to_owned();
    validate(&type_name, &decoded.value).map_err(|violations| DecodeError::Invalid {
        type_name,
        violations,
    })?;
    Ok((decode_typed(decoded.value)?, decoded.js_undefined))
}

/// The fast path never disagrees with the general one; returns whether it decoded the frame.
fn agree(bytes: &[u8], limits: &Limits) -> bool {
    let fast = decode_msgpack_fast(bytes, limits, true);
    let slow = general(bytes, limits);
    match (&fast, &slow) {
        (None, _) => false,
        (Some(fast), Ok((message, js_undefined))) => {
            assert_eq!(&fast.message, message, "frame {}", hex_of(bytes));
            assert_eq!(
                written_lww_values(&fast.message),
                written_lww_values(message),
                "frame {}",
                hex_of(bytes)
            );
            assert_eq!(fast.js_undefined, *js_undefined, "frame {}", hex_of(bytes));
            true
        }
        (Some(fast), Err(e)) => {
            panic!(
                "fast path took {fast:?}, general path refused: {e:?}; frame {}",
                hex_of(bytes)
            )
        }
    }
}

/// What the store and the journal write for each LWW value a message carries: the fast path
/// keeps these values encoded, and its bytes must be the ones the general path's `Value`
/// encodes to.
fn written_lww_values(message: &Message) -> Vec<Vec<u8>> {
    let ops = match message {
        Message::OpBatch(batch) => batch.payload.ops.iter().collect(),
        Message::ClientOp(op) => vec![&op.payload],
        _ => Vec::new(),
    };
    ops.into_iter()
        .filter_map(|op| op.record.as_ref()?.value.as_ref())
        .map(|value| {
            let mut out = MsgpackWriter::default();
            value.write_msgpack(&mut out).unwrap();
            out.into_vec()
        })
        .collect()
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Every recorded msgpack frame of both generations, with the inner frames of BATCHes.
fn recorded_frames() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for generation in ["client-2026-01", "client-2026-08"] {
        for (_, record) in frames(generation) {
            let bytes = hex(record["hex"].as_str().unwrap());
            if bytes.first() == Some(&b'{') {
                continue; // JSON sent as a binary frame: not msgpack.
            }
            if let Ok((Message::Batch(batch), _)) = general(&bytes, &Limits::default()) {
                out.extend(
                    decode_batch_data(&batch.data.0)
                        .unwrap()
                        .into_iter()
                        .map(<[u8]>::to_vec),
                );
            }
            out.push(bytes);
        }
    }
    out
}

#[test]
fn every_recorded_frame_decodes_the_same_on_the_fast_path() {
    let limits = Limits::default();
    let (mut fast, mut decodable) = (0, 0);
    for bytes in recorded_frames() {
        let general_ok = general(&bytes, &limits).is_ok();
        let took_fast = agree(&bytes, &limits);
        assert_eq!(took_fast, general_ok, "frame {}", hex_of(&bytes));
        decodable += usize::from(general_ok);
        fast += usize::from(took_fast);
    }
    assert!(decodable > 300, "only {decodable} recorded frames decoded");
    assert_eq!(fast, decodable);
}

#[test]
fn declined_frames_are_left_to_the_general_path() {
    let limits = Limits::default();
    let encode = |value: &Mp| {
        let mut out = Vec::new();
        rmpv::encode::write_value(&mut out, value).unwrap();
        out
    };
    let map = |entries: Vec<(&str, Mp)>| {
        Mp::Map(entries.into_iter().map(|(k, v)| (k.into(), v)).collect())
    };
    let ping = |timestamp: Mp| map(vec![("type", "PING".into()), ("timestamp", timestamp)]);
    // Decoded on the fast path: integral float millis, and JS undefined members.
    assert!(agree(&encode(&ping(Mp::F64(1_795_698_307_400.0))), &limits));
    let with_undefined = map(vec![
        ("type", "PING".into()),
        ("timestamp", 5.into()),
        ("extra", Mp::Ext(0, vec![0])),
    ]);
    let fast = decode_msgpack_fast(&encode(&with_undefined), &limits, true).unwrap();
    assert!(fast.js_undefined);
    // Declined: schema violations, refused input, repeated keys, trailing bytes, size.
    let declined = [
        encode(&ping("soon".into())),
        encode(&ping(Mp::F64(f64::NAN))),
        encode(&ping(Mp::Ext(3, vec![1]))),
        encode(&map(vec![("type", "NO_SUCH".into())])),
        encode(&map(vec![
            ("type", "PING".into()),
            ("type", "PING".into()),
            ("timestamp", 1.into()),
        ])),
        encode(&map(vec![
            ("type", "PING".into()),
            ("timestamp", 1.into()),
            ("extra", 1.into()),
            ("extra", 2.into()),
        ])),
        [encode(&ping(1.into())), vec![0xc0]].concat(),
        encode(&Mp::Array(vec![])),
    ];
    for bytes in declined {
        assert!(
            decode_msgpack_fast(&bytes, &limits, true).is_none(),
            "{}",
            hex_of(&bytes)
        );
        assert!(!agree(&bytes, &limits));
    }
    let small = Limits {
        max_frame_bytes: 4,
        ..Limits::default()
    };
    assert!(decode_msgpack_fast(&encode(&ping(1.into())), &small, true).is_none());
    // With validation off (benchmarks only), a schema violation that still types is taken.
    let unknown_member = encode(&map(vec![("type", "PING".into()), ("timestamp", 1.into())]));
    assert!(decode_msgpack_fast(&unknown_member, &limits, false).is_some());
}

/// A msgpack value to splice into a frame: every kind the normalisation rules treat apart.
fn spliced() -> impl Strategy<Value = Mp> {
    let leaf = prop_oneof![
        Just(Mp::Nil),
        any::<bool>().prop_map(Mp::from),
        any::<i64>().prop_map(Mp::from),
        any::<u64>().prop_map(Mp::from),
        (0u32..100).prop_map(Mp::from),
        any::<f64>().prop_map(Mp::F64),
        (-1000i64..1000).prop_map(|n| Mp::F64(n as f64)),
        any::<f32>().prop_map(Mp::F32),
        "[a-zA-Z_]{0,8}".prop_map(Mp::from),
        prop::collection::vec(any::<u8>(), 0..6).prop_map(Mp::Binary),
        Just(Mp::Ext(0, vec![0])),
        (1i8..5, prop::collection::vec(any::<u8>(), 1..3)).prop_map(|(t, d)| Mp::Ext(t, d)),
        Just(Mp::from("PUT")),
        Just(Mp::from("APPLIED")),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Mp::Array),
            prop::collection::vec(("[a-c]{1,2}", inner), 0..4).prop_map(|entries| {
                Mp::Map(entries.into_iter().map(|(k, v)| (k.into(), v)).collect())
            }),
        ]
    })
}

/// One edit of a frame's value tree at its `target`-th node (preorder).
#[derive(Debug, Clone)]
enum Edit {
    Replace(Mp),
    Remove,
    Insert(String, Mp),
    RepeatKey,
    Integral,
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        3 => spliced().prop_map(Edit::Replace),
        2 => Just(Edit::Remove),
        2 => ("[a-zA-Z]{1,10}", spliced()).prop_map(|(k, v)| Edit::Insert(k, v)),
        1 => Just(Edit::RepeatKey),
        2 => Just(Edit::Integral),
    ]
}

/// Applies `edit` at the `target`-th node; returns how many nodes remain to skip.
fn apply(value: &mut Mp, target: &mut usize, edit: &Edit) -> bool {
    if *target == 0 {
        match (edit, &mut *value) {
            (Edit::Replace(with), _) => *value = with.clone(),
            (Edit::Remove, Mp::Map(entries)) if !entries.is_empty() => {
                entries.remove(entries.len() / 2);
            }
            (Edit::Insert(key, with), Mp::Map(entries)) => {
                entries.push((key.as_str().into(), with.clone()));
            }
            (Edit::RepeatKey, Mp::Map(entries)) if !entries.is_empty() => {
                let first = entries[0].clone();
                entries.push(first);
            }
            (Edit::Integral, Mp::Integer(n)) => {
                if let Some(f) = n.as_f64() {
                    *value = Mp::F64(f);
                }
            }
            (Edit::Integral, Mp::String(text)) => {
                *value = Mp::Binary(text.as_bytes().to_vec());
            }
            _ => *value = Mp::Ext(0, vec![0]),
        }
        return true;
    }
    *target -= 1;
    match value {
        Mp::Array(items) => items.iter_mut().any(|item| apply(item, target, edit)),
        Mp::Map(entries) => entries
            .iter_mut()
            .any(|(_, item)| apply(item, target, edit)),
        _ => false,
    }
}

fn count(value: &Mp) -> usize {
    1 + match value {
        Mp::Array(items) => items.iter().map(count).sum(),
        Mp::Map(entries) => entries.iter().map(|(_, item)| count(item)).sum(),
        _ => 0,
    }
}

fn seeds() -> &'static [Mp] {
    static SEEDS: std::sync::OnceLock<Vec<Mp>> = std::sync::OnceLock::new();
    SEEDS.get_or_init(|| {
        recorded_frames()
            .iter()
            .filter_map(|bytes| rmpv::decode::read_value(&mut bytes.as_slice()).ok())
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn mutated_recorded_frames_never_decode_differently(
        seed in any::<prop::sample::Index>(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), edit()), 1..4),
    ) {
        let mut value = seed.get(seeds()).clone();
        for (at, edit) in &edits {
            let mut target = at.index(count(&value));
            apply(&mut value, &mut target, edit);
        }
        let mut bytes = Vec::new();
        rmpv::encode::write_value(&mut bytes, &value).unwrap();
        agree(&bytes, &Limits::default());
        agree(&bytes, &Limits { max_depth: 3, ..Limits::default() });
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Values of every shape, as an LWW op carries them: the fast path takes the frame and
    /// writes each value exactly as the general path's decoded value is written.
    #[test]
    fn lww_values_of_every_shape_keep_their_encoding(
        value in crate::protocol::codec::msgpack_writer::tests::json_value(),
    ) {
        let tombstone = value.is_null();
        let message = serde_json::json!({
            "type": "OP_BATCH",
            "payload": {"ops": [{
                "mapName": "m",
                "key": "k",
                "opType": "PUT",
                "record": {"value": value, "timestamp": {"millis": 1, "counter": 0, "nodeId": "n"}},
            }]},
        });
        let bytes = rmp_serde::to_vec_named(&message).unwrap();
        prop_assert!(agree(&bytes, &Limits::default()), "the fast path declined {}", hex_of(&bytes));
        let Some(Message::OpBatch(batch)) = decode_msgpack_fast(&bytes, &Limits::default(), true)
            .map(|fast| fast.message)
        else {
            unreachable!("agree() saw the fast path decode it");
        };
        let value = batch.payload.ops[0].record.as_ref().and_then(|r| r.value.as_ref());
        // A null value is a tombstone, which holds no value at all.
        prop_assert_eq!(value.is_none(), tombstone);
        prop_assert!(value.is_none_or(|v| v.is_encoded()), "the value was decoded: {value:?}");
    }
}
