//! The kubelet's summary API (`GET /stats/summary`, `k8s.io/kubelet/pkg/apis/stats/v1alpha1`)
//! as Telegraf v1.39.3's `inputs.kubernetes` turns it into points
//! (`plugins/inputs/kubernetes/kubernetes.go`):
//!
//! | measurement | per | tags |
//! | --- | --- | --- |
//! | `kubernetes_system_container` | `node.systemContainers[]` | `node_name`, `container_name` |
//! | `kubernetes_node` | the node | `node_name` |
//! | `kubernetes_pod_container` | `pods[].containers[]` | `node_name`, `namespace`, `pod_name`, `container_name` |
//! | `kubernetes_pod_volume` | `pods[].volume[]` | `node_name`, `namespace`, `pod_name`, `volume_name` |
//! | `kubernetes_pod_network` | `pods[]` | `node_name`, `namespace`, `pod_name` |
//!
//! Every field is an integer (`cpu_usage_nanocores`, `memory_working_set_bytes`, `rx_bytes`…,
//! listed in [`NODE_FIELDS`] and its siblings). The API marks nearly every number optional
//! (`omitempty`): a container that just started has no CPU rate yet, a pod on the host network
//! no network stats. Telegraf decodes into Go structs and writes a missing number as 0, which
//! reads as "no CPU used"; logmill leaves it out, and writes no point when nothing is left. A
//! value that is present but not an unsigned integer (a string, a negative number) is left out
//! too and counted as odd.
//!
//! Not followed: Telegraf also asks `/pods` for each container's `image` and `version` tags
//! and for pod labels (off by default, `label_exclude = ["*"]`); logmill asks only the summary.

use serde_json::Value;

use crate::metrics::point::{FieldValue, Point};

/// `(field, path in a container's stats)` of `kubernetes_system_container`.
pub(crate) const SYSTEM_CONTAINER_FIELDS: &[(&str, &[&str])] = &[
    ("cpu_usage_nanocores", &["cpu", "usageNanoCores"]),
    ("cpu_usage_core_nanoseconds", &["cpu", "usageCoreNanoSeconds"]),
    ("memory_usage_bytes", &["memory", "usageBytes"]),
    ("memory_working_set_bytes", &["memory", "workingSetBytes"]),
    ("memory_rss_bytes", &["memory", "rssBytes"]),
    ("memory_page_faults", &["memory", "pageFaults"]),
    ("memory_major_page_faults", &["memory", "majorPageFaults"]),
    ("rootfs_available_bytes", &["rootfs", "availableBytes"]),
    ("rootfs_capacity_bytes", &["rootfs", "capacityBytes"]),
    ("logsfs_available_bytes", &["logs", "availableBytes"]),
    ("logsfs_capacity_bytes", &["logs", "capacityBytes"]),
];

/// `kubernetes_node`, paths in `node`.
pub(crate) const NODE_FIELDS: &[(&str, &[&str])] = &[
    ("cpu_usage_nanocores", &["cpu", "usageNanoCores"]),
    ("cpu_usage_core_nanoseconds", &["cpu", "usageCoreNanoSeconds"]),
    ("memory_available_bytes", &["memory", "availableBytes"]),
    ("memory_usage_bytes", &["memory", "usageBytes"]),
    ("memory_working_set_bytes", &["memory", "workingSetBytes"]),
    ("memory_rss_bytes", &["memory", "rssBytes"]),
    ("memory_page_faults", &["memory", "pageFaults"]),
    ("memory_major_page_faults", &["memory", "majorPageFaults"]),
    ("network_rx_bytes", &["network", "rxBytes"]),
    ("network_rx_errors", &["network", "rxErrors"]),
    ("network_tx_bytes", &["network", "txBytes"]),
    ("network_tx_errors", &["network", "txErrors"]),
    ("fs_available_bytes", &["fs", "availableBytes"]),
    ("fs_capacity_bytes", &["fs", "capacityBytes"]),
    ("fs_used_bytes", &["fs", "usedBytes"]),
    ("runtime_image_fs_available_bytes", &["runtime", "imageFs", "availableBytes"]),
    ("runtime_image_fs_capacity_bytes", &["runtime", "imageFs", "capacityBytes"]),
    ("runtime_image_fs_used_bytes", &["runtime", "imageFs", "usedBytes"]),
];

/// `kubernetes_pod_container`, paths in a pod's container.
pub(crate) const POD_CONTAINER_FIELDS: &[(&str, &[&str])] = &[
    ("cpu_usage_nanocores", &["cpu", "usageNanoCores"]),
    ("cpu_usage_core_nanoseconds", &["cpu", "usageCoreNanoSeconds"]),
    ("memory_usage_bytes", &["memory", "usageBytes"]),
    ("memory_working_set_bytes", &["memory", "workingSetBytes"]),
    ("memory_rss_bytes", &["memory", "rssBytes"]),
    ("memory_page_faults", &["memory", "pageFaults"]),
    ("memory_major_page_faults", &["memory", "majorPageFaults"]),
    ("rootfs_available_bytes", &["rootfs", "availableBytes"]),
    ("rootfs_capacity_bytes", &["rootfs", "capacityBytes"]),
    ("rootfs_used_bytes", &["rootfs", "usedBytes"]),
    ("logsfs_available_bytes", &["logs", "availableBytes"]),
    ("logsfs_capacity_bytes", &["logs", "capacityBytes"]),
    ("logsfs_used_bytes", &["logs", "usedBytes"]),
];

