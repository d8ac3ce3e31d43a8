//! The export conditions written to each ServiceExport's status on
//! Kubernetes (`kubectl get serviceexport -o yaml` shows them).
//!
//! [`plan_status_updates`] is pure: it compares the conditions the agent
//! wants with those the cluster source last saw on each ServiceExport and
//! keeps a condition's `lastTransitionTime` while its status holds. A
//! [`StatusWriter`] applies the difference: [`KubeStatusWriter`] with a
//! merge patch of the status subresource, the manifest directory's
//! [`ManifestExportStatusWriter`] as a file beside the ServiceExports (the
//! lab), [`FakeStatusWriter`] in memory.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use causeway_api::mcs::{McsCondition, ServiceExport, ServiceExportStatus};
use causeway_api::source::{ClusterState, ManifestExportStatusWriter};
use kube::api::{Api, Patch, PatchParams};

use super::{ExportKey, ExportStatuses};
use crate::Error;

/// The statuses to write: every export whose conditions differ from what
/// its ServiceExport holds. `now` (RFC 3339) stamps conditions whose status
/// changed.
pub fn plan_status_updates(
    state: &ClusterState,
    statuses: &ExportStatuses,
    now: &str,
) -> BTreeMap<ExportKey, ServiceExportStatus> {
    let mut out = BTreeMap::new();
    for (key, status) in statuses {
        let Some(export) = state
            .service_exports
            .get(&(key.namespace.clone(), key.name.clone()))
        else {
            continue;
        };
        let current: &[McsCondition] = export
            .status
            .as_ref()
            .map_or(&[], |s| s.conditions.as_slice());
        let conditions: Vec<McsCondition> = status
            .to_mcs()
            .into_iter()
            .map(|mut c| {
                let held = current
                    .iter()
                    .find(|o| o.type_ == c.type_ && o.status == c.status)
                    .and_then(|o| o.last_transition_time.clone());
                c.last_transition_time = Some(held.unwrap_or_else(|| now.to_owned()));
                c
            })
            .collect();
        if conditions != current {
            out.insert(key.clone(), ServiceExportStatus { conditions });
        }
    }
    out
}

/// The current time as Kubernetes writes it (RFC 3339, whole seconds).
pub fn now_rfc3339() -> String {
    let now = k8s_openapi::jiff::Timestamp::now();
    k8s_openapi::jiff::Timestamp::from_second(now.as_second())
        .map(|t| t.to_string())
        .unwrap_or_else(|_| now.to_string())
}

/// Writes a ServiceExport's status.
#[async_trait::async_trait]
pub trait StatusWriter: Send + Sync {
    /// Replaces the status of the ServiceExport `key`.
    async fn write(&self, key: &ExportKey, status: &ServiceExportStatus) -> Result<(), Error>;
}

/// Writes statuses through the Kubernetes API (`kubectl patch
/// serviceexport NAME --subresource=status --type=merge`).
#[derive(Clone)]
pub struct KubeStatusWriter {
    client: kube::Client,
}

impl KubeStatusWriter {
    /// A writer using `client`.
    pub fn new(client: kube::Client) -> Self {
        Self { client }
    }
}

