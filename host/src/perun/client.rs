//! A JSON-RPC client for Perun (`docs/perun.md`): `POST
//! {url}/{manager}/{method}` with a JSON object, Basic auth; errors detected
//! by the `errorId` key and classified by `name`, else `type`; Apache's HTML
//! answers (401, 403, 503) and timeouts mapped to typed errors.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Why a Perun call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PerunError {
    /// 401: the login or password is wrong.
    #[error(
        "Perun rejected the login {login:?} (HTTP 401): check OS_CREDITS_PERUN_LOGIN and OS_CREDITS_PERUN_PASSWORD"
    )]
    Unauthorized {
        /// The login used.
        login: String,
    },
    /// 403: refused (CSRF or permissions).
    #[error("Perun refused the call {call} (HTTP 403)")]
    Forbidden {
        /// `manager/method`.
        call: String,
    },
    /// Perun or its proxy is not answering properly (5xx HTML, timeouts, connection errors).
    #[error("Perun unavailable for {call}: {reason}")]
    Unavailable {
        /// `manager/method`.
        call: String,
        /// What happened.
        reason: String,
    },
    /// Perun answered with an exception.
    #[error("Perun {call} failed: {kind}: {message}")]
    Rpc {
        /// `manager/method`.
        call: String,
        /// The exception class (`name`) or runtime type (`type`).
        kind: String,
        /// Perun's message.
        message: String,
    },
    /// Something on our side failed while handling Perun's answer (the
    /// ledger or the engine); retried like an unavailable Perun.
    #[error("cannot apply what Perun returned: {0}")]
    Local(String),
    /// The answer is not what the API promises.
    #[error("unexpected answer from Perun {call}: {reason}")]
    Protocol {
        /// `manager/method`.
        call: String,
        /// What is wrong.
        reason: String,
    },
}

impl PerunError {
    /// Whether Perun says the group does not exist.
    pub fn is_missing_group(&self) -> bool {
        matches!(self, PerunError::Rpc { kind, .. } if kind == "GroupNotExistsException")
    }
}

/// An attribute as Perun returns it (the fields we use).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attribute {
    /// Definition id.
    pub id: i64,
    /// Friendly name, e.g. `denbiCreditsCurrent`.
    pub friendly_name: String,
    /// Namespace, e.g. `urn:perun:group:attribute-def:opt`.
    pub namespace: String,
    /// Java type, e.g. `java.lang.String`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The value; `null` when unset.
    #[serde(default)]
    pub value: Value,
    /// When the value was last changed (`2019-05-20 08:00:01.5`).
    #[serde(default)]
    pub value_modified_at: Option<String>,
}

/// An attribute definition: id, friendly name, namespace, type. Ids and
/// namespaces differ between Perun instances; they come from configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttributeDef {
    /// Definition id.
    pub id: i64,
    /// Friendly name, e.g. `denbiCreditsCurrent`.
    pub friendly_name: String,
    /// Namespace, e.g. `urn:perun:group:attribute-def:opt`.
    pub namespace: String,
    /// Java type, e.g. `java.lang.String`.
    pub kind: String,
}

impl AttributeDef {
    /// The full name Perun matches `attrNames` against
    /// (`namespace:friendlyName`); a friendly name alone matches nothing.
    pub fn full_name(&self) -> String {
        format!("{}:{}", self.namespace, self.friendly_name)
    }

    /// Whether `attribute` (as Perun returned it) is this one.
    pub fn is(&self, attribute: &Attribute) -> bool {
        attribute.friendly_name == self.friendly_name && attribute.namespace == self.namespace
    }

    /// This attribute with `value`, as `setAttributes` takes it.
    pub fn write(&self, value: Value) -> AttributeWrite {
        AttributeWrite {
            id: self.id,
            friendly_name: self.friendly_name.clone(),
            namespace: self.namespace.clone(),
            kind: self.kind.clone(),
            value,
        }
    }
}

/// An attribute to write: exactly the fields Perun accepts back.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AttributeWrite {
    /// Definition id.
    pub id: i64,
    /// Friendly name.
    pub friendly_name: String,
    /// Namespace.
    pub namespace: String,
    /// Java type.
    #[serde(rename = "type")]
    pub kind: String,
    /// The value, of the JSON type `kind` requires.
    pub value: Value,
}

#[derive(Deserialize)]
struct Group {
    id: i64,
}

#[derive(Deserialize)]
struct Resource {
    id: i64,
}

/// The client. Counts its calls (for `/stats` and the measurements).
pub struct PerunClient {
    http: reqwest::Client,
    url: String,
    login: String,
    password: String,
    calls: AtomicU64,
}

