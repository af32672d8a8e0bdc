//! What a container's records are, by the old fluentd plugin's rules (its `deis` output's
//! `from_router?`, `from_controller?` and `deis_deployed_app?`), with a fallback by namespace
//! for when the Kubernetes API cannot say:
//!
//! 1. container name contains `deis-router` → [`Kind::Router`] (no namespace check): its
//!    lines become points with the `deis-router` definition;
//! 2. container name contains `deis-controller` → [`Kind::Controller`]: its records go to the
//!    `logs` topic, but only those the Deis logger can file (see [`ToLogs::ControllerLines`]);
//! 3. with the pod's metadata: labels `heritage=deis` and `app` set (non-empty), namespace not
//!    `deis` → [`Kind::App`]; without it (no API configured, or not known in time): any
//!    namespace but `deis` and `kube-system` → [`Kind::App`] named after its namespace
//!    (`labels = {app: <namespace>}`, which is how Deis names an app's namespace);
//! 4. anything else → [`Kind::Other`], dropped unless `drop_other = false`.
//!
//! The plugin tested the router and the app rules independently; so does this, with labels
//! known: a router container in a Deis app's pod also ships its records to `logs`. Any
//! container a `parsers/` definition applies to ([`Registry::for_container`]) also has its
//! lines turned into that definition's points.

use std::sync::Arc;

use regex::bytes::Regex;

use crate::access::rules::{Definition, Registry, DEIS_ROUTER};
use crate::kube::{ContainerRef, PodMeta};

/// The old plugin's container-name rules (unanchored, as its `Regexp.new(…).match`).
pub const ROUTER_CONTAINER: &str = "deis-router";
pub const CONTROLLER_CONTAINER: &str = "deis-controller";
/// Never apps when the API cannot say: the platform's namespace and the cluster's.
pub const PLATFORM_NAMESPACES: [&str; 2] = ["deis", "kube-system"];

/// The Deis logger's `controllerPattern` (`log/message_handler.go`), in Go's RE2 syntax:
/// `^(INFO|WARN|DEBUG|ERROR)\s+(\[(\S+)\])+:(.*)`. The logger takes the app name from its
/// third group and indexes the match without checking it, so a controller record that does not
/// match crashes the logger; the old plugin sent only matching ones. Go's `\s` is ASCII
/// `[\t\n\f\r ]` (no `\v`, unlike Ruby's), spelled out here; bytes mode, since Go sees invalid
/// UTF-8 as one U+FFFD, which `[^…]` matches as these bytes do.
const CONTROLLER_LINE: &str = r"(?-u)^(?:INFO|WARN|DEBUG|ERROR)[\t\n\f\r ]+(?:\[[^\t\n\f\r ]+\])+:";

/// What a container is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Router,
    Controller,
    App,
    Other,
}

impl Kind {
    /// A short label for counters.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Router => "router",
            Kind::Controller => "controller",
            Kind::App => "app",
            Kind::Other => "other",
        }
    }
}

/// Which of a container's records go to the `logs` topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToLogs {
    Never,
    Every,
    /// Only records the Deis logger can file: `INFO|WARN|DEBUG|ERROR [app]: message`.
    ControllerLines,
}

/// A container's classification, and what its `logs` records say about it.
#[derive(Debug, Clone)]
pub struct Classification {
    pub kind: Kind,
    pub to_logs: ToLogs,
    /// The definition whose points the container's lines become (`deis-router` for the router).
    pub parser: Option<Arc<Definition>>,
    /// `kubernetes.container_name`: the file name's, or the pod's whole one when a file name
    /// cut at 255 bytes lost part of it.
    pub container_name: String,
    /// `kubernetes.labels`.
    pub labels: Vec<(String, String)>,
    /// `kubernetes.pod_id`: the API's uid, else the `/var/log/pods` path's, else empty.
    pub pod_id: String,
    /// The app rule went by namespace: the pod's metadata was not known.
    pub by_namespace: bool,
    controller_line: Regex,
}

impl Classification {
    /// Whether a record with this text (without its final `\n`) goes to the `logs` topic.
    pub fn ships(&self, text: &[u8]) -> bool {
        match self.to_logs {
            ToLogs::Never => false,
            ToLogs::Every => true,
            ToLogs::ControllerLines => self.controller_line.is_match(text),
        }
    }

