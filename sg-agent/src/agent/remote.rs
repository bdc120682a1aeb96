//! What a description from etcd may do on this host. Whoever can write the
//! etcd key writes every host's policy, so each host limits what a remote
//! description may touch: by default network namespaces only, never an
//! interface of the host's own namespace (a description attaching to the
//! NIC that carries etcd with `egress = []` would lock the host out across
//! restarts) unless `--allow-interface` names it; `--allow-netns` narrows
//! the namespaces, and a namespace *path* (`netns_path`) is allowed only by
//! a pattern that is itself a path (`/proc/*` would reach any process's
//! namespace, the host's own included: `/proc/self/ns/net`); a namespace
//! that is the host's own (the agent's, or PID 1's) by any name or path
//! counts as the host's own; and a description that would stop enforcing more than a
//! share of the instances enforced now (moved to a namespace that does not
//! exist, or left out) is refused unless `push --allow-detach` confirmed
//! that very description. A rules file on the host is trusted as root's:
//! none of this applies to it.

use crate::config::{Instance, Link, Vpc};

/// The limits `run --etcd` puts on a remote description.
#[derive(Clone, Debug)]
pub struct RemoteLimits {
    /// Interfaces of the agent's own namespace a description may name
    /// (shell patterns); none by default.
    pub allow_interface: Vec<String>,
    /// Namespaces a description may name (shell patterns); all by default.
    pub allow_netns: Vec<String>,
    /// The most instances, in percent of those enforced, one description
    /// may stop enforcing without a confirmation.
    pub max_detach_percent: u8,
}

impl Default for RemoteLimits {
    fn default() -> Self {
        Self {
            allow_interface: Vec::new(),
            allow_netns: vec!["*".into()],
            max_detach_percent: 50,
        }
    }
}

/// Whether `name` matches the shell pattern `pattern` (`fnmatch(3)`).
pub fn matches(pattern: &str, name: &str) -> bool {
    let (Ok(p), Ok(n)) = (
        std::ffi::CString::new(pattern),
        std::ffi::CString::new(name),
    ) else {
        return false;
    };
    // SAFETY: two NUL-terminated strings.
    unsafe { libc::fnmatch(p.as_ptr(), n.as_ptr(), 0) == 0 }
}

impl RemoteLimits {
    /// Every instance this host would enforce is somewhere the limits
    /// allow; else what is not, one line each.
    pub fn check_places(&self, vpc: &Vpc) -> Result<(), String> {
        let refused: Vec<String> = vpc
            .instances
            .iter()
            .filter(|i| i.enforced_here())
            .filter_map(|i| self.refusal(i))
            .collect();
        if refused.is_empty() {
            Ok(())
        } else {
            Err(refused.join("\n"))
        }
    }

    fn refusal(&self, i: &Instance) -> Option<String> {
        let link = i.link.as_ref()?;
        let own_namespace = i.netns.as_deref().is_some_and(is_host_namespace);
        match (&i.netns, link) {
            (Some(ns), _) if !self.netns_allowed(ns) => {
                let path = if ns.starts_with('/') {
                    "; a namespace path is allowed only by a pattern that is a path, e.g. \
                     --allow-netns '/var/run/docker/netns/*'"
                } else {
                    ""
                };
                Some(format!(
                    "instance {}: netns {ns:?} is not allowed to descriptions from etcd on this \
                     host (--allow-netns {}){path}",
                    i.name,
                    self.allow_netns.join(",")
                ))
            }
            // In an allowed namespace that is not the host's own; or
            // libvirt's own taps: the interface is the domain's, found in
            // libvirt's state, never one the description names.
            (Some(_), _) if !own_namespace => None,
            (_, Link::Libvirt { .. }) => None,
            (_, Link::Instance(ifname) | Link::Host(ifname)) => {
                if self.allow_interface.iter().any(|p| matches(p, ifname)) {
                    None
                } else {
                    Some(format!(
                        "instance {}: {} {ifname:?} is an interface of this host's own \
                         namespace, which descriptions from etcd may not touch unless \
                         `run --allow-interface PATTERN` allows it",
                        i.name,
                        link.key()
                    ))
                }
            }
        }
    }

    /// Whether a description may name namespace `ns`: a name by any
    /// pattern; a path only by a pattern that is a path.
    fn netns_allowed(&self, ns: &str) -> bool {
        let path = ns.starts_with('/');
        self.allow_netns
            .iter()
            .any(|p| (!path || p.starts_with('/')) && matches(p, ns))
    }