/// `kubernetes_pod_volume`, paths in a pod's volume.
pub(crate) const POD_VOLUME_FIELDS: &[(&str, &[&str])] = &[
    ("available_bytes", &["availableBytes"]),
    ("capacity_bytes", &["capacityBytes"]),
    ("used_bytes", &["usedBytes"]),
];

/// `kubernetes_pod_network`, paths in a pod.
pub(crate) const POD_NETWORK_FIELDS: &[(&str, &[&str])] = &[
    ("rx_bytes", &["network", "rxBytes"]),
    ("rx_errors", &["network", "rxErrors"]),
    ("tx_bytes", &["network", "txBytes"]),
    ("tx_errors", &["network", "txErrors"]),
];

/// Why a summary gave no points at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SummaryError {
    #[error("not JSON: {0}")]
    Json(String),
    #[error("no `node` object: not a kubelet stats summary")]
    NoNode,
}

/// The points of a summary, and how many values were present but not unsigned integers.
#[derive(Debug, Default)]
pub(crate) struct SummaryPoints {
    pub points: Vec<Point>,
    pub odd_values: u64,
}

fn lookup<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, key| v.get(key))
}

fn text<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    lookup(v, path).and_then(Value::as_str).unwrap_or("")
}

fn with_fields(
    mut p: Point,
    stats: &Value,
    fields: &[(&'static str, &[&str])],
    odd: &mut u64,
) -> Option<Point> {
    for (name, path) in fields {
        match lookup(stats, path) {
            None | Some(Value::Null) => {}
            Some(v) => match v.as_u64() {
                Some(n) => p = p.field(*name, FieldValue::Int(i64::try_from(n).unwrap_or(i64::MAX))),
                None => *odd += 1,
            },
        }
    }
    (!p.fields.is_empty()).then_some(p)
}

fn array<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key).and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default()
}

