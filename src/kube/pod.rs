//! A pod object of the Kubernetes API (`GET /api/v1/namespaces/{ns}/pods/{name}`) reduced to
//! what the `logs` records carry: its uid (`pod_id`) and its labels, keys de-dotted as the old
//! fluentd's `kubernetes_metadata` filter did (`.` → `_`, its `de_dot` default). Pure.
//!
//! Everything else in the object (spec, conditions, managedFields, …) is skipped unread.

use std::collections::BTreeMap;

use serde::Deserialize;

/// What logmill keeps of a pod.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PodMeta {
    /// `metadata.uid`, the `pod_id` of the records.
    pub uid: String,
    /// `metadata.labels`, keys de-dotted, sorted by key, each key once.
    pub labels: Vec<(String, String)>,
    /// `(name, id)` of every container the pod's status lists (init and ephemeral ones too),
    /// the id without its runtime prefix (`docker://`, `containerd://`): what a file name cut
    /// at 255 bytes lost can be found here.
    pub containers: Vec<(String, String)>,
}

impl PodMeta {
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.binary_search_by(|(k, _)| k.as_str().cmp(key)).ok().map(|i| self.labels[i].1.as_str())
    }

    /// The container whose name is `name`, else the only one whose name starts with it and
    /// whose id starts with `id_prefix` (a cut file name).
    pub fn container(&self, name: &str, id_prefix: &str) -> Option<&(String, String)> {
        if let Some(exact) = self.containers.iter().find(|(n, _)| n == name) {
            return Some(exact);
        }
        let mut candidates =
            self.containers.iter().filter(|(n, id)| n.starts_with(name) && id.starts_with(id_prefix));
        let first = candidates.next()?;
        candidates.next().is_none().then_some(first)
    }
}

/// Why a pod object was not understood.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PodError {
    #[error("not a pod object: {0}")]
    Json(#[from] serde_json::Error),
    #[error("object kind is `{0}`, not Pod")]
    Kind(String),
    #[error("pod object has no metadata.uid")]
    NoUid,
}

/// `.` → `_` in a label key.
pub fn de_dot(key: &str) -> String {
    key.replace('.', "_")
}

/// Reads a pod object as the API serves it.
pub fn parse_pod(body: &[u8]) -> Result<PodMeta, PodError> {
    let pod: RawPod = match serde_json::from_slice(body) {
        Ok(pod) => pod,
        Err(error) => {
            // Another kind of object (a `Status` has a string `status`) says so, rather
            // than fail on a field of the wrong shape.
            #[derive(Deserialize)]
            struct Kind {
                kind: Option<String>,
            }
            return match serde_json::from_slice::<Kind>(body) {
                Ok(Kind { kind: Some(kind) }) if kind != "Pod" => Err(PodError::Kind(kind)),
                _ => Err(PodError::Json(error)),
            };
        }
    };
    if let Some(kind) = pod.kind.filter(|k| k != "Pod") {
        return Err(PodError::Kind(kind));
    }
    if pod.metadata.uid.is_empty() {
        return Err(PodError::NoUid);
    }
    // Keys are inserted in their original byte order, so when de-dotting makes two keys one
    // (`a.b` and `a_b`), the later original wins: deterministic, and it is the key written
    // with `_` when they differ only there ('.' sorts before '_').
    let mut labels = BTreeMap::new();
    for (k, v) in pod.metadata.labels.unwrap_or_default() {
        labels.insert(de_dot(&k), v);
    }
    let status = pod.status.unwrap_or_default();
    let containers =
        [status.container_statuses, status.init_container_statuses, status.ephemeral_container_statuses]
            .into_iter()
            .flatten()
            .flatten()
            .map(|c| {
                let id = c.container_id.unwrap_or_default();
                let id = id.split_once("://").map_or(id.as_str(), |(_, id)| id).to_owned();
                (c.name, id)
            })
            .collect();
    Ok(PodMeta { uid: pod.metadata.uid, labels: labels.into_iter().collect(), containers })
}

#[derive(Deserialize)]
struct RawPod {
    #[serde(default)]
    kind: Option<String>,
    metadata: RawMetadata,
    #[serde(default)]
    status: Option<RawStatus>,
}

