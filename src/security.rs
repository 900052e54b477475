//! Permission policies and field-level security (PROTOCOL.md §4.8, TOPGUN-REFERENCE.md §2.2):
//! which principal may READ, PUT or REMOVE which map, topic or lock, and which top-level
//! fields of a value a principal may see.
//!
//! Semantics follow the 2026-01 `SecurityManager`: `ADMIN` bypasses everything, `$sys/`
//! resources are admin-only, no matching policy denies. Patterns are `*`, an exact name, or a
//! prefix ending in `*`, with `{userId}` standing for the principal's user id — substituted
//! as a literal, so a user id containing `*` cannot widen a pattern.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::auth::Principal;
use crate::user_value::UserValue;

/// Resources under this prefix are reserved for the server and admins.
pub const SYSTEM_PREFIX: &str = "$sys/";

const USER_ID_PLACEHOLDER: &str = "{userId}";
const WILDCARD: &str = "*";

/// What a request wants to do with a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Sync, query, search, topic subscribe.
    Read,
    /// Writes, entry processors, resolvers, topic publish, lock acquire/release.
    Put,
    /// Deletions.
    Remove,
}

/// An action a policy grants; `ALL` grants every [`Action`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PolicyAction {
    /// Grants [`Action::Read`].
    Read,
    /// Grants [`Action::Put`].
    Put,
    /// Grants [`Action::Remove`].
    Remove,
    /// Grants every action.
    All,
}

impl PolicyAction {
    fn grants(self, action: Action) -> bool {
        matches!(
            (self, action),
            (Self::All, _)
                | (Self::Read, Action::Read)
                | (Self::Put, Action::Put)
                | (Self::Remove, Action::Remove)
        )
    }
}

/// One permission rule, as written in the server's TOML config:
///
/// ```toml
/// [[permissions]]
/// role = "USER"
/// map = "todos-*"
/// actions = ["READ", "PUT"]
/// allowed_fields = ["title", "done"]   # optional
/// ```
///
/// TopGun's camelCase names (`mapNamePattern`, `allowedFields`) are accepted as aliases so
/// policies can be carried over from a 2026-01 deployment; unknown keys are errors, because a
/// misspelt `allowed_fields` would otherwise silently grant whole objects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// The role a principal must hold for this policy to apply.
    pub role: String,
    /// `*`, an exact resource name, or a prefix ending in `*`; may contain `{userId}`.
    #[serde(rename = "map", alias = "mapNamePattern")]
    pub map_name_pattern: String,
    /// The actions granted.
    pub actions: Vec<PolicyAction>,
    /// Top-level fields a READ through this policy may see; `None` or `"*"` means all.
    #[serde(
        default,
        alias = "allowedFields",
        skip_serializing_if = "Option::is_none"
    )]
    pub allowed_fields: Option<Vec<String>>,
}

impl Policy {
    /// Whether this policy speaks about `principal` acting on `resource`.
    fn applies_to(&self, principal: &Principal, resource: &str) -> bool {
        principal.has_role(&self.role)
            && pattern_matches(&self.map_name_pattern, resource, &principal.user_id)
    }

    fn grants(&self, action: Action) -> bool {
        self.actions.iter().any(|a| a.grants(action))
    }

    /// The fields this policy restricts reads to, or `None` when it exposes whole values.
    fn field_restriction(&self) -> Option<&[String]> {
        self.allowed_fields
            .as_deref()
            .filter(|fields| !fields.iter().any(|f| f == WILDCARD))
    }
}

/// Matches `resource` against a policy pattern. Only the pattern's own trailing `*` is a
/// wildcard: `{userId}` is expanded after the wildcard has been split off, so whatever the
/// user id contains is compared literally.
fn pattern_matches(pattern: &str, resource: &str, user_id: &str) -> bool {
    if pattern == WILDCARD {
        return true;
    }
    match pattern.strip_suffix(WILDCARD) {
        Some(prefix) => resource.starts_with(&prefix.replace(USER_ID_PLACEHOLDER, user_id)),
        None => resource == pattern.replace(USER_ID_PLACEHOLDER, user_id),
    }
}

/// The permission resource for a topic (PROTOCOL.md §3.7); locks use their bare name.
pub fn topic_resource(topic: &str) -> String {
    format!("topic:{topic}")
}

/// The set of policies a server enforces.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Permissions {
    policies: Vec<Policy>,
}

impl Permissions {
    /// Enforces exactly `policies`; an empty list lets only admins in.
    pub fn new(policies: Vec<Policy>) -> Self {
        Self { policies }
    }

