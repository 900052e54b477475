//! PN-counters: `COUNTER_REQUEST`, `COUNTER_SYNC`, `COUNTER_RESPONSE`, `COUNTER_UPDATE` and the
//! counter wire state (PROTOCOL.md §3.9).
//!
//! The servers' schema says `{p, n}` while both TS clients send and read `{positive,
//! negative}`; [`CounterState`] accepts either pair and always emits all four keys.

use std::borrow::Cow;
use std::collections::BTreeMap;

use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::common::Name;

/// Per-node counts of one side of a PN-counter.
pub type NodeCounts = BTreeMap<String, f64>;

/// PN-counter state: increments in `positive`, decrements (absolute values) in `negative`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CounterState {
    pub positive: NodeCounts,
    pub negative: NodeCounts,
}

impl CounterState {
    /// Σ positive − Σ negative.
    pub fn value(&self) -> f64 {
        self.positive.values().sum::<f64>() - self.negative.values().sum::<f64>()
    }
}

/// Every spelling a counter state may arrive in; `p`/`n` win when both pairs are present.
#[derive(Serialize, Deserialize, JsonSchema)]
#[schemars(rename = "CounterState")]
struct CounterStateWire {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    p: Option<NodeCounts>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    n: Option<NodeCounts>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    positive: Option<NodeCounts>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    negative: Option<NodeCounts>,
}

impl Serialize for CounterState {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        CounterStateWire {
            p: Some(self.positive.clone()),
            n: Some(self.negative.clone()),
            positive: Some(self.positive.clone()),
            negative: Some(self.negative.clone()),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for CounterState {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let wire = CounterStateWire::deserialize(deserializer)?;
        Ok(Self {
            positive: wire.p.or(wire.positive).unwrap_or_default(),
            negative: wire.n.or(wire.negative).unwrap_or_default(),
        })
    }
}

impl JsonSchema for CounterState {
    fn schema_name() -> Cow<'static, str> {
        CounterStateWire::schema_name()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        CounterStateWire::json_schema(generator)
    }
}

/// A payload holding only a counter name (`COUNTER_REQUEST`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CounterNamePayload {
    #[schemars(with = "Name")]
    pub name: String,
}

/// A counter name with its state (`COUNTER_SYNC`, `COUNTER_RESPONSE`, `COUNTER_UPDATE`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CounterStatePayload {
    #[schemars(with = "Name")]
    pub name: String,
    pub state: CounterState,
}

/// `COUNTER_REQUEST` (C→S): subscribe and get the current state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CounterRequest {
    pub payload: CounterNamePayload,
}

/// `COUNTER_SYNC` (C→S): merge the client's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CounterSync {
    pub payload: CounterStatePayload,
}

/// `COUNTER_RESPONSE` (S→C).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CounterResponse {
    pub payload: CounterStatePayload,
}

/// `COUNTER_UPDATE` (S→C).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CounterUpdate {
    pub payload: CounterStatePayload,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn accepts_both_spellings_and_emits_all_four_keys() {
        let short: CounterState =
            serde_json::from_value(json!({"p": {"a": 3.0}, "n": {"b": 1.0}})).unwrap();
        let long: CounterState =
            serde_json::from_value(json!({"positive": {"a": 3}, "negative": {"b": 1}})).unwrap();
        assert_eq!(short, long);
        assert_eq!(short.value(), 2.0);
        assert_eq!(
            serde_json::to_value(&short).unwrap(),
            json!({"p": {"a": 3.0}, "n": {"b": 1.0}, "positive": {"a": 3.0}, "negative": {"b": 1.0}})
        );
        let empty: CounterState = serde_json::from_value(json!({})).unwrap();
        assert_eq!(empty, CounterState::default());
    }
}
