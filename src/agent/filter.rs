//! Include and exclude filters by namespace, pod and container name.
//!
//! Patterns are globs ([`crate::glob`]) matched against the whole name: `*` any run of
//! characters, `?` one character, `[…]` a set, everything else literal (`kube-*`,
//! `deis-router`, `*-canary`). Globs rather
//! than regexes because names are short and operators write them that way (Fluent Bit's and
//! Vector's name filters are globs); a whole-name match so that `web` does not also catch
//! `foo-web-v2`.
//!
//! A container is read when, for each of namespace, pod and container, its name matches an
//! include pattern (or there is none), and none of the three names matches an exclude pattern:
//! exclusion wins.

use crate::glob::{any_matches, Glob};
use crate::kube::ContainerRef;

/// A list of globs; matching none when empty.
#[derive(Debug, Clone, Default)]
pub struct Globs(Vec<Glob>);

impl Globs {
    /// Compiles globs; an empty pattern is refused (it would match nothing, silently).
    pub fn new<S: AsRef<str>>(globs: &[S]) -> Result<Self, String> {
        globs
            .iter()
            .map(|g| Glob::new(g.as_ref()).map_err(|e| e.to_string()))
            .collect::<Result<_, _>>()
            .map(Self)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `name` matches one of the globs (`false` for an empty list).
    pub fn matches(&self, name: &str) -> bool {
        any_matches(&self.0, name)
    }
}

/// The include and exclude lists.
#[derive(Debug, Clone, Default)]
pub struct Filters {
    pub include_namespaces: Globs,
    pub exclude_namespaces: Globs,
    pub include_pods: Globs,
    pub exclude_pods: Globs,
    pub include_containers: Globs,
    pub exclude_containers: Globs,
}

impl Filters {
    /// Whether the container's files are read.
    pub fn admits(&self, c: &ContainerRef) -> bool {
        let included = |globs: &Globs, name: &str| globs.is_empty() || globs.matches(name);
        included(&self.include_namespaces, &c.namespace)
            && included(&self.include_pods, &c.pod)
            && included(&self.include_containers, &c.container)
            && !self.exclude_namespaces.matches(&c.namespace)
            && !self.exclude_pods.matches(&c.pod)
            && !self.exclude_containers.matches(&c.container)
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
            container_id: String::new(),
            pod_uid: None,
            cut: false,
        }
    }

    #[test]
    fn globs_match_whole_names() {
        let g = Globs::new(&["kube-*", "deis-router", "*-canary", "v?"]).unwrap();
        for yes in ["kube-system", "kube-", "deis-router", "web-canary", "v2"] {
            assert!(g.matches(yes), "{yes}");
        }
        for no in ["deis-router-2", "my-deis-router", "kube", "canary", "v", "v10", "web-canary-2"] {
            assert!(!g.matches(no), "{no}");
        }
        // Regex metacharacters are literal.
        let g = Globs::new(&["a.b", "(x)+"]).unwrap();
        assert!(g.matches("a.b") && g.matches("(x)+"));
        assert!(!g.matches("aXb") && !g.matches("xx"));
        assert!(!Globs::new::<&str>(&[]).unwrap().matches(""));
        assert!(Globs::new(&[""]).is_err());
    }

    #[test]
    fn include_then_exclude() {
        let none = Filters::default();
        assert!(none.admits(&c("foo", "foo-web-1", "foo-web")), "no lists: everything");
        let f = Filters {
            include_namespaces: Globs::new(&["foo", "bar-*"]).unwrap(),
            exclude_pods: Globs::new(&["*-canary-*"]).unwrap(),
            exclude_containers: Globs::new(&["istio-proxy"]).unwrap(),
            ..Filters::default()
        };
        let cases = [
            (c("foo", "foo-web-1", "foo-web"), true),
            (c("bar-staging", "x", "y"), true),
            (c("baz", "foo-web-1", "foo-web"), false), // not included
            (c("foo", "foo-canary-1", "foo-web"), false), // excluded pod
            (c("foo", "foo-web-1", "istio-proxy"), false), // excluded container
        ];
        for (container, admitted) in cases {
            assert_eq!(f.admits(&container), admitted, "{container:?}");
        }
        // Exclusion wins over inclusion of the same name.
        let f = Filters {
            include_containers: Globs::new(&["*"]).unwrap(),
            exclude_namespaces: Globs::new(&["kube-system"]).unwrap(),
            ..Filters::default()
        };
        assert!(!f.admits(&c("kube-system", "p", "c")));
        assert!(f.admits(&c("default", "p", "c")));
    }
}