    /// Refuses stopping the enforcement of more than the allowed share of
    /// `enforced` instances at once: `gone` are those the new description
    /// would no longer enforce. One instance of a few may always go.
    pub fn check_detach(&self, enforced: usize, gone: &[String]) -> Result<(), String> {
        let allowed = (enforced * usize::from(self.max_detach_percent))
            .div_ceil(100)
            .max(1);
        if gone.len() <= allowed {
            return Ok(());
        }
        Err(format!(
            "it would stop enforcing {} of the {enforced} instances enforced here ({}), more \
             than {}% at once: if that is meant, push it again with `sg-agent push --allow-detach`",
            gone.len(),
            gone.join(", "),
            self.max_detach_percent
        ))
    }
}

/// Whether namespace `ns` (a name under /run/netns, or a path) is the
/// host's own: the agent's, or PID 1's. Told by the namespace's identity
/// (device and inode), whatever names it. One that cannot be looked at now
/// (not there yet) is not: it is looked at again when the instance is
/// attached there.
pub fn is_host_namespace(ns: &str) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let path = if ns.starts_with('/') {
        std::path::PathBuf::from(ns)
    } else {
        std::path::Path::new("/run/netns").join(ns)
    };
    let id = |p: &std::path::Path| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    let Some(target) = id(&path) else {
        return false;
    };
    ["/proc/self/ns/net", "/proc/1/ns/net"]
        .iter()
        .any(|own| id(std::path::Path::new(own)) == Some(target))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vpc(instances: &str) -> Vpc {
        let text = format!("[[security_group]]\nname = \"web\"\n\n{instances}");
        crate::config::from_str("vpc.toml".as_ref(), &text).expect("valid")
    }

    #[test]
    fn the_hosts_own_interfaces_are_refused_unless_allowed() {
        let own = vpc(
            "[[instance]]\nname = \"host\"\ninterface = \"eth0\"\naddresses = [\"10.0.0.1\"]\n\
             security_groups = [\"web\"]\n",
        );
        let limits = RemoteLimits::default();
        let err = limits.check_places(&own).unwrap_err();
        assert!(err.contains("instance host: interface \"eth0\""), "{err}");
        let allowed = RemoteLimits {
            allow_interface: vec!["eth*".into()],
            ..RemoteLimits::default()
        };
        assert!(allowed.check_places(&own).is_ok());

        let tap = vpc(
            "[[instance]]\nname = \"vm\"\nhost_interface = \"tap0\"\naddresses = [\"10.0.0.2\"]\n\
             security_groups = [\"web\"]\n",
        );
        assert!(
            limits.check_places(&tap).is_err(),
            "a host-side interface of the root namespace too"
        );
        let ns = vpc(
            "[[instance]]\nname = \"app\"\nnetns = \"sg-app\"\ninterface = \"eth0\"\n\
             addresses = [\"10.0.0.3\"]\nsecurity_groups = [\"web\"]\n",
        );
        assert!(limits.check_places(&ns).is_ok());
        let narrow = RemoteLimits {
            allow_netns: vec!["lab-*".into()],
            ..RemoteLimits::default()
        };
        assert!(
            narrow
                .check_places(&ns)
                .unwrap_err()
                .contains("netns \"sg-app\"")
        );
    }

    #[test]
    fn a_namespace_path_reaches_only_what_a_path_pattern_allows() {
        // The agent's own namespace by two of its names (PID 1's is
        // compared too where it can be looked at: not in every container).
        let by_pid = format!("/proc/{}/ns/net", std::process::id());
        for path in ["/proc/self/ns/net", by_pid.as_str()] {
            let own = vpc(&format!(
                "[[instance]]\nname = \"host\"\nnetns_path = \"{path}\"\ninterface = \"eth0\"\n\
                 addresses = [\"10.0.0.1\"]\nsecurity_groups = [\"web\"]\n"
            ));
            let err = RemoteLimits::default().check_places(&own).unwrap_err();
            assert!(
                err.contains("a namespace path is allowed only by a pattern that is a path"),
                "{path}: {err}"
            );
            let paths = RemoteLimits {
                allow_netns: vec!["/proc/*".into()],
                ..RemoteLimits::default()
            };
            let err = paths.check_places(&own).unwrap_err();
            assert!(
                err.contains("is an interface of this host's own namespace"),
                "{path}, the host's own by another name: {err}"
            );
            let interface = RemoteLimits {
                allow_interface: vec!["eth*".into()],
                ..paths
            };
            assert!(interface.check_places(&own).is_ok(), "{path}");
        }
    }

    #[test]
    fn more_than_the_share_at_once_is_refused() {
        let limits = RemoteLimits::default();
        let names = |n: usize| (0..n).map(|i| format!("i{i}")).collect::<Vec<_>>();
        assert!(
            limits.check_detach(1, &names(1)).is_ok(),
            "one of one may go"
        );
        assert!(limits.check_detach(4, &names(2)).is_ok());
        assert!(limits.check_detach(4, &names(3)).is_err());
        assert!(limits.check_detach(250, &names(125)).is_ok());
        assert!(limits.check_detach(250, &names(126)).is_err());
    }
}
