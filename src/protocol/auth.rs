//! Handshake messages: `AUTH_REQUIRED`, `AUTH`, `AUTH_ACK`, `AUTH_FAIL` and the 2026-08
//! device identity pair `DEVICE_HELLO` / `DEVICE_ACK` (PROTOCOL.md §2.2, §2.8). All flat.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Id, Text, Token};

/// `AUTH_REQUIRED` (S→C): no fields besides `type`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AuthRequired {}

/// `AUTH` (C→S): a JWT.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Auth {
    /// The JWT.
    #[schemars(with = "Token")]
    pub token: String,
    /// 2026-08: never set by real clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol_version: Option<u32>,
    /// 2026-08: a device token from an earlier `AUTH_ACK`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<Token>")]
    pub device_token: Option<String>,
}

/// `AUTH_ACK` (S→C). The 2026-01 server sends no fields.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthAck {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol_version: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<Id>")]
    pub user_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<Id>")]
    pub device_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<Token>")]
    pub device_token: Option<String>,
}

/// `AUTH_FAIL` (S→C).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthFail {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<Text>")]
    pub error: Option<String>,
    /// 2026-08.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<u32>,
}

/// `DEVICE_HELLO` (C→S, 2026-08): sent by a token-less client instead of `AUTH`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeviceHello {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<Token>")]
    pub device_token: Option<String>,
}

/// `DEVICE_ACK` (S→C, 2026-08).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeviceAck {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<Id>")]
    pub device_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<Token>")]
    pub device_token: Option<String>,
}
