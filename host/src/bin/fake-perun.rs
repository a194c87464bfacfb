//! A fake Perun for tests and demos, faithful to `docs/perun.md`
//! for the calls os-credits makes, quirks included, with fault injection.
//!
//! `fake-perun [PORT] [HOST]` (port 0 or none: any free port; host: 127.0.0.1
//! unless given; prints `listening on ADDR`).
//!
//! RPC: `POST /{auth}/rpc/json/{manager}/{method}[/...]` with Basic auth
//! (login `oscredits`, password `secret` unless changed):
//! `groupsManager/getGroupByName`, `attributesManager/getAttributes`,
//! `attributesManager/setAttributes`, `resourcesManager/getAssignedResources`.
//!
//! Control (no auth): `POST /_fake/groups`
//! `{"name","id","attributes":{friendlyName: value},"resources":{"<id>":{friendlyName: value}}}`
//! creates or replaces a group assigned to those resources; `PUT /_fake/faults`
//! `{"down":bool,"delay_ms":n,"error_every":n,"drop_after_write":n,"password":"..."}`;
//! `GET /_fake/state` dumps groups, attributes and call counts.
//!
//! As Perun, `attrNames` are full names (`namespace:friendlyName`): a
//! friendly name alone matches nothing and is left out of the answer.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::Deserialize;
use serde_json::{Value, json};

use os_credits::sync::Locked;

/// The de.NBI credit attribute definitions: friendly name, id, namespace, type, entity;
/// and a project end date as a site may keep it (its name is the site's
/// choice: the service reads whichever `OS_CREDITS_PERUN_END_ATTRIBUTE` names).
const DEFINITIONS: [(&str, i64, &str, &str, &str); 5] = [
    (
        "denbiProjectEndDate",
        3390,
        "urn:perun:group:attribute-def:opt",
        "java.lang.String",
        "group",
    ),
    (
        "denbiCreditsCurrent",
        3382,
        "urn:perun:group:attribute-def:opt",
        "java.lang.String",
        "group",
    ),
    (
        "denbiCreditsGranted",
        3383,
        "urn:perun:group:attribute-def:opt",
        "java.lang.String",
        "group",
    ),
    (
        "toEmail",
        2020,
        "urn:perun:group:attribute-def:def",
        "java.util.ArrayList",
        "group",
    ),
    (
        "denbiCreditTimestamps",
        3386,
        "urn:perun:group_resource:attribute-def:opt",
        "java.util.LinkedHashMap",
        "group_resource",
    ),
];

#[derive(Default, Deserialize, Clone)]
struct Faults {
    #[serde(default)]
    down: bool,
    #[serde(default)]
    delay_ms: u64,
    #[serde(default)]
    error_every: u64,
    /// The next this many `setAttributes` are applied, then the connection
    /// is dropped without an answer (a crash or network cut right after
    /// Perun committed).
    #[serde(default)]
    drop_after_write: u64,
    password: Option<String>,
}

#[derive(Clone)]
struct Stored {
    value: Value,
    modified_at: String,
}

#[derive(Default)]
struct Perun {
    password: String,
    faults: Faults,
    groups: BTreeMap<String, i64>,
    group_attributes: HashMap<i64, BTreeMap<String, Stored>>,
    resource_attributes: HashMap<(i64, i64), BTreeMap<String, Stored>>,
    assigned: HashMap<i64, std::collections::BTreeSet<i64>>,
    calls: u64,
    by_method: BTreeMap<String, u64>,
    dropped_writes: u64,
}

type Shared = Arc<Mutex<Perun>>;

fn now() -> String {
    chrono::Utc::now()
        .format("%Y-%m-%d %H:%M:%S%.6f")
        .to_string()
}

fn perun_error(status: StatusCode, class: &str, runtime: bool, text: &str) -> Response {
    let id = format!("{:x}", chrono::Utc::now().timestamp_subsec_nanos());
    let mut body = json!({ "errorId": id, "message": format!("Error {id}: {text}") });
    let key = if runtime { "type" } else { "name" };
    body[key] = json!(class);
    (status, Json(body)).into_response()
}

fn html(status: StatusCode, text: &str) -> Response {
    let mut response = (
        status,
        [(header::CONTENT_TYPE, "text/html")],
        format!("<html><body><h1>{text}</h1></body></html>"),
    )
        .into_response();
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            "Basic realm=\"Perun\""
                .parse()
                .unwrap_or_else(|_| header::HeaderValue::from_static("Basic")),
        );
    }
    response
}

type Definition = (&'static str, i64, &'static str, &'static str, &'static str);