#[async_trait::async_trait]
impl StatusWriter for KubeStatusWriter {
    async fn write(&self, key: &ExportKey, status: &ServiceExportStatus) -> Result<(), Error> {
        let api: Api<ServiceExport> = Api::namespaced(self.client.clone(), &key.namespace);
        let patch = serde_json::json!({ "status": status });
        api.patch_status(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map(|_| ())
            .map_err(|e| Error::WriteExportStatus {
                export: key.to_string(),
                source: Box::new(e),
            })
    }
}

#[async_trait::async_trait]
impl StatusWriter for ManifestExportStatusWriter {
    async fn write(&self, key: &ExportKey, status: &ServiceExportStatus) -> Result<(), Error> {
        ManifestExportStatusWriter::write(self, &key.namespace, &key.name, status)
            .await
            .map_err(|e| Error::WriteExportStatus {
                export: key.to_string(),
                source: Box::new(e),
            })
    }
}

/// An in-memory [`StatusWriter`] for tests: keeps the last status written
/// per export.
#[derive(Debug, Clone, Default)]
pub struct FakeStatusWriter {
    written: Arc<Mutex<BTreeMap<ExportKey, ServiceExportStatus>>>,
}

impl FakeStatusWriter {
    /// What has been written so far.
    pub fn written(&self) -> BTreeMap<ExportKey, ServiceExportStatus> {
        self.written
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

#[async_trait::async_trait]
impl StatusWriter for FakeStatusWriter {
    async fn write(&self, key: &ExportKey, status: &ServiceExportStatus) -> Result<(), Error> {
        self.written
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.clone(), status.clone());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use causeway_api::records::ClusterId;
    use http::{Request, Response};
    use kube::client::Body;

    use super::*;
    use crate::export::plan_exports;

    fn state(with_status: Option<ServiceExportStatus>) -> ClusterState {
        let mut export = ServiceExport::new("default", "web");
        export.status = with_status;
        let mut s = ClusterState {
            synced: true,
            ..ClusterState::default()
        };
        s.service_exports
            .insert(("default".into(), "web".into()), export);
        s
    }

    fn key() -> ExportKey {
        ExportKey::new("default", "web")
    }

    #[test]
    fn only_changes_are_written_and_times_hold_while_a_status_holds() {
        let a = ClusterId::new("a").unwrap();
        // No Service: Valid=False.
        let statuses = plan_exports(&a, &state(None), [], None).status;
        let first = plan_status_updates(&state(None), &statuses, "2026-01-01T00:00:00Z");
        let written = first[&key()].clone();
        assert!(
            written
                .conditions
                .iter()
                .all(|c| c.last_transition_time.as_deref() == Some("2026-01-01T00:00:00Z"))
        );
        assert_eq!(written.conditions[0].reason.as_deref(), Some("NoService"));

        // The source now shows what was written: nothing more to write.
        let seen = state(Some(written.clone()));
        assert!(plan_status_updates(&seen, &statuses, "2026-01-01T00:01:00Z").is_empty());

        // Ready changes reason but not status (Failed -> still False): the
        // time holds; the message and reason are rewritten.
        let mut changed = statuses.clone();
        let s = changed.get_mut(&key()).unwrap();
        s.ready.reason = "Pending".into();
        let second = plan_status_updates(&seen, &changed, "2026-01-01T00:02:00Z");
        let ready = &second[&key()].conditions[1];
        assert_eq!(ready.reason.as_deref(), Some("Pending"));
        assert_eq!(
            ready.last_transition_time.as_deref(),
            Some("2026-01-01T00:00:00Z")
        );

        // Valid turns True: its time moves.
        let s = changed.get_mut(&key()).unwrap();
        s.valid.status = crate::export::ConditionStatus::True;
        let third = plan_status_updates(&seen, &changed, "2026-01-01T00:03:00Z");
        let valid = &third[&key()].conditions[0];
        assert_eq!(valid.status, "True");
        assert_eq!(
            valid.last_transition_time.as_deref(),
            Some("2026-01-01T00:03:00Z")
        );

        // An export the source does not hold is not written.
        let mut extra = statuses;
        extra.insert(ExportKey::new("default", "gone"), extra[&key()].clone());
        assert!(
            !plan_status_updates(&seen, &extra, "x")
                .contains_key(&ExportKey::new("default", "gone"))
        );
    }

    #[test]
    fn now_is_rfc3339_in_whole_seconds() {
        let now = now_rfc3339();
        assert!(now.ends_with('Z') && !now.contains('.'), "{now}");
        assert!(now.parse::<k8s_openapi::jiff::Timestamp>().is_ok(), "{now}");
    }

    #[tokio::test]
    async fn the_kube_writer_merge_patches_the_status_subresource() {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = kube::Client::new(service, "default");
        let server = tokio::spawn(async move {
            let (req, send) = handle.next_request().await.expect("a request");
            let method = req.method().clone();
            let path = req.uri().path().to_owned();
            let content_type = req
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            let body = req.into_body().collect_bytes().await.unwrap();
            let patch: serde_json::Value = serde_json::from_slice(&body).unwrap();
            let mut object = serde_json::json!({
                "apiVersion": "multicluster.x-k8s.io/v1beta1", "kind": "ServiceExport",
                "metadata": {"name": "web", "namespace": "prod"}});
            object["status"] = patch["status"].clone();
            send.send_response(
                Response::builder()
                    .body(Body::from(serde_json::to_vec(&object).unwrap()))
                    .unwrap(),
            );
            (method, path, content_type, patch)
        });
        let status = ServiceExportStatus {
            conditions: vec![McsCondition {
                type_: "Valid".into(),
                status: "True".into(),
                last_transition_time: Some("2026-01-01T00:00:00Z".into()),
                reason: Some("Valid".into()),
                message: Some("Service prod/web exists".into()),
            }],
        };
        KubeStatusWriter::new(client)
            .write(&ExportKey::new("prod", "web"), &status)
            .await
            .unwrap();
        let (method, path, content_type, patch) =
            tokio::time::timeout(Duration::from_secs(2), server)
                .await
                .unwrap()
                .unwrap();
        assert_eq!(method, http::Method::PATCH);
        assert_eq!(
            path,
            "/apis/multicluster.x-k8s.io/v1beta1/namespaces/prod/serviceexports/web/status"
        );
        assert_eq!(content_type, "application/merge-patch+json");
        assert_eq!(patch["status"]["conditions"][0]["type"], "Valid");
        assert_eq!(
            patch["status"]["conditions"][0]["lastTransitionTime"],
            "2026-01-01T00:00:00Z"
        );
    }
}
