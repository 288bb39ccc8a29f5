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
//!
//! `--container ID` goes the other way: [`cgroup_of`] finds the container's
//! cgroup folder by the same names, for the kernel to select its threads by
//! cgroup id as `--cgroup` does.

use crate::error::UsageError;
use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

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

/// Fewest hex digits of a container id `--container` takes (`docker ps`
/// shows 12).
pub const MIN_ID_PREFIX: usize = 12;

/// Most cgroup folders looked through for a container (a host with
/// thousands of containers has a few times as many).
const MAX_CGROUPS_SEEN: usize = 200_000;

/// The cgroup (v2) folder of the container whose id is or starts with `id`
/// (at least [`MIN_ID_PREFIX`] hex digits), under this host's cgroup v2 root
/// (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on a hybrid host); why
/// not, in words, when there is none or more than one.
pub fn cgroup_of(id: &str) -> Result<PathBuf, String> {
    let root = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .iter()
        .map(Path::new)
        .find(|r| r.join("cgroup.controllers").exists())
        .ok_or("this host has no cgroup v2 hierarchy")?;
    find_under(root, id)
}

/// [`cgroup_of`] under `root`: the topmost folders whose own name is a
/// container's scope (or id) with an id that starts with `id`. Folders are
/// walked breadth first, links never followed, at most
/// `MAX_CGROUPS_SEEN` of them.
pub fn find_under(root: &Path, id: &str) -> Result<PathBuf, String> {
    if id.len() < MIN_ID_PREFIX || id.len() > 64 || !is_hex(id) {
        return Err(format!(
            "not a container id: give at least {MIN_ID_PREFIX} of its lower-case hex digits, as `docker ps` or `crictl ps` shows them"
        ));
    }
    let mut found = Vec::new();
    let mut queue = std::collections::VecDeque::from([root.to_path_buf()]);
    let mut seen = 0;
    while let Some(dir) = queue.pop_front() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            // A cgroup folder is a folder; `file_type` does not follow links.
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            seen += 1;
            if seen > MAX_CGROUPS_SEEN {
                return Err(format!(
                    "not found in the first {MAX_CGROUPS_SEEN} cgroups of {}",
                    root.display()
                ));
            }
            let name = entry.file_name();
            let name = name.to_string_lossy();
            match container_of(&name) {
                Some(c) if c.starts_with(id) => found.push(entry.path()),
                _ => queue.push_back(entry.path()),
            }
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(format!(
            "no container with this id has a cgroup under {} (is it running on this host?)",
            root.display()
        )),
        n => Err(format!(
            "{n} containers' ids start with it: give more of its digits"
        )),
    }
}

fn is_hex(s: &str) -> bool {
    s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn is_container_id(s: &str) -> bool {
    s.len() == 64 && is_hex(s)
}

/// A UUID in its 8-4-4-4-12 form, lower-case hex.
fn is_uid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
        && groups
            .iter()
            .all(|g| g.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

/// The id of the cgroup (v2) at `path`: its folder's inode number, which is
/// what `bpf_get_current_cgroup_id` returns for a thread in it.
pub fn cgroup_id(path: &std::path::Path) -> Result<u64, UsageError> {
    use std::os::unix::fs::MetadataExt as _;
    let bad = |why: String| UsageError::Cgroup {
        path: path.to_path_buf(),
        why,
    };
    let md = std::fs::metadata(path).map_err(|e| bad(e.to_string()))?;
    if !md.is_dir() || !path.join("cgroup.procs").exists() {
        return Err(bad("not a cgroup folder (it has no cgroup.procs)".into()));
    }
    // cgroup v1 folders have cgroup.procs too; v2 ones have cgroup.controllers.
    if !path.join("cgroup.controllers").exists() {
        return Err(bad("a cgroup v1 folder; crossprof needs cgroup v2".into()));
    }
    Ok(md.ino())
}

/// The cgroup ids of the containers `ids` (`--container`), each found by
/// [`cgroup_of`]; an error names the container and why.
pub fn container_cgroups(ids: &[String]) -> impl Iterator<Item = Result<u64, UsageError>> + '_ {
    ids.iter().map(|id| {
        let path = cgroup_of(id).map_err(|why| UsageError::Container {
            id: id.clone(),
            why,
        })?;
        cgroup_id(&path)
    })
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
    fn a_container_s_cgroup_is_found_by_a_prefix_of_its_id() {
        let root = std::env::temp_dir().join(format!("crossprof-cgroups-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let other = format!("{}0", &ID[..63]);
        let scope = root.join(format!("system.slice/docker-{ID}.scope"));
        std::fs::create_dir_all(scope.join("init")).unwrap();
        std::fs::create_dir_all(root.join(format!("kubepods/besteffort/podx/{other}"))).unwrap();
        std::fs::create_dir_all(root.join("user.slice/user-1000.slice")).unwrap();
        // The scope itself, not the cgroups under it; by the whole id, as
        // the two ids share their first 63 digits.
        assert_eq!(find_under(&root, ID).unwrap(), scope);
        let both = find_under(&root, &ID[..12]).unwrap_err();
        assert!(both.contains("2 containers"), "{both}");
        std::fs::remove_dir_all(root.join("kubepods")).unwrap();
        assert_eq!(find_under(&root, &ID[..12]).unwrap(), scope);
        std::fs::create_dir_all(root.join(format!("kubepods/besteffort/podx/{other}"))).unwrap();
        assert!(
            find_under(&root, "0123456789ab")
                .unwrap_err()
                .contains("no container")
        );
        for bad in ["4f5e3c2b1a0", "4F5E3C2B1A09", "docker-4f5e3c2b1a09", ""] {
            assert!(
                find_under(&root, bad)
                    .unwrap_err()
                    .contains("not a container id"),
                "{bad}"
            );
        }
        // A link is not followed (a cgroup tree has none; a planted one
        // would lead anywhere).
        std::os::unix::fs::symlink(&scope, root.join(format!("docker-{other}.scope"))).unwrap();
        assert!(find_under(&root, &other[..]).is_ok_and(|p| p.ends_with(&other)));
        let _ = std::fs::remove_dir_all(&root);
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
