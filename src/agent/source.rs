//! Which container a followed file belongs to: a declared source (a path pattern standing for
//! a namespace, pod and container: `logmill run` over plain files, an operator's own router
//! log), else the file's name, following its symlinks (`/var/log/containers/…` →
//! `/var/log/pods/<ns>_<pod>_<uid>/<container>/0.log` or Docker's
//! `/var/lib/docker/containers/<id>/<id>-json.log`), which say more than a name cut at 255
//! bytes.

use std::path::{Path, PathBuf};

use crate::glob::Glob;
use crate::kube::names::from_paths;
use crate::kube::ContainerRef;

/// Symlinks followed at most, as the kernel's own limit on a path's links.
const MAX_LINKS: usize = 40;

/// A path pattern and the container its files stand for.
#[derive(Debug, Clone)]
pub(crate) struct DeclaredSource {
    pub(crate) path: Glob,
    pub(crate) container: ContainerRef,
}

/// How files are matched to containers.
#[derive(Debug, Clone, Default)]
pub(crate) struct Sources {
    pub(crate) declared: Vec<DeclaredSource>,
}

impl Sources {
    /// The container `path`'s records come from; `None` when neither a declared source nor
    /// the name says.
    pub(crate) fn container_of(&self, path: &Path) -> Option<ContainerRef> {
        if let Some(d) = path.to_str().and_then(|p| self.declared.iter().find(|d| d.path.matches(p))) {
            return Some(d.container.clone());
        }
        from_paths(symlink_chain(path).iter().map(PathBuf::as_path))
    }
}

/// `path`, then every link target it leads through, as written (relative ones resolved
/// against the link's directory).
fn symlink_chain(path: &Path) -> Vec<PathBuf> {
    let mut chain = vec![path.to_path_buf()];
    while chain.len() <= MAX_LINKS {
        let Some(last) = chain.last() else { break };
        let Ok(target) = std::fs::read_link(last) else { break };
        let target = match last.parent() {
            Some(dir) if target.is_relative() => dir.join(target),
            _ => target,
        };
        chain.push(target);
    }
    chain
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_sources_first_then_names_through_symlinks() {
        let dir = tempfile::tempdir().expect("temp dir");
        // kubelet's layout: the name in /var/log/containers is a link to the pods directory.
        let uid = "0f1e2d3c-aaaa-bbbb-cccc-123456789abc";
        let pods = dir.path().join(format!("pods/deis_deis-router-7b9_{uid}/deis-router"));
        std::fs::create_dir_all(&pods).expect("mkdir");
        std::fs::write(pods.join("0.log"), "").expect("write");
        let containers = dir.path().join("containers");
        std::fs::create_dir_all(&containers).expect("mkdir");
        let id = "c".repeat(64);
        let link = containers.join(format!("deis-router-7b9_deis_deis-router-{id}.log"));
        std::os::unix::fs::symlink(pods.join("0.log"), &link).expect("symlink");

        let sources = Sources::default();
        let c = sources.container_of(&link).expect("a container log");
        assert_eq!(
            (c.pod.as_str(), c.namespace.as_str(), c.container.as_str()),
            ("deis-router-7b9", "deis", "deis-router")
        );
        assert_eq!(c.container_id, id);
        assert_eq!(c.pod_uid.as_deref(), Some(uid), "from the pods path the link leads to");
        assert_eq!(sources.container_of(Path::new("/var/log/syslog")), None);

        let declared = ContainerRef {
            pod: "router".into(),
            namespace: "deis".into(),
            container: "deis-router".into(),
            container_id: String::new(),
            pod_uid: None,
            cut: false,
        };
        let sources = Sources {
            declared: vec![DeclaredSource {
                path: Glob::new("*/testdata/*.log").expect("glob"),
                container: declared,
            }],
        };
        let c = sources.container_of(Path::new("/work/testdata/access.log")).expect("declared");
        assert_eq!(c.container, "deis-router");
        // Names still work for what no pattern covers.
        assert_eq!(sources.container_of(&link).map(|c| c.pod), Some("deis-router-7b9".to_owned()));
    }
}