    /// What TopGun's stock server installs: role `USER` may do anything on any resource.
    pub fn development_default() -> Self {
        Self::new(vec![Policy {
            role: crate::auth::DEFAULT_ROLE.to_owned(),
            map_name_pattern: WILDCARD.to_owned(),
            actions: vec![PolicyAction::All],
            allowed_fields: None,
        }])
    }

    /// No policies: everything is denied except to `ADMIN`.
    pub fn admin_only() -> Self {
        Self::new(Vec::new())
    }

    /// The enforced policies, in configuration order.
    pub fn policies(&self) -> &[Policy] {
        &self.policies
    }

    /// Whether `principal` may perform `action` on `resource` (a map name, `topic:<name>`,
    /// or a lock name).
    pub fn check(&self, principal: &Principal, resource: &str, action: Action) -> bool {
        if principal.is_admin() {
            return true;
        }
        if resource.starts_with(SYSTEM_PREFIX) {
            return false;
        }
        self.policies
            .iter()
            .any(|p| p.applies_to(principal, resource) && p.grants(action))
    }

    /// Field-level security for a value of `map` about to be sent to `principal`.
    ///
    /// `None` means the principal may not see the value at all. Otherwise the value is
    /// returned whole when the principal is an admin or any applicable READ policy leaves
    /// fields unrestricted; else an object keeps only the union of allowed top-level fields
    /// (in the value's own field order). A non-object value has no fields to allow, so under
    /// a field restriction it is withheld (`None`) rather than leaked.
    pub fn filter_value(&self, principal: &Principal, map: &str, value: Value) -> Option<Value> {
        self.filter_user_value(principal, map, value.into())
            .map(UserValue::into_value)
    }

    /// [`Permissions::filter_value`] for a record's value, which is decoded only when a field
    /// restriction has to look inside it.
    pub fn filter_user_value(
        &self,
        principal: &Principal,
        map: &str,
        value: UserValue,
    ) -> Option<UserValue> {
        if principal.is_admin() {
            return Some(value);
        }
        match self.read_restriction(principal, map)? {
            None => Some(value),
            Some(allowed) => match value.into_value() {
                Value::Object(fields) => Some(Value::Object(keep_fields(fields, &allowed)).into()),
                // A non-object value has no fields to allow, so it is withheld.
                _ => None,
            },
        }
    }

    /// `None` when reading is denied; `Some(None)` when whole values are visible;
    /// `Some(Some(fields))` when reads are limited to the union of `fields`.
    fn read_restriction(&self, principal: &Principal, map: &str) -> Option<Option<Vec<&str>>> {
        if map.starts_with(SYSTEM_PREFIX) {
            return None;
        }
        let mut readers = self
            .policies
            .iter()
            .filter(|p| p.applies_to(principal, map) && p.grants(Action::Read))
            .peekable();
        readers.peek()?;
        let mut allowed = Vec::new();
        for policy in readers {
            let Some(fields) = policy.field_restriction() else {
                return Some(None);
            };
            allowed.extend(fields.iter().map(String::as_str));
        }
        Some(Some(allowed))
    }
}