fn definition(name: &str) -> Option<Definition> {
    DEFINITIONS.iter().copied().find(|d| d.0 == name)
}

/// The definition `attrNames` asks for: Perun matches the full name
/// (`namespace:friendlyName`); a friendly name alone matches nothing.
fn definition_by_full_name(full: &str) -> Option<Definition> {
    DEFINITIONS.iter().copied().find(|d| {
        full.strip_prefix(d.2)
            .and_then(|rest| rest.strip_prefix(':'))
            == Some(d.0)
    })
}

fn attribute_json(name: &str, stored: Option<&Stored>) -> Value {
    let Some((friendly, id, namespace, kind, entity)) = definition(name) else {
        return Value::Null;
    };
    json!({
        "id": id, "friendlyName": friendly, "namespace": namespace, "type": kind,
        "displayName": friendly, "description": "", "writable": true, "unique": false,
        "value": stored.map_or(Value::Null, |s| s.value.clone()),
        "valueCreatedAt": stored.map(|s| s.modified_at.clone()),
        "valueCreatedBy": "oscredits",
        "valueModifiedAt": stored.map(|s| s.modified_at.clone()),
        "valueModifiedBy": "oscredits",
        "baseFriendlyName": friendly, "friendlyNameParameter": "", "entity": entity,
        "beanName": "Attribute",
    })
}

fn deletes(value: &Value) -> bool {
    match value {
        Value::Null | Value::Bool(false) => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        Value::Number(_) | Value::Bool(true) => false,
    }
}

fn type_matches(kind: &str, value: &Value) -> bool {
    match kind {
        "java.lang.String" => value.is_string(),
        "java.lang.Integer" => value.is_i64(),
        "java.lang.Boolean" => value.is_boolean(),
        "java.util.ArrayList" => value
            .as_array()
            .is_some_and(|a| a.iter().all(Value::is_string)),
        "java.util.LinkedHashMap" => value
            .as_object()
            .is_some_and(|o| o.values().all(Value::is_string)),
        _ => false,
    }
}

fn valid_group_name(name: &str) -> bool {
    let part = |p: &str| {
        !p.is_empty()
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-._ ".contains(c))
    };
    name.split(':').all(part)
}

