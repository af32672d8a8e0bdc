//! Which container a log file belongs to, from its path. Pure.
//!
//! kubelet names the files the agent tails `/var/log/containers/<pod>_<namespace>_<container>-<id>.log`,
//! symlinks into `/var/log/pods/<namespace>_<pod>_<uid>/<container>/<n>.log` (and, under Docker,
//! on into `/var/lib/docker/containers/<id>/<id>-json.log`). The first name is cut: kubelet's
//! `logSymlink` keeps at most 251 bytes of `<pod>_<namespace>_<container>-<id>` and appends
//! `.log`, so a 255-byte name may have lost the end of its id, or of its container name, or
//! more. It is therefore parsed from the left, where nothing is lost:
//!
//! - pod names (DNS subdomains: `a-z`, `0-9`, `-`, `.`) and namespaces (DNS labels) have no
//!   `_`, so the first two `_` end them;
//! - container names are DNS labels and may hold `-`, so the container/id split is found from
//!   the id's side: a whole name ends in `-` + 64 hex digits; a cut one ends in `-` + at most
//!   64 hex digits (perhaps none), or inside the container name.
//!
//! A cut name is ambiguous where the container name's last `-` segment is itself hex (`db`,
//! `cafe`): `foo-db` cut could be container `foo` with id `db`. [`ContainerRef::cut`] says so;
//! the `/var/log/pods` target ([`from_paths`]) has the whole container name and is preferred.

use std::path::Path;

/// kubelet's limit on a log symlink's name (ext4's `NAME_MAX`), `.log` included.
pub const MAX_FILE_NAME_BYTES: usize = 255;
/// A container id as Docker and containerd write it: 64 lowercase hex digits.
pub const CONTAINER_ID_HEX_DIGITS: usize = 64;

/// The container a log file belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerRef {
    pub pod: String,
    pub namespace: String,
    /// Empty only when a cut name lost all of it.
    pub container: String,
    /// The runtime's container id: 64 hex digits, fewer (or none) when the name was cut, none
    /// from the `/var/log/pods` layout (unless [`from_paths`] found it elsewhere).
    pub container_id: String,
    /// The pod's uid, which only the `/var/log/pods` layout carries.
    pub pod_uid: Option<String>,
    /// The name was cut at [`MAX_FILE_NAME_BYTES`]: `container` may be incomplete as well as
    /// `container_id`.
    pub cut: bool,
}

/// Parses any of the layouts: a `/var/log/containers` name, else a `/var/log/pods` path.
/// `None` for anything else (not a container log).
pub fn parse_log_path(path: &Path) -> Option<ContainerRef> {
    let name = path.file_name()?.to_str()?;
    parse_containers_name(name).or_else(|| parse_pods_path(path))
}

/// Parses a `/var/log/containers` file name, `<pod>_<namespace>_<container>-<id>.log`.
pub fn parse_containers_name(name: &str) -> Option<ContainerRef> {
    let stem = name.strip_suffix(".log")?;
    let (pod, rest) = stem.split_once('_')?;
    let (namespace, rest) = rest.split_once('_')?;
    if !is_subdomain(pod) || !is_label(namespace) {
        return None;
    }
    let cut = name.len() >= MAX_FILE_NAME_BYTES;
    let (container, id) = if cut {
        split_cut(rest)?
    } else {
        let (container, id) = rest.rsplit_once('-')?;
        if id.len() != CONTAINER_ID_HEX_DIGITS || !is_hex(id) || !is_label(container) {
            return None;
        }
        (container, id)
    };
    Some(ContainerRef {
        pod: pod.to_owned(),
        namespace: namespace.to_owned(),
        container: container.to_owned(),
        container_id: id.to_owned(),
        pod_uid: None,
        cut,
    })
}