    /// `labels.app`.
    pub fn app(&self) -> Option<&str> {
        self.labels.iter().find(|(k, _)| k == "app").map(|(_, v)| v.as_str())
    }
}

/// The rules, with the definitions in force.
#[derive(Debug, Clone)]
pub struct Classifier {
    registry: Registry,
    drop_other: bool,
    controller_line: Regex,
}

impl Classifier {
    pub fn new(registry: Registry, drop_other: bool) -> Self {
        // The pattern is a constant, checked by the tests.
        let controller_line = Regex::new(CONTROLLER_LINE).unwrap_or_else(|e| unreachable!("{e}"));
        Self { registry, drop_other, controller_line }
    }

    /// Classifies a container; `meta` is its pod's metadata when known (`None`: no API, or
    /// not known in time, which makes the app rule go by namespace).
    pub fn classify(&self, c: &ContainerRef, meta: Option<&PodMeta>) -> Classification {
        // A cut file name's container name is completed from the pod's status when it can be.
        let container_name = match meta {
            Some(m) if c.cut => m.container(&c.container, &c.container_id).map_or(&c.container, |(n, _)| n),
            _ => &c.container,
        };
        let router = container_name.contains(ROUTER_CONTAINER);
        let controller = container_name.contains(CONTROLLER_CONTAINER);
        let app_by_labels = meta.map(|m| {
            m.label("heritage") == Some("deis")
                && m.label("app").is_some_and(|a| !a.is_empty())
                && c.namespace != "deis"
        });
        let app_by_namespace = !PLATFORM_NAMESPACES.contains(&c.namespace.as_str());
        let (kind, to_logs) = if router {
            (Kind::Router, if app_by_labels == Some(true) { ToLogs::Every } else { ToLogs::Never })
        } else if controller {
            (Kind::Controller, ToLogs::ControllerLines)
        } else if app_by_labels.unwrap_or(app_by_namespace) {
            (Kind::App, ToLogs::Every)
        } else {
            (Kind::Other, if self.drop_other { ToLogs::Never } else { ToLogs::Every })
        };
        let by_namespace = meta.is_none() && kind == Kind::App;
        let labels = match meta {
            Some(m) => m.labels.clone(),
            None if by_namespace => vec![("app".to_owned(), c.namespace.clone())],
            None => Vec::new(),
        };
        let pod_id = meta.map(|m| m.uid.clone()).or_else(|| c.pod_uid.clone()).unwrap_or_default();
        let parser = if router {
            self.registry.get(DEIS_ROUTER).cloned()
        } else {
            self.registry.for_container(container_name).cloned()
        };
        Classification {
            kind,
            to_logs,
            parser,
            container_name: container_name.clone(),
            labels,
            pod_id,
            by_namespace,
            controller_line: self.controller_line.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(ns: &str, pod: &str, container: &str) -> ContainerRef {
        ContainerRef {
            pod: pod.into(),
            namespace: ns.into(),
            container: container.into(),
            container_id: "6a90".into(),
            pod_uid: None,
            cut: false,
        }
    }

    fn meta(labels: &[(&str, &str)]) -> PodMeta {
        PodMeta {
            uid: "34ebc234-2423-11e6-94aa-42010a800021".into(),
            labels: labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            containers: Vec::new(),
        }
    }

    const DEIS_APP: &[(&str, &str)] =
        &[("app", "foo"), ("heritage", "deis"), ("type", "web"), ("version", "v2")];

    /// (container, its pod's metadata, kind, to_logs, `labels.app`).
    type Case<'m> = (ContainerRef, Option<&'m PodMeta>, Kind, ToLogs, Option<&'static str>);

    /// The old plugin's rules, case by case.
    #[test]
    fn the_old_plugins_rules() {
        let classifier = Classifier::new(Registry::builtin().unwrap(), true);
        let router_meta = meta(&[("app", "deis-router"), ("heritage", "deis")]);
        let deis_ns_app = meta(&[("app", "deis-builder"), ("heritage", "deis")]);
        let not_deis = meta(&[("app", "foo"), ("heritage", "helm")]);
        let no_app = meta(&[("heritage", "deis")]);
        let empty_app = meta(&[("app", ""), ("heritage", "deis")]);
        let app_meta = meta(DEIS_APP);
        let no_labels = meta(&[]);
        let cases: Vec<Case<'_>> = vec![
            // Labels known.
            (c("foo", "foo-v2-web-2ggow", "foo-web"), Some(&app_meta), Kind::App, ToLogs::Every, Some("foo")),
            (
                c("deis", "deis-builder-1", "deis-builder"),
                Some(&deis_ns_app),
                Kind::Other,
                ToLogs::Never,
                Some("deis-builder"),
            ),
            (c("foo", "p", "c"), Some(&not_deis), Kind::Other, ToLogs::Never, Some("foo")),
            (c("foo", "p", "c"), Some(&no_app), Kind::Other, ToLogs::Never, None),
            (c("foo", "p", "c"), Some(&empty_app), Kind::Other, ToLogs::Never, Some("")),
            (c("foo", "p", "c"), Some(&no_labels), Kind::Other, ToLogs::Never, None),
            (
                c("deis", "deis-router-1", "deis-router"),
                Some(&router_meta),
                Kind::Router,
                ToLogs::Never,
                Some("deis-router"),
            ),
            (
                c("deis", "deis-controller-1", "deis-controller"),
                Some(&no_labels),
                Kind::Controller,
                ToLogs::ControllerLines,
                None,
            ),
            // A router container inside a Deis app's pod: both rules hold, as they did.
            (c("foo", "foo-web-1", "deis-router"), Some(&app_meta), Kind::Router, ToLogs::Every, Some("foo")),
            // Labels not known: by namespace.
            (c("foo", "foo-v2-web-2ggow", "foo-web"), None, Kind::App, ToLogs::Every, Some("foo")),
            (c("my-app", "p", "c"), None, Kind::App, ToLogs::Every, Some("my-app")),
            (c("deis", "deis-builder-1", "deis-builder"), None, Kind::Other, ToLogs::Never, None),
            (c("kube-system", "kube-dns-1", "kubedns"), None, Kind::Other, ToLogs::Never, None),
            // Router and controller by name alone, in any namespace.
            (c("deis", "deis-router-1", "deis-router"), None, Kind::Router, ToLogs::Never, None),
            (c("ingress", "r-1", "my-deis-router-2"), None, Kind::Router, ToLogs::Never, None),
            (
                c("deis", "deis-controller-1", "deis-controller"),
                None,
                Kind::Controller,
                ToLogs::ControllerLines,
                None,
            ),
            (c("foo", "x", "deis-controller"), None, Kind::Controller, ToLogs::ControllerLines, None),
        ];
        for (container, m, kind, to_logs, app) in cases {
            let got = classifier.classify(&container, m);
            assert_eq!((got.kind, got.to_logs, got.app()), (kind, to_logs, app), "{container:?} {m:?}");
            assert_eq!(got.by_namespace, m.is_none() && kind == Kind::App);
            assert_eq!(got.pod_id, m.map_or("", |m| m.uid.as_str()));
            assert_eq!(got.container_name, container.container);
            let is_router = got.parser.as_ref().map(|d| d.name.as_str()) == Some(DEIS_ROUTER);
            assert_eq!(is_router, kind == Kind::Router, "{container:?}");
        }
        // All labels are carried, de-dotted as given, for the JSON.
        let got = classifier.classify(&c("foo", "foo-v2-web-2ggow", "foo-web"), Some(&app_meta));
        assert_eq!(got.labels, app_meta.labels);
        assert_eq!(
            classifier.classify(&c("foo", "p", "c"), None).labels,
            [("app".to_owned(), "foo".to_owned())]
        );
    }

    #[test]
    fn other_records_can_be_kept() {
        let keep = Classifier::new(Registry::builtin().unwrap(), false);
        let got = keep.classify(&c("kube-system", "kube-dns-1", "kubedns"), None);
        assert_eq!((got.kind, got.to_logs), (Kind::Other, ToLogs::Every));
        assert!(got.ships(b"anything"));
        // The router's records still do not go to `logs` (its lines are points).
        let got = keep.classify(&c("deis", "deis-router-1", "deis-router"), None);
        assert_eq!(got.to_logs, ToLogs::Never);
    }

    #[test]
    fn controller_records_ship_only_when_the_logger_can_file_them() {
        let classifier = Classifier::new(Registry::builtin().unwrap(), true);
        let got = classifier.classify(&c("deis", "deis-controller-1", "deis-controller"), None);
        // Worked out against Go's RE2 semantics of the logger's pattern.
        for (line, ships) in [
            (&b"INFO [foo]: scaled web to 2"[..], true),
            (b"ERROR [foo]: build failed", true),
            (b"WARN\t[foo-bar_1]:", true),
            (b"DEBUG [foo][bar]: two groups", true),
            (b"INFO  [foo]: two spaces", true),
            (b"INFO [f\xffo]: invalid UTF-8 is one rune to Go", true),
            (b"INFO [foo]:\nmerged trace line", true),
            (b"INFO [foo] no colon", false),
            (b"INFO [] : empty app", false),
            (b"INFO [foo bar]: space in brackets", false),
            (b"INFO\x0b[foo]: vertical tab is not Go's \\s", false),
            (b"[foo]: no level", false),
            (b"info [foo]: lower case", false),
            (b" INFO [foo]: leading space", false),
            (b"INFOS [foo]: x", false),
            (b"10.0.0.1 - - [21/Nov/2026] \"GET / HTTP/1.1\" 200", false),
            (b"", false),
        ] {
            assert_eq!(got.ships(line), ships, "{}", String::from_utf8_lossy(line));
        }
        let app = classifier.classify(&c("foo", "p", "c"), None);
        assert!(app.ships(b"plain line") && app.ships(b""));
    }

    #[test]
    fn custom_definitions_apply_to_their_containers() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("my-nginx.toml"),
            r#"name = "my-nginx"
[applies_to]
containers = ["^nginx$"]
[line]
regex = '^(?P<time>\S+) (?P<status>\d+)$'
time = { capture = "time", format = "rfc3339" }
[[points]]
measurement = "my_nginx"
fields = [{ key = "requests", value = "1", as = "int" }]
"#,
        )
        .unwrap();
        let classifier = Classifier::new(Registry::load(Some(dir.path())).unwrap(), true);
        let got = classifier.classify(&c("foo", "foo-web-1", "nginx"), None);
        assert_eq!((got.kind, got.to_logs), (Kind::App, ToLogs::Every), "an app's container, and parsed");
        assert_eq!(got.parser.map(|d| d.name.clone()), Some("my-nginx".to_owned()));
        let got = classifier.classify(&c("kube-system", "ingress-1", "nginx"), None);
        assert_eq!((got.kind, got.to_logs), (Kind::Other, ToLogs::Never));
        assert_eq!(got.parser.map(|d| d.name.clone()), Some("my-nginx".to_owned()), "points, not logs");
        assert!(classifier.classify(&c("foo", "p", "nginx-2"), None).parser.is_none());
    }

    #[test]
    fn a_cut_container_name_is_completed_from_the_pod() {
        let classifier = Classifier::new(Registry::builtin().unwrap(), true);
        let mut cut = c("deis", "deis-router-1930478716-iy5ff", "deis-ro");
        cut.cut = true;
        cut.container_id = String::new();
        let mut m = meta(&[("app", "deis-router"), ("heritage", "deis")]);
        m.containers = vec![("deis-router".into(), "6a9069435788".into())];
        let got = classifier.classify(&cut, Some(&m));
        assert_eq!((got.kind, got.container_name.as_str()), (Kind::Router, "deis-router"));
        // Without the pod, the cut name is all there is.
        let got = classifier.classify(&cut, None);
        assert_eq!((got.kind, got.container_name.as_str()), (Kind::Other, "deis-ro"));
        // The uid of a /var/log/pods path stands in for the API's.
        let mut from_pods = c("foo", "p", "web");
        from_pods.pod_uid = Some("u-1".into());
        assert_eq!(classifier.classify(&from_pods, None).pod_id, "u-1");
    }
}
