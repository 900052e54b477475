//! The floor: a calibration server that answers what `bench write` needs (`AUTH` with
//! `AUTH_ACK`, `OP_BATCH` with the `OP_ACK` of its last op) and does nothing else. No
//! authentication, no merge, no store: the ops are read only as far as their ids.
//!
//! Run against it, `bench write` measures what the machine, the loopback network, the
//! WebSocket framing and the load generator cost on their own. On a machine whose speed
//! drifts (a shared VM), a floor run next to a real run tells the server's own cost apart
//! from the machine's phase. Speaks MessagePack only, as the generator does.

use futures_util::{SinkExt, StreamExt};
use rmpv::ValueRef;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::net::{Listener, Stream};
use crate::protocol::{AuthAck, Message, OpAck, OpAckPayload, encode_msgpack};

/// Accepts connections until the listener fails, answering each on its own task.
pub async fn serve<L: Listener>(mut listener: L) -> std::io::Result<()> {
    loop {
        let (stream, _peer) = listener.accept().await?;
        tokio::spawn(answer(stream));
    }
}

/// One connection: the WebSocket handshake, then a reply per frame that needs one.
async fn answer<S: Stream>(stream: S) {
    let Ok(mut socket) = tokio_tungstenite::accept_async(stream).await else {
        return;
    };
    while let Some(Ok(frame)) = socket.next().await {
        let WsMessage::Binary(bytes) = frame else {
            continue;
        };
        let Some(reply) = reply_to(&bytes) else {
            continue;
        };
        if socket.send(WsMessage::Binary(reply.into())).await.is_err() {
            return;
        }
    }
}

/// The encoded reply a real server would send first, or `None` for frames the floor leaves
/// unanswered (anything but `AUTH` and a well-formed `OP_BATCH`).
fn reply_to(frame: &[u8]) -> Option<Vec<u8>> {
    let mut input = frame;
    let message = rmpv::decode::read_value_ref(&mut input).ok()?;
    let reply = match text(field(&message, "type")?)? {
        // Without fields, as the 2026-01 server sends it.
        "AUTH" => Message::AuthAck(AuthAck::default()),
        "OP_BATCH" => {
            let ValueRef::Array(ops) = field(field(&message, "payload")?, "ops")? else {
                return None;
            };
            let last_id = text(field(ops.last()?, "id")?)?;
            Message::OpAck(OpAck {
                payload: OpAckPayload {
                    last_id: last_id.to_owned(),
                    achieved_level: None,
                    results: None,
                },
            })
        }
        _ => return None,
    };
    encode_msgpack(&reply).ok()
}

/// The value under string key `name` in a MessagePack map.
fn field<'a>(map: &'a ValueRef<'a>, name: &str) -> Option<&'a ValueRef<'a>> {
    let ValueRef::Map(entries) = map else {
        return None;
    };
    entries
        .iter()
        .find(|(key, _)| text(key) == Some(name))
        .map(|(_, value)| value)
}

/// A MessagePack string's text.
fn text<'a>(value: &'a ValueRef<'a>) -> Option<&'a str> {
    match value {
        ValueRef::String(string) => string.as_str(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Auth, ClientOp, Frame, OpBatch, OpBatchPayload, Ping, decode};

    fn op(id: &str) -> ClientOp {
        ClientOp {
            id: Some(id.to_owned()),
            map_name: "m".to_owned(),
            key: "k".into(),
            op_type: None,
            record: None,
            or_record: None,
            or_tag: None,
            write_concern: None,
            timeout: None,
        }
    }

    fn replied(message: &Message) -> Option<Message> {
        let bytes = encode_msgpack(message).unwrap();
        reply_to(&bytes).map(|reply| decode(Frame::Binary(&reply)).unwrap())
    }

    #[test]
    fn auth_is_acked_and_a_batch_is_acked_up_to_its_last_op() {
        let auth = Message::Auth(Auth {
            token: "anything".to_owned(),
            protocol_version: None,
            device_token: None,
        });
        assert!(matches!(replied(&auth), Some(Message::AuthAck(_))));
        let batch = Message::OpBatch(OpBatch {
            payload: OpBatchPayload {
                ops: vec![op("7"), op("8"), op("9")],
                write_concern: None,
                timeout: None,
            },
        });
        let Some(Message::OpAck(ack)) = replied(&batch) else {
            panic!("no OP_ACK");
        };
        assert_eq!(ack.payload.last_id, "9");
    }

    #[test]
    fn other_and_malformed_frames_go_unanswered() {
        assert_eq!(replied(&Message::Ping(Ping { timestamp: 1 })), None);
        let empty = Message::OpBatch(OpBatch {
            payload: OpBatchPayload {
                ops: Vec::new(),
                write_concern: None,
                timeout: None,
            },
        });
        assert_eq!(replied(&empty), None);
        assert_eq!(reply_to(&[0xc1]), None);
        assert_eq!(reply_to(b""), None);
    }
}