fn keep_fields(fields: Map<String, Value>, allowed: &[&str]) -> Map<String, Value> {
    fields
        .into_iter()
        .filter(|(name, _)| allowed.contains(&name.as_str()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn user(id: &str, roles: &[&str]) -> Principal {
        Principal::new(id, roles.iter().map(|r| (*r).to_owned()).collect())
    }

    fn policy(role: &str, pattern: &str, actions: &[PolicyAction]) -> Policy {
        Policy {
            role: role.to_owned(),
            map_name_pattern: pattern.to_owned(),
            actions: actions.to_vec(),
            allowed_fields: None,
        }
    }

    fn fls_policy(role: &str, pattern: &str, fields: &[&str]) -> Policy {
        Policy {
            allowed_fields: Some(fields.iter().map(|f| (*f).to_owned()).collect()),
            ..policy(role, pattern, &[PolicyAction::Read])
        }
    }

    use PolicyAction::{All, Put, Read, Remove};

    #[test]
    fn admin_is_allowed_everything_even_without_policies() {
        let perms = Permissions::admin_only();
        let admin = user("root", &["ADMIN"]);
        assert!(perms.check(&admin, "todos", Action::Remove));
        assert!(perms.check(&admin, "$sys/config", Action::Put));
        assert!(perms.check(&admin, &topic_resource("news"), Action::Read));
    }

    #[test]
    fn no_policies_deny_everyone_but_admin() {
        let perms = Permissions::admin_only();
        assert!(perms.policies().is_empty());
        let alice = user("alice", &["USER"]);
        for action in [Action::Read, Action::Put, Action::Remove] {
            assert!(!perms.check(&alice, "todos", action));
        }
    }

    #[test]
    fn development_default_lets_users_do_anything_outside_sys() {
        let perms = Permissions::development_default();
        let alice = user("alice", &["USER"]);
        for action in [Action::Read, Action::Put, Action::Remove] {
            assert!(perms.check(&alice, "todos", action));
            assert!(perms.check(&alice, "topic:chat", action));
            assert!(!perms.check(&alice, "$sys/stats", action));
        }
        assert!(!perms.check(&user("bob", &["GUEST"]), "todos", Action::Read));
    }

    #[test]
    fn sys_resources_are_admin_only_even_with_a_matching_policy() {
        let perms = Permissions::new(vec![policy("USER", "$sys/*", &[All])]);
        assert!(!perms.check(&user("alice", &["USER"]), "$sys/users", Action::Read));
        assert!(perms.check(&user("root", &["ADMIN"]), "$sys/users", Action::Read));
        // Only the exact prefix is reserved.
        let perms = Permissions::new(vec![policy("USER", "*", &[All])]);
        assert!(perms.check(&user("alice", &["USER"]), "$system", Action::Read));
    }

    #[test]
    fn policy_grants_only_listed_actions() {
        let perms = Permissions::new(vec![policy("USER", "todos", &[Read, Put])]);
        let alice = user("alice", &["USER"]);
        assert!(perms.check(&alice, "todos", Action::Read));
        assert!(perms.check(&alice, "todos", Action::Put));
        assert!(!perms.check(&alice, "todos", Action::Remove));
        let perms = Permissions::new(vec![policy("USER", "todos", &[Remove])]);
        assert!(perms.check(&alice, "todos", Action::Remove));
        assert!(!perms.check(&alice, "todos", Action::Read));
    }

    #[test]
    fn role_must_match_exactly() {
        let perms = Permissions::new(vec![policy("EDITOR", "*", &[All])]);
        assert!(!perms.check(&user("a", &["USER"]), "todos", Action::Read));
        assert!(!perms.check(&user("a", &["editor"]), "todos", Action::Read));
        assert!(perms.check(&user("a", &["USER", "EDITOR"]), "todos", Action::Read));
    }

    #[test]
    fn exact_pattern_matches_only_that_name() {
        let perms = Permissions::new(vec![policy("USER", "todos", &[All])]);
        let alice = user("alice", &["USER"]);
        assert!(perms.check(&alice, "todos", Action::Read));
        assert!(!perms.check(&alice, "todos-archive", Action::Read));
        assert!(!perms.check(&alice, "todo", Action::Read));
    }

    #[test]
    fn prefix_pattern_matches_names_starting_with_prefix() {
        let perms = Permissions::new(vec![policy("USER", "todos-*", &[All])]);
        let alice = user("alice", &["USER"]);
        assert!(perms.check(&alice, "todos-", Action::Read));
        assert!(perms.check(&alice, "todos-2024", Action::Read));
        assert!(!perms.check(&alice, "todos", Action::Read));
        assert!(!perms.check(&alice, "my-todos-1", Action::Read));
    }

    #[test]
    fn star_inside_a_pattern_is_literal() {
        let perms = Permissions::new(vec![policy("USER", "a*b", &[All])]);
        let alice = user("alice", &["USER"]);
        assert!(perms.check(&alice, "a*b", Action::Read));
        assert!(!perms.check(&alice, "axb", Action::Read));
    }

    #[test]
    fn user_id_is_substituted_into_patterns() {
        let perms = Permissions::new(vec![
            policy("USER", "user-{userId}", &[All]),
            policy("USER", "private/{userId}/*", &[Read]),
        ]);
        let alice = user("alice", &["USER"]);
        assert!(perms.check(&alice, "user-alice", Action::Put));
        assert!(!perms.check(&alice, "user-bob", Action::Put));
        assert!(perms.check(&alice, "private/alice/notes", Action::Read));
        assert!(!perms.check(&alice, "private/alice/notes", Action::Put));
        assert!(!perms.check(&alice, "private/bob/notes", Action::Read));
    }

    #[test]
    fn user_id_containing_star_cannot_widen_a_pattern() {
        let perms = Permissions::new(vec![
            policy("USER", "user-{userId}", &[All]),
            policy("USER", "inbox/{userId}/*", &[All]),
        ]);
        let mallory = user("*", &["USER"]);
        assert!(!perms.check(&mallory, "user-alice", Action::Read));
        assert!(perms.check(&mallory, "user-*", Action::Read));
        assert!(!perms.check(&mallory, "inbox/alice/1", Action::Read));
        assert!(perms.check(&mallory, "inbox/*/1", Action::Read));
    }

    proptest::proptest! {
        #[test]
        fn user_id_pattern_matches_only_that_users_prefix(
            user_id in "[a-z*{}/]{1,6}",
            other_id in "[a-z*{}/]{1,6}",
            suffix in "[a-z*]{0,4}",
            own in proptest::bool::ANY,
        ) {
            let owner = if own { &user_id } else { &other_id };
            let resource = format!("inbox/{owner}/{suffix}");
            let perms = Permissions::new(vec![policy("USER", "inbox/{userId}/*", &[All])]);
            let principal = user(&user_id, &["USER"]);
            let expected = resource.starts_with(&format!("inbox/{user_id}/"));
            proptest::prop_assert_eq!(perms.check(&principal, &resource, Action::Read), expected);
            if own {
                proptest::prop_assert!(expected);
            }
        }
    }

    #[test]
    fn topics_and_locks_use_their_resource_names() {
        assert_eq!(topic_resource("chat/room-1"), "topic:chat/room-1");
        let perms = Permissions::new(vec![
            policy("USER", "topic:chat/*", &[Read]),
            policy("USER", "lock-{userId}", &[Put]),
        ]);
        let alice = user("alice", &["USER"]);
        assert!(perms.check(&alice, &topic_resource("chat/room-1"), Action::Read));
        assert!(!perms.check(&alice, &topic_resource("chat/room-1"), Action::Put));
        assert!(!perms.check(&alice, "chat/room-1", Action::Read));
        assert!(perms.check(&alice, "lock-alice", Action::Put));
        assert!(!perms.check(&alice, "lock-bob", Action::Put));
    }

    fn record() -> Value {
        json!({"title": "buy milk", "done": false, "owner": "alice", "secret": 42})
    }

    #[test]
    fn fls_admin_sees_whole_value() {
        let perms = Permissions::new(vec![fls_policy("USER", "*", &["title"])]);
        let admin = user("root", &["ADMIN", "USER"]);
        assert_eq!(
            perms.filter_value(&admin, "todos", record()),
            Some(record())
        );
    }

    #[test]
    fn fls_without_read_policy_withholds_value() {
        let perms = Permissions::new(vec![policy("USER", "todos", &[Put, Remove])]);
        let alice = user("alice", &["USER"]);
        assert_eq!(perms.filter_value(&alice, "todos", record()), None);
        assert_eq!(perms.filter_value(&alice, "other", record()), None);
        assert_eq!(
            Permissions::admin_only().filter_value(&alice, "todos", record()),
            None
        );
    }

    #[test]
    fn fls_unrestricted_read_returns_whole_value() {
        let perms = Permissions::new(vec![policy("USER", "todos", &[All])]);
        let alice = user("alice", &["USER"]);
        assert_eq!(
            perms.filter_value(&alice, "todos", record()),
            Some(record())
        );
        assert_eq!(
            perms.filter_value(&alice, "todos", json!("scalar")),
            Some(json!("scalar"))
        );
    }

    #[test]
    fn fls_keeps_only_allowed_fields() {
        let perms = Permissions::new(vec![fls_policy("USER", "todos", &["title", "missing"])]);
        let alice = user("alice", &["USER"]);
        assert_eq!(
            perms.filter_value(&alice, "todos", record()),
            Some(json!({"title": "buy milk"}))
        );
    }

    #[test]
    fn fls_unions_allowed_fields_of_all_matching_read_policies() {
        let perms = Permissions::new(vec![
            fls_policy("USER", "todos", &["title"]),
            fls_policy("AUDITOR", "todo*", &["owner", "title"]),
            fls_policy("USER", "other", &["secret"]),
            Policy {
                allowed_fields: Some(vec!["secret".to_owned()]),
                ..policy("USER", "todos", &[Put])
            },
        ]);
        let both = user("alice", &["USER", "AUDITOR"]);
        let filtered = perms.filter_value(&both, "todos", record()).unwrap();
        assert_eq!(filtered, json!({"title": "buy milk", "owner": "alice"}));
        let keys: Vec<&String> = filtered.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["title", "owner"], "value's own field order is kept");
    }

    #[test]
    fn fls_any_unrestricted_read_policy_wins_over_restricted_ones() {
        let perms = Permissions::new(vec![
            fls_policy("USER", "todos", &["title"]),
            policy("EDITOR", "todos", &[Read]),
        ]);
        let editor = user("e", &["USER", "EDITOR"]);
        assert_eq!(
            perms.filter_value(&editor, "todos", record()),
            Some(record())
        );
        let plain = user("u", &["USER"]);
        assert_eq!(
            perms.filter_value(&plain, "todos", record()),
            Some(json!({"title": "buy milk"}))
        );
    }

    #[test]
    fn fls_star_field_means_whole_value() {
        let perms = Permissions::new(vec![fls_policy("USER", "todos", &["title", "*"])]);
        let alice = user("alice", &["USER"]);
        assert_eq!(
            perms.filter_value(&alice, "todos", record()),
            Some(record())
        );
    }

    #[test]
    fn fls_empty_allowed_fields_shows_no_fields() {
        let perms = Permissions::new(vec![fls_policy("USER", "todos", &[])]);
        let alice = user("alice", &["USER"]);
        assert_eq!(
            perms.filter_value(&alice, "todos", record()),
            Some(json!({}))
        );
    }

    #[test]
    fn fls_withholds_non_objects_under_field_restriction() {
        let perms = Permissions::new(vec![fls_policy("USER", "todos", &["title"])]);
        let alice = user("alice", &["USER"]);
        assert_eq!(perms.filter_value(&alice, "todos", json!("raw")), None);
        assert_eq!(perms.filter_value(&alice, "todos", json!([record()])), None);
    }

    #[test]
    fn fls_sys_maps_are_admin_only() {
        let perms = Permissions::new(vec![policy("USER", "*", &[All])]);
        let alice = user("alice", &["USER"]);
        assert_eq!(perms.filter_value(&alice, "$sys/users", record()), None);
    }

    #[test]
    fn fls_user_id_patterns_apply() {
        let perms = Permissions::new(vec![fls_policy("USER", "profile-{userId}", &["name"])]);
        let alice = user("alice", &["USER"]);
        let profile = json!({"name": "Alice", "email": "a@example.com"});
        assert_eq!(
            perms.filter_value(&alice, "profile-alice", profile.clone()),
            Some(json!({"name": "Alice"}))
        );
        assert_eq!(perms.filter_value(&alice, "profile-bob", profile), None);
    }

    #[derive(Debug, Deserialize)]
    struct SampleConfig {
        permissions: Vec<Policy>,
    }

    #[test]
    fn policies_parse_from_toml() {
        let config: SampleConfig = toml::from_str(
            r#"
            [[permissions]]
            role = "USER"
            map = "todos-*"
            actions = ["READ", "PUT"]

            [[permissions]]
            role = "USER"
            map = "profile-{userId}"
            actions = ["ALL"]
            allowed_fields = ["name", "avatar"]

            [[permissions]]
            role = "AUDITOR"
            mapNamePattern = "*"
            actions = ["READ", "REMOVE"]
            allowedFields = ["id"]
            "#,
        )
        .unwrap();
        assert_eq!(
            config.permissions,
            vec![
                policy("USER", "todos-*", &[Read, Put]),
                Policy {
                    allowed_fields: Some(vec!["name".to_owned(), "avatar".to_owned()]),
                    ..policy("USER", "profile-{userId}", &[All])
                },
                Policy {
                    allowed_fields: Some(vec!["id".to_owned()]),
                    ..policy("AUDITOR", "*", &[Read, Remove])
                },
            ]
        );
        let perms = Permissions::new(config.permissions);
        let alice = user("alice", &["USER"]);
        assert!(perms.check(&alice, "todos-1", Action::Put));
        assert!(!perms.check(&alice, "todos-1", Action::Remove));
    }

    #[test]
    fn toml_rejects_unknown_actions_and_keys() {
        let bad_action = toml::from_str::<SampleConfig>(
            "[[permissions]]\nrole = \"USER\"\nmap = \"*\"\nactions = [\"WRITE\"]\n",
        );
        assert!(bad_action.is_err());
        let misspelt = toml::from_str::<SampleConfig>(
            "[[permissions]]\nrole = \"USER\"\nmap = \"*\"\nactions = [\"READ\"]\nallowed_field = [\"a\"]\n",
        );
        assert!(misspelt.is_err());
        let missing_map =
            toml::from_str::<SampleConfig>("[[permissions]]\nrole = \"USER\"\nactions = []\n");
        assert!(missing_map.is_err());
    }

    #[test]
    fn policy_serializes_with_config_names() {
        let json = serde_json::to_value(fls_policy("USER", "todos", &["title"])).unwrap();
        assert_eq!(
            json,
            json!({"role": "USER", "map": "todos", "actions": ["READ"], "allowed_fields": ["title"]})
        );
    }
}