/// `<container>-<id>` of a cut name: the id is what follows the last `-` when that is hex and
/// no longer than an id; otherwise the cut fell inside the container name (or right after it,
/// leaving its `-`), and the id is lost.
fn split_cut(rest: &str) -> Option<(&str, &str)> {
    if rest.is_empty() {
        return Some(("", ""));
    }
    if let Some((container, id)) = rest.rsplit_once('-') {
        if id.len() <= CONTAINER_ID_HEX_DIGITS && is_hex(id) && is_label(container) {
            return Some((container, id));
        }
    }
    // Cut inside the container name: what is left of it is a label's prefix.
    let container = rest.trim_end_matches('-');
    is_label_prefix(container).then_some((container, ""))
}

/// Parses a `/var/log/pods/<namespace>_<pod>_<uid>/<container>/<n>.log` path (a rotated
/// `<n>.log.<suffix>`, gzipped or not, too). Only the last three components are read, so a
/// host mount prefix (`/host/var/log/pods/…`) does not matter.
pub fn parse_pods_path(path: &Path) -> Option<ContainerRef> {
    let mut parts = path.iter().rev().map(|p| p.to_str());
    let file = parts.next()??;
    let container = parts.next()??;
    let pod_dir = parts.next()??;
    let restarts = match file.split_once(".log") {
        Some((n, rest)) if rest.is_empty() || rest.starts_with('.') => n,
        _ => return None,
    };
    if restarts.is_empty() || !restarts.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (namespace, rest) = pod_dir.split_once('_')?;
    let (pod, uid) = rest.split_once('_')?;
    let uid_ok = !uid.is_empty() && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    if !is_label(namespace) || !is_subdomain(pod) || !uid_ok || !is_label(container) {
        return None;
    }
    Some(ContainerRef {
        pod: pod.to_owned(),
        namespace: namespace.to_owned(),
        container: container.to_owned(),
        container_id: String::new(),
        pod_uid: Some(uid.to_owned()),
        cut: false,
    })
}

/// The container id of Docker's own file, `/var/lib/docker/containers/<id>/<id>-json.log`.
pub fn docker_container_id(path: &Path) -> Option<&str> {
    let name = path.file_name()?.to_str()?;
    let dir = path.parent()?.file_name()?.to_str()?;
    let id = name.strip_suffix("-json.log")?;
    (id == dir && id.len() == CONTAINER_ID_HEX_DIGITS && is_hex(id)).then_some(id)
}

/// The container of a file known by several paths: the name the agent found it by and each
/// hop of its symlink chain, in any order. Names from the `/var/log/pods` layout win over a
/// cut `/var/log/containers` name (they are whole); the id comes from a whole name or from
/// Docker's own path. `None` when no path is a container log.
pub fn from_paths<'p>(paths: impl IntoIterator<Item = &'p Path>) -> Option<ContainerRef> {
    let mut containers: Option<ContainerRef> = None;
    let mut pods: Option<ContainerRef> = None;
    let mut docker_id: Option<&str> = None;
    for path in paths {
        if let Some(id) = docker_container_id(path) {
            docker_id = Some(id);
        } else if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
            if let Some(r) = parse_containers_name(name) {
                containers.get_or_insert(r);
            } else if let Some(r) = parse_pods_path(path) {
                pods.get_or_insert(r);
            }
        }
    }
    let mut found = match (containers, pods) {
        (Some(c), Some(p)) if c.cut => {
            // The cut name's split was a guess; with the whole container name known, what
            // follows it (and its `-`) is the id.
            let rest = match c.container_id.as_str() {
                "" => c.container,
                id => format!("{}-{id}", c.container),
            };
            let id = rest.strip_prefix(p.container.as_str()).and_then(|s| s.strip_prefix('-')).unwrap_or("");
            ContainerRef { container_id: id.to_owned(), ..p }
        }
        (Some(c), Some(p)) => ContainerRef { pod_uid: p.pod_uid, ..c },
        (Some(r), None) | (None, Some(r)) => r,
        (None, None) => return None,
    };
    if let Some(id) = docker_id {
        if found.container_id.len() < CONTAINER_ID_HEX_DIGITS && id.starts_with(&found.container_id) {
            found.container_id = id.to_owned();
        }
    }
    Some(found)
}