async fn rpc(
    State(state): State<Shared>,
    Path((_auth, path)): Path<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let (faults, password) = {
        let perun = state.locked();
        (perun.faults.clone(), perun.password.clone())
    };
    if faults.delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(faults.delay_ms)).await;
    }
    if faults.down {
        return html(StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable");
    }
    let expected = format!("Basic {}", base64(&format!("oscredits:{password}")));
    if headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        != Some(expected.as_str())
    {
        return html(StatusCode::UNAUTHORIZED, "Unauthorized");
    }
    let mut parts = path.split('/');
    let call = format!(
        "{}/{}",
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default()
    );
    let mut perun = state.locked();
    perun.calls += 1;
    *perun.by_method.entry(call.clone()).or_default() += 1;
    if faults.error_every > 0 && perun.calls.is_multiple_of(faults.error_every) {
        return perun_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "UNCATCHED_EXCEPTION",
            true,
            "simulated failure",
        );
    }
    let params: Value = match serde_json::from_slice(&body) {
        Ok(Value::Object(o)) => Value::Object(o),
        _ => {
            return perun_error(
                StatusCode::BAD_REQUEST,
                "RpcException",
                true,
                "body must be a JSON object",
            );
        }
    };
    match call.as_str() {
        "groupsManager/getGroupByName" => {
            let name = params["name"].as_str().unwrap_or_default();
            if !valid_group_name(name) {
                return perun_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "UNCATCHED_EXCEPTION",
                    true,
                    "IllegalArgumentException",
                );
            }
            match perun.groups.get(name) {
                Some(id) => Json(json!({
                    "id": id, "voId": params["vo"], "parentGroupId": null, "name": name, "shortName": name,
                    "description": "", "uuid": "00000000-0000-0000-0000-000000000000", "beanName": "Group",
                })).into_response(),
                None => perun_error(StatusCode::BAD_REQUEST, "GroupNotExistsException", false, &format!("Group with name {name} does not exist")),
            }
        }
        "attributesManager/getAttributes" => {
            let group = params["group"].as_i64().unwrap_or_default();
            let names: Vec<String> = params["attrNames"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|n| n.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            let empty = BTreeMap::new();
            let wanted = |entities: &[&str]| -> Vec<(&'static str, &'static str)> {
                names
                    .iter()
                    .filter_map(|n| definition_by_full_name(n))
                    .filter(|d| entities.contains(&d.4))
                    .map(|d| (d.0, d.4))
                    .collect()
            };
            let resource = params["resource"].as_i64();
            let with_group = params.get("workWithGroupAttributes");
            let group_stored = perun.group_attributes.get(&group).unwrap_or(&empty);
            match (resource, with_group) {
                (Some(resource), None) => {
                    // quirk: attrNames ignored, every non-empty group_resource attribute
                    let stored = perun
                        .resource_attributes
                        .get(&(group, resource))
                        .unwrap_or(&empty);
                    Json(
                        stored
                            .iter()
                            .map(|(n, s)| attribute_json(n, Some(s)))
                            .collect::<Vec<_>>(),
                    )
                    .into_response()
                }
                (Some(resource), Some(with_group)) => {
                    let stored = perun
                        .resource_attributes
                        .get(&(group, resource))
                        .unwrap_or(&empty);
                    let entities: &[&str] = if with_group.as_bool() == Some(true) {
                        &["group_resource", "group"]
                    } else {
                        &["group_resource"]
                    };
                    let list: Vec<Value> = wanted(entities)
                        .into_iter()
                        .map(|(n, entity)| {
                            let from = if entity == "group" {
                                group_stored
                            } else {
                                stored
                            };
                            attribute_json(n, from.get(n))
                        })
                        .collect();
                    Json(list).into_response()
                }
                (None, _) => {
                    let list: Vec<Value> = wanted(&["group"])
                        .into_iter()
                        .map(|(n, _)| attribute_json(n, group_stored.get(n)))
                        .collect();
                    Json(list).into_response()
                }
            }
        }
        "attributesManager/setAttributes" => {
            let group = params["group"].as_i64().unwrap_or_default();
            let resource = params["resource"].as_i64();
            let with_group = params["workWithGroupAttributes"].as_bool().unwrap_or(false);
            let attributes = params["attributes"].as_array().cloned().unwrap_or_default();
            // validate everything first: one transaction
            for attribute in &attributes {
                let Some(object) = attribute.as_object() else {
                    return perun_error(
                        StatusCode::BAD_REQUEST,
                        "RpcException",
                        true,
                        "CANNOT_DESERIALIZE_VALUE",
                    );
                };
                if object.keys().any(|k| {
                    !["id", "friendlyName", "namespace", "type", "value"].contains(&k.as_str())
                }) {
                    return perun_error(
                        StatusCode::BAD_REQUEST,
                        "RpcException",
                        true,
                        "CANNOT_DESERIALIZE_VALUE",
                    );
                }
                let name = attribute["friendlyName"].as_str().unwrap_or_default();
                let Some((_, id, namespace, kind, entity)) = definition(name) else {
                    return perun_error(
                        StatusCode::BAD_REQUEST,
                        "AttributeNotExistsException",
                        false,
                        name,
                    );
                };
                if attribute["id"].as_i64() != Some(id)
                    || attribute["namespace"] != namespace
                    || attribute["type"] != kind
                {
                    return perun_error(
                        StatusCode::BAD_REQUEST,
                        "AttributeNotExistsException",
                        false,
                        name,
                    );
                }
                let value = &attribute["value"];
                if !deletes(value) && !type_matches(kind, value) {
                    return perun_error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "InternalErrorException",
                        true,
                        &format!("wrong value type for {name}"),
                    );
                }
                let allowed = match (entity, resource) {
                    ("group_resource", Some(_)) => true,
                    ("group", None) => true,
                    ("group", Some(_)) => with_group,
                    _ => false,
                };
                if !allowed {
                    return perun_error(
                        StatusCode::BAD_REQUEST,
                        "WrongAttributeAssignmentException",
                        false,
                        name,
                    );
                }
            }
            let stamp = now();
            for attribute in attributes {
                let name = attribute["friendlyName"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                let value = attribute["value"].clone();
                let entity = definition(&name).map(|d| d.4).unwrap_or_default();
                let store = match (entity, resource) {
                    ("group_resource", Some(r)) => {
                        perun.resource_attributes.entry((group, r)).or_default()
                    }
                    _ => perun.group_attributes.entry(group).or_default(),
                };
                if deletes(&value) {
                    store.remove(&name);
                } else if store.get(&name).is_none_or(|s| s.value != value) {
                    store.insert(
                        name,
                        Stored {
                            value,
                            modified_at: stamp.clone(),
                        },
                    );
                }
            }
            if perun.faults.drop_after_write > 0 {
                perun.faults.drop_after_write -= 1;
                perun.dropped_writes += 1;
                drop(perun);
                // Unwinding the connection's task closes it without an
                // answer (resume_unwind skips the panic message).
                std::panic::resume_unwind(Box::new("dropped after the write"));
            }
            Json(Value::Null).into_response()
        }
        "resourcesManager/getAssignedResources" => {
            let group = params["group"].as_i64().unwrap_or_default();
            let mut ids = perun.assigned.get(&group).cloned().unwrap_or_default();
            ids.extend(
                perun
                    .resource_attributes
                    .keys()
                    .filter(|(g, _)| *g == group)
                    .map(|(_, r)| *r),
            );
            let list: Vec<Value> = ids
                .into_iter()
                .map(|id| {
                    json!({
                        "id": id, "voId": 201, "facilityId": 24, "name": format!("site-{id}"),
                        "description": "", "uuid": "00000000-0000-0000-0000-000000000000",
                        "beanName": "Resource",
                    })
                })
                .collect();
            Json(list).into_response()
        }
        _ => perun_error(
            StatusCode::BAD_REQUEST,
            "RpcException",
            true,
            "UNKNOWN_METHOD",
        ),
    }
}

