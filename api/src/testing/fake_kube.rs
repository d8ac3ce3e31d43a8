//! A fake Kubernetes API server behind kube's mock service (tower-test):
//! it keeps objects in memory, answers get, list, watch, create, replace,
//! patch and delete the way the API server does for Causeway's needs, and
//! records every request as the RBAC permission it needs
//! ([`Permission`]: API group, resource, verb, namespaced or not).
//!
//! Tests start Causeway's Kubernetes code with [`FakeKube::client`] and
//! then look at the objects ([`FakeKube::get`]) and at the permissions used
//! ([`FakeKube::permissions`]), which the chart's RBAC must match.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use http::{Method, Request, Response};
use kube::client::Body;
use serde_json::{Value, json};

/// One RBAC permission a request needs.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Permission {
    /// API group (`""` for the core group).
    pub group: String,
    /// Resource, with `/subresource` when there is one (`serviceexports/status`).
    pub resource: String,
    /// RBAC verb: get, list, watch, create, update, patch, delete, deletecollection.
    pub verb: String,
    /// Whether the request was inside a namespace.
    pub namespaced: bool,
}

impl std::fmt::Display for Permission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let group = if self.group.is_empty() {
            "\"\""
        } else {
            &self.group
        };
        let scope = if self.namespaced {
            "namespaced"
        } else {
            "cluster"
        };
        write!(f, "{group} {} {} ({scope})", self.resource, self.verb)
    }
}

/// One request the fake served.
#[derive(Debug, Clone)]
pub struct KubeRequest {
    /// HTTP method.
    pub method: String,
    /// URL path.
    pub path: String,
    /// URL query.
    pub query: String,
    /// What RBAC must grant for it.
    pub permission: Permission,
    /// The namespace in the path.
    pub namespace: Option<String>,
    /// The object's name in the path.
    pub name: Option<String>,
    /// Whether it was a dry run.
    pub dry_run: bool,
    /// The JSON body (Null when none).
    pub body: Value,
}

/// Changes an object as it is written (as a controller would: fill a
/// token Secret, say).
pub type WriteHook = Arc<dyn Fn(&mut Value) + Send + Sync>;

struct Failure {
    verb: Option<String>,
    resource: String,
    code: u16,
    message: String,
}

struct Event {
    group: String,
    resource: String,
    namespace: String,
    revision: u64,
    kind: &'static str,
    object: Value,
}

type Collection = BTreeMap<(String, String), Value>;

#[derive(Default)]
struct Inner {
    /// (group, resource) -> (namespace, name) -> object.
    objects: BTreeMap<(String, String), Collection>,
    events: Vec<Event>,
    revision: u64,
    requests: Vec<KubeRequest>,
    failures: Vec<Failure>,
    hooks: Vec<(String, WriteHook)>,
}

/// The fake API server. Cloning shares it.
#[derive(Clone, Default)]
pub struct FakeKube {
    inner: Arc<Mutex<Inner>>,
}

impl std::fmt::Debug for FakeKube {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeKube").finish_non_exhaustive()
    }
}

/// Where a request points.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    group: String,
    resource: String,
    namespace: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

fn parse_path(path: &str) -> Option<Target> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest) = match segs.as_slice() {
        ["api", _version, rest @ ..] => (String::new(), rest),
        ["apis", group, _version, rest @ ..] => (group.to_string(), rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(ns.to_string()), rest),
        rest => (None, rest),
    };
    let (resource, name, sub) = match rest {
        [r] => (r, None, None),
        [r, n] => (r, Some(n.to_string()), None),
        [r, n, s] => (r, Some(n.to_string()), Some(s.to_string())),
        _ => return None,
    };
    Some(Target {
        group,
        resource: resource.to_string(),
        namespace,
        name,
        sub,
    })
}

fn query_param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == key).then_some(v)
    })
}

fn status(code: u16, reason: &str, message: &str) -> Response<Body> {
    respond(
        code,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": message, "reason": reason, "code": code}),
    )
}

fn respond(code: u16, body: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .body(Body::from(serde_json::to_vec(body).expect("json")))
        .expect("response")
}

/// RFC 7386 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            let t = target.as_object_mut().expect("object");
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

impl FakeKube {
    /// An empty API server.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A client whose every request this fake answers.
    pub fn client(&self) -> kube::Client {
        let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let me = self.clone();
        tokio::spawn(async move {
            while let Some((req, send)) = handle.next_request().await {
                let me = me.clone();
                tokio::spawn(async move { send.send_response(me.serve(req).await) });
            }
        });
        kube::Client::new(svc, "default")
    }