fn is_hex(s: &str) -> bool {
    s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A DNS label (namespace and container names): `a-z`, `0-9` and `-`, alphanumeric at both
/// ends. Length is not checked, and a cut container name (a prefix) is checked with
/// [`is_label_prefix`].
fn is_label(s: &str) -> bool {
    is_label_prefix(s) && !s.ends_with('-')
}

fn is_label_prefix(s: &str) -> bool {
    s.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && s.bytes().all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-'))
}

/// A DNS subdomain (pod names): dot-separated DNS labels.
fn is_subdomain(s: &str) -> bool {
    s.split('.').all(is_label)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "6a9069435788a05531ee2b9afbcdc73a22018af595f3203cb67e06f50103bf5f";

    /// The name kubelet's `logSymlink` gives: `<pod>_<ns>_<container>-<id>`, cut to 251 bytes,
    /// then `.log`. Written here from kubelet's code, not from the parser.
    fn kubelet_name(pod: &str, ns: &str, container: &str, id: &str) -> String {
        let mut name = format!("{pod}_{ns}_{container}-{id}");
        name.truncate(MAX_FILE_NAME_BYTES - ".log".len());
        name.push_str(".log");
        name
    }

    fn r(pod: &str, ns: &str, container: &str, id: &str, cut: bool) -> ContainerRef {
        ContainerRef {
            pod: pod.into(),
            namespace: ns.into(),
            container: container.into(),
            container_id: id.into(),
            pod_uid: None,
            cut,
        }
    }

    #[test]
    fn whole_names() {
        // The Deis logger's example record (design.md): pod foo-v2-web-2ggow, container foo-web.
        let name = format!("foo-v2-web-2ggow_foo_foo-web-{ID}.log");
        assert_eq!(parse_containers_name(&name), Some(r("foo-v2-web-2ggow", "foo", "foo-web", ID, false)));
        let name = format!("deis-router-1930478716-iy5ff_deis_deis-router-{ID}.log");
        assert_eq!(
            parse_containers_name(&name),
            Some(r("deis-router-1930478716-iy5ff", "deis", "deis-router", ID, false))
        );
        // Dashes in the container name and dots in the pod name (a DNS subdomain).
        let name = format!("web.v2-abc_my-app_foo-web-v2-{ID}.log");
        assert_eq!(parse_containers_name(&name), Some(r("web.v2-abc", "my-app", "foo-web-v2", ID, false)));
        // A container whose name ends in a hex-looking segment, uncut: the id is the last 64.
        let name = format!("p_ns_foo-cafe-{ID}.log");
        assert_eq!(parse_containers_name(&name), Some(r("p", "ns", "foo-cafe", ID, false)));
        // Through a path.
        let path = format!("/var/log/containers/foo-v2-web-2ggow_foo_foo-web-{ID}.log");
        assert_eq!(parse_log_path(Path::new(&path)).map(|r| r.container), Some("foo-web".into()));
    }

    #[test]
    fn names_cut_at_255_bytes() {
        // Pod names may be 253 bytes; namespaces and container names 63.
        let ns = "n".repeat(40);
        // Cut inside the id: 251 - (pod + 1 + 40 + 1 + "foo-web-v2".len() + 1) id digits remain.
        let pod = "p".repeat(150);
        let name = kubelet_name(&pod, &ns, "foo-web-v2", ID);
        assert_eq!(name.len(), 255);
        let kept = 251 - (150 + 1 + 40 + 1 + 10 + 1);
        assert_eq!(kept, 48);
        assert_eq!(parse_containers_name(&name), Some(r(&pod, &ns, "foo-web-v2", &ID[..48], true)));
        // Cut right after the `-`: no id at all.
        let pod = "p".repeat(251 - (1 + 40 + 1 + 10 + 1));
        let name = kubelet_name(&pod, &ns, "foo-web-v2", ID);
        assert!(name.ends_with("foo-web-v2-.log"), "{name}");
        assert_eq!(parse_containers_name(&name), Some(r(&pod, &ns, "foo-web-v2", "", true)));
        // Cut just before the `-`: the container is whole, the id gone.
        let pod = "p".repeat(251 - (1 + 40 + 1 + 10));
        let name = kubelet_name(&pod, &ns, "foo-web-v2", ID);
        assert!(name.ends_with("_foo-web-v2.log"), "{name}");
        assert_eq!(parse_containers_name(&name), Some(r(&pod, &ns, "foo-web-v2", "", true)));
        // Cut inside the container name, after a `-` segment that is not hex: what is left.
        let pod = "p".repeat(251 - (1 + 40 + 1 + 9));
        let name = kubelet_name(&pod, &ns, "foo-web-v2", ID);
        assert!(name.ends_with("_foo-web-v.log"), "{name}");
        assert_eq!(parse_containers_name(&name), Some(r(&pod, &ns, "foo-web-v", "", true)));
        // Cut at the end of the namespace's `_`: pod and namespace survive, nothing else.
        let pod = "p".repeat(251 - (1 + 40 + 1));
        let name = kubelet_name(&pod, &ns, "foo-web-v2", ID);
        assert_eq!(parse_containers_name(&name), Some(r(&pod, &ns, "", "", true)));
        // Cut inside the namespace: it cannot be known, so the name says nothing usable.
        let pod = "p".repeat(251 - (1 + 20));
        let name = kubelet_name(&pod, &ns, "foo-web-v2", ID);
        assert_eq!(name.len(), 255);
        assert_eq!(parse_containers_name(&name), None);
    }

    #[test]
    fn a_cut_hex_looking_segment_is_taken_as_the_id() {
        // The documented ambiguity: `foo-db` cut before its id reads as container `foo`, id
        // `db`. `cut` says the split is a guess.
        let pod = "p".repeat(251 - (1 + 2 + 1 + 6));
        let name = kubelet_name(&pod, "ns", "foo-db", ID);
        assert!(name.ends_with("_foo-db.log"), "{name}");
        assert_eq!(parse_containers_name(&name), Some(r(&pod, "ns", "foo", "db", true)));
    }

    #[test]
    fn garbage_is_not_a_container() {
        for name in [
            "",
            ".log",
            "foo.log",
            "kube-proxy.log",
            "a_b.log",
            &format!("_ns_c-{ID}.log"),
            &format!("pod__c-{ID}.log"),
            &format!("pod_ns_-{ID}.log"),
            &format!("pod_ns_c{ID}.log"),
            &format!("pod_ns_c-{ID}.log.gz"),
            &format!("pod_ns_c-{ID}"),
            &format!("pod_ns_c-{}.log", &ID[..63]),
            &format!("pod_ns_c-{}x.log", &ID[..63]),
            &format!("pod_ns_c-{}.log", ID.to_uppercase()),
            &format!("Pod_ns_c-{ID}.log"),
            &format!("pod_n.s_c-{ID}.log"),
            &format!("-pod_ns_c-{ID}.log"),
            &format!("pod-_ns_c-{ID}.log"),
            &format!("..pod_ns_c-{ID}.log"),
            &format!("pod_ns-_c-{ID}.log"),
            &format!("pod_ns_-c-{ID}.log"),
            &format!("pod_ns_c_d-{ID}.log"),
            &format!("pod name_ns_c-{ID}.log"),
            &format!("pod_ns_c\u{e9}-{ID}.log"),
        ] {
            assert_eq!(parse_containers_name(name), None, "{name:?}");
        }
    }

    #[test]
    fn pods_layout() {
        let uid = "34ebc234-2423-11e6-94aa-42010a800021";
        let path = format!("/var/log/pods/foo_foo-v2-web-2ggow_{uid}/foo-web/0.log");
        let expected = ContainerRef {
            pod: "foo-v2-web-2ggow".into(),
            namespace: "foo".into(),
            container: "foo-web".into(),
            container_id: String::new(),
            pod_uid: Some(uid.into()),
            cut: false,
        };
        assert_eq!(parse_pods_path(Path::new(&path)), Some(expected.clone()));
        assert_eq!(parse_log_path(Path::new(&path)), Some(expected.clone()));
        // Restarts and kubelet's rotations (renamed, then gzipped) belong to the same container.
        for file in ["12.log", "0.log.20240101-120000", "0.log.20240101-120000.gz"] {
            let path = format!("/host/var/log/pods/foo_foo-v2-web-2ggow_{uid}/foo-web/{file}");
            assert_eq!(parse_pods_path(Path::new(&path)), Some(expected.clone()), "{file}");
        }
        for bad in [
            format!("/var/log/pods/foo_foo-v2-web-2ggow_{uid}/foo-web/x.log"),
            format!("/var/log/pods/foo_foo-v2-web-2ggow_{uid}/foo-web/0.logs"),
            format!("/var/log/pods/foo_foo-v2-web-2ggow_{uid}/foo-web/.log"),
            "/var/log/pods/foo_foo-v2-web-2ggow/foo-web/0.log".into(),
            format!("/var/log/pods/foo-foo-v2-web-2ggow-{uid}/foo-web/0.log"),
            format!("/var/log/pods/foo_foo-v2-web-2ggow_{uid}/foo_web/0.log"),
            "/var/log/pods/foo_foo-v2-web-2ggow_not-a-uid!/foo-web/0.log".into(),
            // The pre-1.14 layout has neither namespace nor pod name.
            format!("/var/log/pods/{uid}/foo-web_0.log"),
            "0.log".into(),
            "/0.log".into(),
        ] {
            assert_eq!(parse_pods_path(Path::new(&bad)), None, "{bad}");
        }
    }

    #[test]
    fn docker_paths() {
        let path = format!("/var/lib/docker/containers/{ID}/{ID}-json.log");
        assert_eq!(docker_container_id(Path::new(&path)), Some(ID));
        let other = format!("/var/lib/docker/containers/{ID}/{}-json.log", &ID[..63]);
        assert_eq!(docker_container_id(Path::new(&other)), None);
        assert_eq!(docker_container_id(Path::new("/x-json.log")), None);
    }

    #[test]
    fn symlink_chains_fill_in_what_a_cut_name_lost() {
        let uid = "34ebc234-2423-11e6-94aa-42010a800021";
        let pod = "p".repeat(251 - (1 + 2 + 1 + 6));
        let link = format!("/var/log/containers/{}", kubelet_name(&pod, "ns", "foo-db", ID));
        let target = format!("/var/log/pods/ns_{pod}_{uid}/foo-db/0.log");
        let docker = format!("/var/lib/docker/containers/{ID}/{ID}-json.log");
        let found = from_paths([Path::new(&link), Path::new(&target), Path::new(&docker)]).unwrap();
        assert_eq!(
            found,
            ContainerRef {
                pod: pod.clone(),
                namespace: "ns".into(),
                container: "foo-db".into(),
                container_id: ID.into(),
                pod_uid: Some(uid.into()),
                cut: false,
            }
        );
        // CRI: no Docker path; the cut id stays as far as it goes.
        let pod = "p".repeat(200);
        let link = format!("/var/log/containers/{}", kubelet_name(&pod, "ns", "web", ID));
        let target = format!("/var/log/pods/ns_{pod}_{uid}/web/0.log");
        let found = from_paths([Path::new(&target), Path::new(&link)]).unwrap();
        assert_eq!(found.container, "web");
        assert_eq!(found.container_id, &ID[..251 - (200 + 1 + 2 + 1 + 3 + 1)]);
        assert!(!found.cut);
        // A whole name alone is enough, and gains the uid from its target.
        let link = format!("/var/log/containers/web-1_ns_web-{ID}.log");
        let target = format!("/var/log/pods/ns_web-1_{uid}/web/3.log");
        let found = from_paths([Path::new(&link), Path::new(&target)]).unwrap();
        assert_eq!((found.container_id.as_str(), found.pod_uid.as_deref()), (ID, Some(uid)));
        // A Docker id that does not extend the name's is not taken.
        let link = format!("/var/log/containers/web-1_ns_web-{ID}.log");
        let other = "f".repeat(64);
        let docker = format!("/var/lib/docker/containers/{other}/{other}-json.log");
        assert_eq!(from_paths([Path::new(&link), Path::new(&docker)]).unwrap().container_id, ID);
        assert_eq!(from_paths([Path::new(&docker)]), None);
        assert_eq!(from_paths([Path::new("/var/log/syslog")]), None);
    }
}
