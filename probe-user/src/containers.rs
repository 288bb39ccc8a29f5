//! Which container a process runs in, from its cgroup (issue #20): the
//! container id that the runtimes put in the cgroup v2 path, and the
//! Kubernetes pod UID of the pod's slice. Both become pprof labels
//! (`container_id`, `pod_uid`) and `summary.json` fields, so that a host's
//! profile can be cut by container as fleets look at it.
//!
//! The shapes read (cgroup v2 unified hierarchy, `0::PATH` in
//! `/proc/PID/cgroup`), as the runtimes name their scopes:
//! - systemd cgroup driver: `docker-<id>.scope` (Docker),
//!   `cri-containerd-<id>.scope` (containerd's CRI), `crio-<id>.scope`
//!   (CRI-O), `libpod-<id>.scope` (Podman); a pod's slice
//!   `kubepods-<qos>-pod<uid>.slice` with the UID's dashes written as `_`;
//! - cgroupfs driver: `/docker/<id>`, `/kubepods/<qos>/pod<uid>/<id>`.
//!
//! `<id>` is 64 lower-case hex digits in each of them.

use std::sync::Arc;

/// A process's container, as its cgroup names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    /// The runtime's container id (64 hex digits).
    pub id: String,
    /// The Kubernetes pod's UID (`1a2b...-...`), when the cgroup is a pod's.
    pub pod_uid: Option<String>,
}

/// The container of process `pid`, if its cgroup is one's.
pub fn of_process(pid: u32) -> Option<Arc<Container>> {
    // The kernel's own file: a line per hierarchy, short.
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let path = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    parse(path).map(Arc::new)
}

/// The container a cgroup v2 path belongs to.
pub fn parse(path: &str) -> Option<Container> {
    let mut id = None;
    let mut pod_uid = None;
    for part in path.split('/') {
        if let Some(uid) = pod_of(part) {
            pod_uid = Some(uid);
        } else if let Some(found) = container_of(part) {
            id = Some(found);
        }
    }
    Some(Container { id: id?, pod_uid })
}

/// The container id a path component names: `PREFIX-<id>.scope` (systemd
/// driver) or `<id>` alone (cgroupfs driver).
fn container_of(part: &str) -> Option<String> {
    let id = match part.strip_suffix(".scope") {
        Some(scope) => ["docker-", "cri-containerd-", "crio-", "libpod-"]
            .iter()
            .find_map(|prefix| scope.strip_prefix(prefix))?,
        None => part,
    };
    is_container_id(id).then(|| id.to_owned())
}

/// The pod UID a path component names: `kubepods-<qos>-pod<uid>.slice`
/// (`_` for `-` in the UID) or `pod<uid>` (cgroupfs driver).
fn pod_of(part: &str) -> Option<String> {
    let name = part.strip_suffix(".slice").unwrap_or(part);
    let at = name.rfind("pod")?;
    if at > 0 && !name[..at].ends_with('-') {
        return None;
    }
    let uid = name[at + 3..].replace('_', "-");
    is_uid(&uid).then_some(uid)
}

fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A UUID in its 8-4-4-4-12 form, lower-case hex.
fn is_uid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
        && groups
            .iter()
            .all(|g| g.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4f5e3c2b1a09876543210fedcba9876543210fedcba9876543210fedcba98765";

    #[test]
    fn each_runtime_s_scope_names_its_container() {
        for path in [
            format!("/system.slice/docker-{ID}.scope"),
            format!("/system.slice/containerd.service/cri-containerd-{ID}.scope"),
            format!("/machine.slice/libpod-{ID}.scope/container"),
            format!("/docker/{ID}"),
        ] {
            let c = parse(&path).unwrap_or_else(|| panic!("{path}"));
            assert_eq!(c.id, ID, "{path}");
            assert_eq!(c.pod_uid, None, "{path}");
        }
    }

    #[test]
    fn a_pod_s_slice_gives_its_uid_with_dashes() {
        let systemd = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1a2b3c4d_5e6f_4a1b_8c2d_0e1f2a3b4c5d.slice/crio-{ID}.scope"
        );
        let c = parse(&systemd).unwrap();
        assert_eq!(c.id, ID);
        assert_eq!(
            c.pod_uid.as_deref(),
            Some("1a2b3c4d-5e6f-4a1b-8c2d-0e1f2a3b4c5d")
        );
        let cgroupfs = format!("/kubepods/besteffort/pod1a2b3c4d-5e6f-4a1b-8c2d-0e1f2a3b4c5d/{ID}");
        assert_eq!(parse(&cgroupfs).unwrap().pod_uid, c.pod_uid);
    }

    #[test]
    fn other_cgroups_are_no_container() {
        for path in [
            "/",
            "/user.slice/user-1000.slice/session-3.scope",
            "/system.slice/docker.service",
            "/system.slice/docker-1234.scope",
            // A pod slice alone (the pod's sandbox, no container id).
            "/kubepods.slice/kubepods-pod1a2b3c4d_5e6f_4a1b_8c2d_0e1f2a3b4c5d.slice",
            "/kubepods.slice/kubepods-besteffort.slice/notapod.slice",
        ] {
            assert_eq!(parse(path), None, "{path}");
        }
        // Upper case is not what any runtime writes.
        assert_eq!(parse(&format!("/docker/{}", ID.to_uppercase())), None);
    }
}