    /// Stores `object` (its `apiVersion`, namespace and name from itself)
    /// as resource `resource` (the plural, `nodes`).
    pub fn insert(&self, resource: &str, mut object: Value) {
        let group = object["apiVersion"]
            .as_str()
            .and_then(|v| v.split_once('/').map(|(g, _)| g.to_owned()))
            .unwrap_or_default();
        let ns = object["metadata"]["namespace"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        let name = object["metadata"]["name"].as_str().unwrap_or("").to_owned();
        let mut inner = self.lock();
        inner.revision += 1;
        object["metadata"]["resourceVersion"] = json!(inner.revision.to_string());
        inner
            .objects
            .entry((group, resource.to_owned()))
            .or_default()
            .insert((ns, name), object);
    }

    /// The object `namespace/name` of `group`'s `resource`, if it exists.
    pub fn get(&self, group: &str, resource: &str, namespace: &str, name: &str) -> Option<Value> {
        self.lock()
            .objects
            .get(&(group.to_owned(), resource.to_owned()))
            .and_then(|c| c.get(&(namespace.to_owned(), name.to_owned())))
            .cloned()
    }

    /// Deletes an object as someone else would (not recorded as a request);
    /// watchers see it go.
    pub fn remove(&self, group: &str, resource: &str, namespace: &str, name: &str) -> bool {
        let mut inner = self.lock();
        let removed = inner
            .objects
            .get_mut(&(group.to_owned(), resource.to_owned()))
            .and_then(|c| c.remove(&(namespace.to_owned(), name.to_owned())));
        let Some(object) = removed else {
            return false;
        };
        inner.revision += 1;
        let revision = inner.revision;
        inner.events.push(Event {
            group: group.to_owned(),
            resource: resource.to_owned(),
            namespace: namespace.to_owned(),
            revision,
            kind: "DELETED",
            object,
        });
        true
    }

    /// Forgets the requests so far (a test's setup is not the code under test).
    pub fn clear_requests(&self) {
        self.lock().requests.clear();
    }

    /// Every object of `group`'s `resource`.
    pub fn list(&self, group: &str, resource: &str) -> Vec<Value> {
        self.lock()
            .objects
            .get(&(group.to_owned(), resource.to_owned()))
            .map(|c| c.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Answers requests for `resource` (and `verb`, when given) with `code`
    /// and `message` from now on: 404 for a kind whose CRD is missing, 422
    /// for a refused create.
    pub fn fail(&self, verb: Option<&str>, resource: &str, code: u16, message: &str) {
        self.lock().failures.push(Failure {
            verb: verb.map(str::to_owned),
            resource: resource.to_owned(),
            code,
            message: message.to_owned(),
        });
    }

    /// Runs `hook` on every object of `resource` written from now on.
    pub fn on_write(&self, resource: &str, hook: WriteHook) {
        self.lock().hooks.push((resource.to_owned(), hook));
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<KubeRequest> {
        self.lock().requests.clone()
    }

    /// The permissions the requests so far needed.
    pub fn permissions(&self) -> BTreeSet<Permission> {
        self.lock()
            .requests
            .iter()
            .map(|r| r.permission.clone())
            .collect()
    }

    async fn serve(&self, req: Request<Body>) -> Response<Body> {
        let (parts, body) = req.into_parts();
        let path = parts.uri.path().to_owned();
        let query = parts.uri.query().unwrap_or("").to_owned();
        let body = body.collect_bytes().await.unwrap_or_default();
        let body: Value = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&body)
                .or_else(|_| serde_yaml::from_slice(&body))
                .unwrap_or(Value::Null)
        };
        let Some(t) = parse_path(&path) else {
            return status(404, "NotFound", &format!("no route {path}"));
        };
        let watching = matches!(query_param(&query, "watch"), Some("true" | "1"));
        let verb = match (&parts.method, &t.name) {
            (&Method::GET, Some(_)) => "get",
            (&Method::GET, None) if watching => "watch",
            (&Method::GET, None) => "list",
            (&Method::POST, _) => "create",
            (&Method::PUT, _) => "update",
            (&Method::PATCH, _) => "patch",
            (&Method::DELETE, Some(_)) => "delete",
            (&Method::DELETE, None) => "deletecollection",
            _ => "unknown",
        };
        let resource = match &t.sub {
            Some(s) => format!("{}/{s}", t.resource),
            None => t.resource.clone(),
        };
        let dry_run = query_param(&query, "dryRun").is_some();
        let content_type = parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        {
            let mut inner = self.lock();
            inner.requests.push(KubeRequest {
                method: parts.method.to_string(),
                path: path.clone(),
                query: query.clone(),
                permission: Permission {
                    group: t.group.clone(),
                    resource: resource.clone(),
                    verb: verb.to_owned(),
                    namespaced: t.namespace.is_some(),
                },
                namespace: t.namespace.clone(),
                name: t.name.clone(),
                dry_run,
                body: body.clone(),
            });
            if let Some(f) = inner.failures.iter().find(|f| {
                (f.resource == t.resource || f.resource == resource)
                    && f.verb.as_deref().is_none_or(|v| v == verb)
            }) {
                let reason = match f.code {
                    404 => "NotFound",
                    403 => "Forbidden",
                    409 => "Conflict",
                    422 => "Invalid",
                    _ => "InternalError",
                };
                return status(f.code, reason, &f.message.clone());
            }
        }
        match verb {
            "get" => self.do_get(&t),
            "list" => self.do_list(&t),
            "watch" => self.do_watch(&t, &query).await,
            "create" => self.do_write(&t, body, dry_run, Write::Create),
            "update" => self.do_write(&t, body, dry_run, Write::Replace),
            "patch" if content_type.contains("apply-patch") => {
                self.do_write(&t, body, dry_run, Write::Apply)
            }
            "patch" => self.do_write(&t, body, dry_run, Write::Merge),
            "delete" => self.do_delete(&t),
            _ => status(405, "MethodNotAllowed", "not supported by the fake"),
        }
    }

    fn key(t: &Target) -> (String, String) {
        (t.group.clone(), t.resource.clone())
    }

    fn do_get(&self, t: &Target) -> Response<Body> {
        let ns = t.namespace.clone().unwrap_or_default();
        let name = t.name.clone().unwrap_or_default();
        match self.get(&t.group, &t.resource, &ns, &name) {
            Some(o) => respond(200, &o),
            None => status(
                404,
                "NotFound",
                &format!("{} \"{name}\" not found", t.resource),
            ),
        }
    }

    fn do_list(&self, t: &Target) -> Response<Body> {
        let inner = self.lock();
        let items: Vec<Value> = inner
            .objects
            .get(&Self::key(t))
            .map(|c| {
                c.iter()
                    .filter(|((ns, _), _)| t.namespace.as_ref().is_none_or(|n| n == ns))
                    .map(|(_, o)| o.clone())
                    .collect()
            })
            .unwrap_or_default();
        respond(
            200,
            &json!({"apiVersion": "v1", "kind": "List",
                    "metadata": {"resourceVersion": inner.revision.to_string()},
                    "items": items}),
        )
    }

    /// Events after the watch's resourceVersion, as newline-delimited JSON;
    /// an empty watch ends after a short wait (the client watches again).
    async fn do_watch(&self, t: &Target, query: &str) -> Response<Body> {
        let since: u64 = query_param(query, "resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut lines = Vec::new();
        for _ in 0..6 {
            {
                let inner = self.lock();
                for e in inner.events.iter().filter(|e| {
                    e.revision > since
                        && e.group == t.group
                        && e.resource == t.resource
                        && t.namespace.as_ref().is_none_or(|n| *n == e.namespace)
                }) {
                    lines.extend(
                        serde_json::to_vec(&json!({"type": e.kind, "object": e.object}))
                            .expect("json"),
                    );
                    lines.push(b'\n');
                }
            }
            if !lines.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Response::builder()
            .status(200)
            .body(Body::from(lines))
            .expect("response")
    }

    fn do_write(&self, t: &Target, mut body: Value, dry_run: bool, how: Write) -> Response<Body> {
        let mut inner = self.lock();
        let ns = t
            .namespace
            .clone()
            .or_else(|| body["metadata"]["namespace"].as_str().map(str::to_owned))
            .unwrap_or_default();
        let name = t
            .name
            .clone()
            .or_else(|| body["metadata"]["name"].as_str().map(str::to_owned))
            .unwrap_or_default();
        let key = (ns.clone(), name.clone());
        let current = inner
            .objects
            .get(&Self::key(t))
            .and_then(|c| c.get(&key))
            .cloned();
        let not_found = || {
            status(
                404,
                "NotFound",
                &format!("{} \"{name}\" not found", t.resource),
            )
        };
        let mut object = match (how, current) {
            (Write::Create, Some(_)) => {
                return status(
                    409,
                    "AlreadyExists",
                    &format!("{} \"{name}\" already exists", t.resource),
                );
            }
            (Write::Create, None) => body,
            (Write::Replace, None) => return not_found(),
            (Write::Replace, Some(cur)) => {
                let want = body["metadata"]["resourceVersion"].as_str();
                if want.is_some_and(|w| Some(w) != cur["metadata"]["resourceVersion"].as_str()) {
                    return status(
                        409,
                        "Conflict",
                        "the object has been modified; please apply your changes to the latest version and try again",
                    );
                }
                if t.sub.as_deref() == Some("status") {
                    let mut o = cur;
                    o["status"] = body["status"].take();
                    o
                } else {
                    body
                }
            }
            (Write::Merge, None) => return not_found(),
            (Write::Merge, Some(mut cur)) | (Write::Apply, Some(mut cur)) => {
                if let Some(m) = body.get_mut("metadata").and_then(Value::as_object_mut) {
                    m.remove("resourceVersion");
                }
                merge(&mut cur, &body);
                cur
            }
            (Write::Apply, None) => body,
        };
        let group = t.group.clone();
        for (resource, hook) in &inner.hooks {
            if *resource == t.resource {
                hook(&mut object);
            }
        }
        if object["metadata"].is_null() {
            object["metadata"] = json!({});
        }
        object["metadata"]["name"] = json!(name);
        if t.namespace.is_some() {
            object["metadata"]["namespace"] = json!(ns);
        }
        if dry_run {
            return respond(201, &object);
        }
        inner.revision += 1;
        let revision = inner.revision;
        object["metadata"]["resourceVersion"] = json!(revision.to_string());
        let existed = inner
            .objects
            .entry(Self::key(t))
            .or_default()
            .insert(key, object.clone())
            .is_some();
        inner.events.push(Event {
            group,
            resource: t.resource.clone(),
            namespace: ns,
            revision,
            kind: if existed { "MODIFIED" } else { "ADDED" },
            object: object.clone(),
        });
        respond(if existed { 200 } else { 201 }, &object)
    }

    fn do_delete(&self, t: &Target) -> Response<Body> {
        let mut inner = self.lock();
        let ns = t.namespace.clone().unwrap_or_default();
        let name = t.name.clone().unwrap_or_default();
        let removed = inner
            .objects
            .get_mut(&Self::key(t))
            .and_then(|c| c.remove(&(ns.clone(), name.clone())));
        let Some(mut object) = removed else {
            return status(
                404,
                "NotFound",
                &format!("{} \"{name}\" not found", t.resource),
            );
        };
        inner.revision += 1;
        let revision = inner.revision;
        object["metadata"]["resourceVersion"] = json!(revision.to_string());
        inner.events.push(Event {
            group: t.group.clone(),
            resource: t.resource.clone(),
            namespace: ns,
            revision,
            kind: "DELETED",
            object: object.clone(),
        });
        respond(200, &object)
    }
}

#[derive(Debug, Clone, Copy)]
enum Write {
    Create,
    Replace,
    Merge,
    Apply,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_group_resource_namespace_and_subresource() {
        let t = parse_path("/api/v1/namespaces").unwrap();
        assert_eq!(
            (t.resource.as_str(), t.namespace, t.name),
            ("namespaces", None, None)
        );
        let t = parse_path("/api/v1/namespaces/causeway").unwrap();
        assert_eq!(t.name.as_deref(), Some("causeway"));
        assert_eq!(t.namespace, None);
        let t = parse_path("/api/v1/namespaces/causeway/services").unwrap();
        assert_eq!(
            (t.resource.as_str(), t.namespace.as_deref()),
            ("services", Some("causeway"))
        );
        let t = parse_path(
            "/apis/multicluster.x-k8s.io/v1alpha1/namespaces/default/serviceexports/web/status",
        )
        .unwrap();
        assert_eq!(t.group, "multicluster.x-k8s.io");
        assert_eq!(t.sub.as_deref(), Some("status"));
        assert_eq!(t.name.as_deref(), Some("web"));
    }

    #[tokio::test]
    async fn serves_typed_clients_and_records_permissions() {
        use k8s_openapi::api::core::v1::ConfigMap;
        let fake = FakeKube::new();
        let api: kube::Api<ConfigMap> = kube::Api::namespaced(fake.client(), "causeway");
        assert!(api.get_opt("x").await.unwrap().is_none());
        let cm: ConfigMap =
            serde_json::from_value(json!({"metadata": {"name": "x"}, "data": {"k": "v"}})).unwrap();
        api.create(&Default::default(), &cm).await.unwrap();
        let got = api.get("x").await.unwrap();
        assert_eq!(got.data.unwrap()["k"], "v");
        assert_eq!(api.list(&Default::default()).await.unwrap().items.len(), 1);
        let perms: Vec<String> = fake.permissions().iter().map(|p| p.to_string()).collect();
        assert_eq!(
            perms,
            [
                "\"\" configmaps create (namespaced)",
                "\"\" configmaps get (namespaced)",
                "\"\" configmaps list (namespaced)"
            ]
        );
    }
}