fn base64(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}

#[derive(Deserialize)]
struct NewGroup {
    name: String,
    id: i64,
    #[serde(default)]
    attributes: BTreeMap<String, Value>,
    #[serde(default)]
    resources: BTreeMap<i64, BTreeMap<String, Value>>,
}

async fn add_group(State(state): State<Shared>, Json(group): Json<NewGroup>) -> StatusCode {
    let mut perun = state.locked();
    perun.groups.insert(group.name, group.id);
    let stamp = now();
    let stored = |attributes: BTreeMap<String, Value>| -> BTreeMap<String, Stored> {
        attributes
            .into_iter()
            .map(|(k, v)| {
                let value = Stored {
                    value: v,
                    modified_at: stamp.clone(),
                };
                (k, value)
            })
            .collect()
    };
    perun
        .group_attributes
        .insert(group.id, stored(group.attributes));
    perun.resource_attributes.retain(|(g, _), _| *g != group.id);
    let mut assigned = std::collections::BTreeSet::new();
    for (resource, attributes) in group.resources {
        assigned.insert(resource);
        if !attributes.is_empty() {
            perun
                .resource_attributes
                .insert((group.id, resource), stored(attributes));
        }
    }
    perun.assigned.insert(group.id, assigned);
    StatusCode::NO_CONTENT
}

async fn set_faults(State(state): State<Shared>, Json(faults): Json<Faults>) -> StatusCode {
    let mut perun = state.locked();
    if let Some(password) = &faults.password {
        perun.password = password.clone();
    }
    perun.faults = faults;
    StatusCode::NO_CONTENT
}

async fn dump(State(state): State<Shared>) -> Json<Value> {
    let perun = state.locked();
    let groups: BTreeMap<&String, Value> = perun
        .groups
        .iter()
        .map(|(name, id)| {
            let attributes: BTreeMap<&String, &Value> = perun
                .group_attributes
                .get(id)
                .map(|a| a.iter().map(|(k, s)| (k, &s.value)).collect())
                .unwrap_or_default();
            let resources: BTreeMap<String, BTreeMap<&String, &Value>> = perun
                .resource_attributes
                .iter()
                .filter(|((g, _), _)| g == id)
                .map(|((_, r), a)| {
                    (
                        r.to_string(),
                        a.iter().map(|(k, s)| (k, &s.value)).collect(),
                    )
                })
                .collect();
            (
                name,
                json!({ "id": id, "attributes": attributes, "resources": resources }),
            )
        })
        .collect();
    Json(json!({
        "groups": groups, "calls": perun.calls, "by_method": perun.by_method,
        "dropped_writes": perun.dropped_writes,
    }))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    let state: Shared = Arc::new(Mutex::new(Perun {
        password: "secret".into(),
        ..Perun::default()
    }));
    let app = axum::Router::new()
        .route("/{auth}/rpc/json/{*path}", post(rpc))
        .route("/_fake/groups", post(add_group))
        .route("/_fake/faults", put(set_faults))
        .route("/_fake/state", get(dump))
        .with_state(state);
    let host = std::env::args()
        .nth(2)
        .unwrap_or_else(|| "127.0.0.1".to_owned());
    let listener = tokio::net::TcpListener::bind((host.as_str(), port)).await?;
    eprintln!("listening on {}", listener.local_addr()?);
    axum::serve(listener, app).await
}