impl PerunClient {
    /// A client for the RPC base `url` (e.g. `https://perun.example/krb/rpc/json`).
    pub fn new(
        url: &str,
        login: &str,
        password: &str,
        timeout: Duration,
    ) -> Result<Self, PerunError> {
        let http = crate::http::client(timeout).map_err(|e| PerunError::Protocol {
            call: "client".into(),
            reason: e.to_string(),
        })?;
        Ok(PerunClient {
            http,
            url: url.trim_end_matches('/').to_owned(),
            login: login.to_owned(),
            password: password.to_owned(),
            calls: AtomicU64::new(0),
        })
    }

    /// Calls made so far.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// One RPC call.
    pub async fn call<T: DeserializeOwned>(
        &self,
        manager: &str,
        method: &str,
        body: &Value,
    ) -> Result<T, PerunError> {
        let call = format!("{manager}/{method}");
        self.calls.fetch_add(1, Ordering::Relaxed);
        let unavailable = |reason: String| PerunError::Unavailable {
            call: call.clone(),
            reason,
        };
        let response = self
            .http
            .post(format!("{}/{call}", self.url))
            .basic_auth(&self.login, Some(&self.password))
            .json(body)
            .send()
            .await
            .map_err(|e| {
                unavailable(if e.is_timeout() {
                    "timed out".into()
                } else {
                    e.to_string()
                })
            })?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        match status.as_u16() {
            401 => {
                return Err(PerunError::Unauthorized {
                    login: self.login.clone(),
                });
            }
            403 => return Err(PerunError::Forbidden { call }),
            _ => {}
        }
        let json: Value = match serde_json::from_slice(&bytes) {
            Ok(json) => json,
            Err(_) if status.is_server_error() || status.is_client_error() => {
                return Err(unavailable(format!("HTTP {status} without a JSON body")));
            }
            Err(e) => {
                return Err(PerunError::Protocol {
                    call,
                    reason: format!("not JSON: {e}"),
                });
            }
        };
        if let Some(error) = json.as_object().filter(|o| o.contains_key("errorId")) {
            let text = |key: &str| error.get(key).and_then(Value::as_str).map(str::to_owned);
            let kind = text("name")
                .or_else(|| text("type"))
                .unwrap_or_else(|| "unknown".into());
            let message = text("message").unwrap_or_default();
            return Err(PerunError::Rpc {
                call,
                kind,
                message,
            });
        }
        if !status.is_success() {
            return Err(unavailable(format!("HTTP {status}")));
        }
        serde_json::from_value(json).map_err(|e| PerunError::Protocol {
            call,
            reason: e.to_string(),
        })
    }

    /// The id of group `name` in VO `vo`.
    pub async fn group_id(&self, vo: i64, name: &str) -> Result<i64, PerunError> {
        let body = serde_json::json!({ "vo": vo, "name": name });
        let group: Group = self.call("groupsManager", "getGroupByName", &body).await?;
        Ok(group.id)
    }

    /// Group attributes, asked for by their full names (Perun silently
    /// leaves out every name it does not know, friendly names included).
    pub async fn group_attributes(
        &self,
        group: i64,
        attributes: &[&AttributeDef],
    ) -> Result<Vec<Attribute>, PerunError> {
        let names: Vec<String> = attributes.iter().map(|a| a.full_name()).collect();
        let body = serde_json::json!({ "group": group, "attrNames": names });
        self.call("attributesManager", "getAttributes", &body).await
    }

    /// Group-resource attributes by full name (`workWithGroupAttributes:
    /// false`, without which Perun ignores `attrNames`).
    pub async fn group_resource_attributes(
        &self,
        group: i64,
        resource: i64,
        attributes: &[&AttributeDef],
    ) -> Result<Vec<Attribute>, PerunError> {
        let names: Vec<String> = attributes.iter().map(|a| a.full_name()).collect();
        let body = serde_json::json!({
            "group": group, "resource": resource, "attrNames": names,
            "workWithGroupAttributes": false,
        });
        self.call("attributesManager", "getAttributes", &body).await
    }

    /// The ids of the resources the group is assigned to (active assignments).
    pub async fn assigned_resources(&self, group: i64) -> Result<Vec<i64>, PerunError> {
        let body = serde_json::json!({ "group": group });
        let resources: Vec<Resource> = self
            .call("resourcesManager", "getAssignedResources", &body)
            .await?;
        Ok(resources.into_iter().map(|r| r.id).collect())
    }

    /// Writes group and group-resource attributes in one transaction.
    pub async fn set_attributes(
        &self,
        group: i64,
        resource: Option<i64>,
        attributes: &[AttributeWrite],
    ) -> Result<(), PerunError> {
        let body = match resource {
            Some(resource) => serde_json::json!({
                "group": group, "resource": resource, "attributes": attributes,
                "workWithGroupAttributes": true,
            }),
            None => serde_json::json!({ "group": group, "attributes": attributes }),
        };
        let _: Value = self
            .call("attributesManager", "setAttributes", &body)
            .await?;
        Ok(())
    }
}
