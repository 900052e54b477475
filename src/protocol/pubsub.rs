//! Topics: `TOPIC_SUB`, `TOPIC_UNSUB`, `TOPIC_PUB`, `TOPIC_MESSAGE` (PROTOCOL.md §3.7).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::common::{Id, TopicName};

/// A payload holding only a topic name (`TOPIC_SUB`, `TOPIC_UNSUB`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TopicPayload {
    #[schemars(with = "TopicName")]
    pub topic: String,
}

/// `TOPIC_SUB` (C→S).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TopicSub {
    pub payload: TopicPayload,
}

/// `TOPIC_UNSUB` (C→S).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TopicUnsub {
    pub payload: TopicPayload,
}

/// `TOPIC_PUB` (C→S).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TopicPub {
    pub payload: TopicPubPayload,
}

/// Payload of `TOPIC_PUB`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TopicPubPayload {
    #[schemars(with = "TopicName")]
    pub topic: String,
    #[serde(default)]
    pub data: Value,
}

/// `TOPIC_MESSAGE` (S→C).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TopicMessage {
    pub payload: TopicMessagePayload,
}

/// Payload of `TOPIC_MESSAGE`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TopicMessagePayload {
    #[schemars(with = "TopicName")]
    pub topic: String,
    #[serde(default)]
    pub data: Value,
    /// The publisher's server-side connection id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<Id>")]
    pub publisher_id: Option<String>,
    /// Milliseconds since the epoch.
    pub timestamp: u64,
}