/// The points of a `/stats/summary` answer, in Telegraf's order (system containers, node,
/// then per pod its containers, volumes and network).
pub(crate) fn summary_points(body: &[u8]) -> Result<SummaryPoints, SummaryError> {
    let summary: Value = serde_json::from_slice(body).map_err(|e| SummaryError::Json(e.to_string()))?;
    let node = summary.get("node").filter(|n| n.is_object()).ok_or(SummaryError::NoNode)?;
    let node_name = text(node, &["nodeName"]);
    let mut out = SummaryPoints::default();
    let odd = &mut out.odd_values;

    for container in array(node, "systemContainers") {
        let p = Point::new("kubernetes_system_container")
            .tag("node_name", node_name.to_owned())
            .tag("container_name", text(container, &["name"]).to_owned());
        out.points.extend(with_fields(p, container, SYSTEM_CONTAINER_FIELDS, odd));
    }
    let p = Point::new("kubernetes_node").tag("node_name", node_name.to_owned());
    out.points.extend(with_fields(p, node, NODE_FIELDS, odd));

    for pod in array(&summary, "pods") {
        let (pod_name, namespace) = (text(pod, &["podRef", "name"]), text(pod, &["podRef", "namespace"]));
        for container in array(pod, "containers") {
            let p = Point::new("kubernetes_pod_container")
                .tag("node_name", node_name.to_owned())
                .tag("namespace", namespace.to_owned())
                .tag("container_name", text(container, &["name"]).to_owned())
                .tag("pod_name", pod_name.to_owned());
            out.points.extend(with_fields(p, container, POD_CONTAINER_FIELDS, odd));
        }
        for volume in array(pod, "volume") {
            let p = Point::new("kubernetes_pod_volume")
                .tag("node_name", node_name.to_owned())
                .tag("pod_name", pod_name.to_owned())
                .tag("namespace", namespace.to_owned())
                .tag("volume_name", text(volume, &["name"]).to_owned());
            out.points.extend(with_fields(p, volume, POD_VOLUME_FIELDS, odd));
        }
        let p = Point::new("kubernetes_pod_network")
            .tag("node_name", node_name.to_owned())
            .tag("pod_name", pod_name.to_owned())
            .tag("namespace", namespace.to_owned());
        out.points.extend(with_fields(p, pod, POD_NETWORK_FIELDS, odd));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary() -> Vec<u8> {
        std::fs::read(format!("{}/testdata/kubelet/summary.json", env!("CARGO_MANIFEST_DIR"))).unwrap()
    }

    fn find<'a>(points: &'a [Point], measurement: &str, tags: &[(&str, &str)]) -> &'a Point {
        points
            .iter()
            .find(|p| p.measurement == measurement && tags.iter().all(|(k, v)| p.tag_value(k) == Some(*v)))
            .unwrap_or_else(|| panic!("no {measurement} {tags:?}"))
    }

    fn i(p: &Point, key: &str) -> Option<i64> {
        match p.field_value(key) {
            Some(FieldValue::Int(v)) => Some(*v),
            None => None,
            other => panic!("{key}: {other:?}"),
        }
    }

    /// `testdata/kubelet/summary.json`: expectations read off the file by hand.
    #[test]
    fn golden_summary() {
        let out = summary_points(&summary()).unwrap();
        assert_eq!(out.odd_values, 0);
        let count = |m: &str| out.points.iter().filter(|p| p.measurement == m).count();
        assert_eq!(count("kubernetes_system_container"), 3, "kubelet, runtime, pods");
        assert_eq!(count("kubernetes_node"), 1);
        assert_eq!(count("kubernetes_pod_container"), 4);
        assert_eq!(count("kubernetes_pod_volume"), 3);
        assert_eq!(count("kubernetes_pod_network"), 3);
        assert_eq!(out.points.len(), 14);

        let node = find(&out.points, "kubernetes_node", &[("node_name", "node-1")]);
        assert_eq!(node.fields.len(), 18);
        assert_eq!(i(node, "cpu_usage_nanocores"), Some(391_232_561));
        assert_eq!(i(node, "memory_working_set_bytes"), Some(3_301_425_152));
        assert_eq!(i(node, "network_rx_bytes"), Some(60_102_849_377));
        assert_eq!(i(node, "runtime_image_fs_used_bytes"), Some(4_112_896_384));

        let kubelet = find(&out.points, "kubernetes_system_container", &[("container_name", "kubelet")]);
        assert_eq!(i(kubelet, "memory_rss_bytes"), Some(61_263_872));
        assert_eq!(kubelet.fields.len(), 7, "no rootfs/logs for system containers in this summary");

        let router = find(
            &out.points,
            "kubernetes_pod_container",
            &[("pod_name", "deis-router-2457652422-h6c3x"), ("container_name", "deis-router")],
        );
        assert_eq!(router.tag_value("namespace"), Some("deis"));
        assert_eq!(router.tag_value("node_name"), Some("node-1"));
        assert_eq!(i(router, "cpu_usage_nanocores"), Some(12_838_044));
        assert_eq!(i(router, "memory_working_set_bytes"), Some(88_080_384));
        assert_eq!(i(router, "logsfs_used_bytes"), Some(20_480_000));
        assert_eq!(router.fields.len(), 13);

        // A container that just started: no CPU rate, no rss, in the API; left out, not 0.
        let fresh = find(&out.points, "kubernetes_pod_container", &[("container_name", "foo-web")]);
        assert_eq!(i(fresh, "cpu_usage_nanocores"), None);
        assert_eq!(i(fresh, "memory_rss_bytes"), None);
        assert_eq!(i(fresh, "cpu_usage_core_nanoseconds"), Some(31_415_926));

        let net = find(&out.points, "kubernetes_pod_network", &[("pod_name", "foo-v2-web-2ggow")]);
        assert_eq!((i(net, "rx_bytes"), i(net, "tx_errors")), (Some(1_847_330), Some(0)));
        let volume =
            find(&out.points, "kubernetes_pod_volume", &[("volume_name", "deis-router-token-x1x2k")]);
        assert_eq!(i(volume, "capacity_bytes"), Some(8_358_457_344));
        // A pod on the host network has no network stats: no point for it.
        assert!(!out.points.iter().any(|p| p.measurement == "kubernetes_pod_network"
            && p.tag_value("pod_name") == Some("kube-proxy-node-1")));
    }

    #[test]
    fn odd_json() {
        assert!(matches!(summary_points(b"not json"), Err(SummaryError::Json(_))));
        assert_eq!(summary_points(b"[1,2]").unwrap_err(), SummaryError::NoNode);
        assert_eq!(summary_points(b"{\"node\": 5}").unwrap_err(), SummaryError::NoNode);
        // Odd values: a string, a negative, a float, an object; nulls are just missing.
        let body =
            br#"{"node": {"nodeName": "n", "cpu": {"usageNanoCores": "12", "usageCoreNanoSeconds": -1},
            "memory": {"usageBytes": 1.5, "workingSetBytes": {"x": 1}, "rssBytes": null, "pageFaults": 7}},
            "pods": [{"podRef": {"name": "p"}, "containers": "nope", "volume": [{"name": "v"}]}, 5]}"#;
        let out = summary_points(body).unwrap();
        assert_eq!(out.odd_values, 4);
        assert_eq!(out.points.len(), 1, "the node with its one good field; nothing else has a field");
        assert_eq!(i(&out.points[0], "memory_page_faults"), Some(7));
        // Larger than i64: clamped, as every unsigned counter.
        let out =
            summary_points(br#"{"node": {"cpu": {"usageCoreNanoSeconds": 18446744073709551615}}}"#).unwrap();
        assert_eq!(i(&out.points[0], "cpu_usage_core_nanoseconds"), Some(i64::MAX));
        assert_eq!(out.points[0].tag_value("node_name"), Some(""), "empty: the encoder leaves the tag out");
    }
}