#[derive(Deserialize)]
struct RawMetadata {
    #[serde(default)]
    uid: String,
    /// Omitted (or `null`) when the pod has none.
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawStatus {
    #[serde(default)]
    container_statuses: Option<Vec<RawContainerStatus>>,
    #[serde(default)]
    init_container_statuses: Option<Vec<RawContainerStatus>>,
    #[serde(default)]
    ephemeral_container_statuses: Option<Vec<RawContainerStatus>>,
}

#[derive(Deserialize)]
struct RawContainerStatus {
    name: String,
    /// Absent while the container is still waiting to be created.
    #[serde(default, rename = "containerID")]
    container_id: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pod as `kubectl get pod -o json` shows one (the shape of the API reference's Pod,
    /// ObjectMeta, PodSpec and PodStatus), with the labels Deis Workflow puts on an app's pod.
    const POD: &str = r#"{
      "kind": "Pod",
      "apiVersion": "v1",
      "metadata": {
        "name": "foo-v2-web-2ggow",
        "generateName": "foo-v2-web-",
        "namespace": "foo",
        "uid": "34ebc234-2423-11e6-94aa-42010a800021",
        "resourceVersion": "152187",
        "creationTimestamp": "2016-05-31T01:30:12Z",
        "labels": {"app": "foo", "heritage": "deis", "type": "web", "version": "v2",
                   "app.kubernetes.io/name": "foo", "pod-template-hash": "7cb95d9db6"},
        "annotations": {"kubernetes.io/created-by": "{\"kind\":\"SerializedReference\"}"},
        "ownerReferences": [{"apiVersion": "v1", "kind": "ReplicationController", "name": "foo-v2-web",
                             "uid": "22a5a8be-7cee-42cd-a6c3-02b620f4ce88", "controller": true,
                             "blockOwnerDeletion": true}],
        "managedFields": [{"manager": "kube-controller-manager", "operation": "Update",
                           "apiVersion": "v1", "time": "2016-05-31T01:30:12Z",
                           "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {}}}]
      },
      "spec": {
        "volumes": [{"name": "default-token-brnb9", "secret": {"secretName": "default-token-brnb9"}}],
        "containers": [{"name": "foo-web", "image": "10.0.0.2:5555/foo:git-1e2f3a4",
                        "command": ["/runner/init"], "env": [{"name": "PORT", "value": "5000"}],
                        "resources": {}, "imagePullPolicy": "IfNotPresent"}],
        "restartPolicy": "Always",
        "terminationGracePeriodSeconds": 30,
        "dnsPolicy": "ClusterFirst",
        "serviceAccountName": "default",
        "nodeName": "node-1"
      },
      "status": {
        "phase": "Running",
        "conditions": [{"type": "Ready", "status": "True", "lastProbeTime": null,
                        "lastTransitionTime": "2016-05-31T01:30:20Z"}],
        "hostIP": "10.240.0.4",
        "podIP": "10.164.1.7",
        "startTime": "2016-05-31T01:30:12Z",
        "initContainerStatuses": [{"name": "init-config", "ready": true, "restartCount": 0,
            "state": {"terminated": {"exitCode": 0, "reason": "Completed"}},
            "image": "busybox:1", "imageID": "docker://sha256:abc",
            "containerID": "docker://0f1e2d3c"}],
        "containerStatuses": [{"name": "foo-web", "ready": true, "restartCount": 0,
            "state": {"running": {"startedAt": "2016-05-31T01:30:19Z"}}, "lastState": {},
            "image": "10.0.0.2:5555/foo:git-1e2f3a4", "imageID": "docker://sha256:def",
            "containerID": "docker://6a9069435788a05531ee2b9afbcdc73a22018af595f3203cb67e06f50103bf5f"}],
        "qosClass": "BestEffort"
      }
    }"#;

    #[test]
    fn a_deis_app_pod() {
        let meta = parse_pod(POD.as_bytes()).unwrap();
        assert_eq!(meta.uid, "34ebc234-2423-11e6-94aa-42010a800021");
        let labels: Vec<(&str, &str)> = meta.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            labels,
            [
                ("app", "foo"),
                ("app_kubernetes_io/name", "foo"),
                ("heritage", "deis"),
                ("pod-template-hash", "7cb95d9db6"),
                ("type", "web"),
                ("version", "v2"),
            ]
        );
        assert_eq!(meta.label("heritage"), Some("deis"));
        assert_eq!(meta.label("app_kubernetes_io/name"), Some("foo"));
        assert_eq!(meta.label("app.kubernetes.io/name"), None, "keys are de-dotted");
        assert_eq!(meta.label("missing"), None);
        assert_eq!(
            meta.containers,
            [
                (
                    "foo-web".to_owned(),
                    "6a9069435788a05531ee2b9afbcdc73a22018af595f3203cb67e06f50103bf5f".to_owned()
                ),
                ("init-config".to_owned(), "0f1e2d3c".to_owned()),
            ]
        );
        assert_eq!(meta.container("foo-web", "").map(|c| c.0.as_str()), Some("foo-web"));
        assert_eq!(meta.container("foo-w", "6a90").map(|c| c.0.as_str()), Some("foo-web"), "a cut name");
        assert_eq!(meta.container("foo-w", "0f1e"), None, "the id disagrees");
    }

    #[test]
    fn sparse_and_odd_objects() {
        // No labels, no status yet (a pod just created), a container still waiting (no id).
        let meta = parse_pod(br#"{"kind":"Pod","metadata":{"name":"p","uid":"u-1"}}"#).unwrap();
        assert_eq!(meta, PodMeta { uid: "u-1".into(), ..PodMeta::default() });
        let meta = parse_pod(
            br#"{"metadata":{"uid":"u","labels":null},"status":{"containerStatuses":[{"name":"c","state":{"waiting":{}}}]}}"#,
        )
        .unwrap();
        assert_eq!(meta.containers, [("c".to_owned(), String::new())]);
        // De-dotting collisions keep the literal `_` key.
        let meta =
            parse_pod(br#"{"metadata":{"uid":"u","labels":{"a_b":"underscore","a.b":"dot"}}}"#).unwrap();
        assert_eq!(meta.labels, [("a_b".to_owned(), "underscore".to_owned())]);
        // The API's answer to a missing pod is a Status object, not a pod.
        let status = br#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"pods \"x\" not found","reason":"NotFound","details":{"name":"x","kind":"pods"},"code":404}"#;
        assert!(matches!(parse_pod(status), Err(PodError::Kind(k)) if k == "Status"));
        assert!(matches!(parse_pod(br#"{"kind":"Pod","metadata":{}}"#), Err(PodError::NoUid)));
        assert!(matches!(parse_pod(b"<html>"), Err(PodError::Json(_))));
        assert!(matches!(parse_pod(br#"{"metadata":{"uid":"u","labels":{"a":1}}}"#), Err(PodError::Json(_))));
    }
}
