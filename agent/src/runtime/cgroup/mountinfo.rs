//! Cgroup mounts listed in `/proc/<pid>/mountinfo`.
//!
//! Line format (proc(5)): `id parent major:minor root mount-point options [optional...] -
//! fstype source super-options`. A cgroup v1 mount names its controllers in the super options
//! (`rw,cpu,cpuacct`). A cgroup2 mount has none there.

use std::path::PathBuf;

/// File system type of a cgroup v1 hierarchy.
const CGROUP_V1_FSTYPE: &str = "cgroup";
/// File system type of the cgroup v2 hierarchy.
const CGROUP_V2_FSTYPE: &str = "cgroup2";

/// One cgroup mount of a mountinfo text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupMount {
    pub mount_point: PathBuf,
    /// `None` for cgroup2. For v1, the controllers named in the super options.
    pub v1_controllers: Option<Vec<String>>,
}

/// Returns the cgroup v1 and v2 mounts of a mountinfo text, in the order they appear.
pub fn cgroup_mounts(mountinfo: &str) -> Vec<CgroupMount> {
    mountinfo.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<CgroupMount> {
    let (before, after) = line.split_once(" - ")?;
    let mut after_fields = after.split_whitespace();
    let fstype = after_fields.next()?;
    let mount_point = PathBuf::from(unescape_mountinfo(before.split_whitespace().nth(4)?));
    match fstype {
        CGROUP_V2_FSTYPE => Some(CgroupMount {
            mount_point,
            v1_controllers: None,
        }),
        CGROUP_V1_FSTYPE => {
            let super_options = after_fields.nth(1).unwrap_or_default();
            // Named hierarchies (`name=systemd`) and flags such as `rw` are no controllers, but
            // they cannot match a controller name either, so they are kept as they are.
            let controllers = super_options.split(',').map(str::to_string).collect();
            Some(CgroupMount {
                mount_point,
                v1_controllers: Some(controllers),
            })
        }
        _ => None,
    }
}

/// Decodes the octal escapes (`\040` for a space) the kernel writes in mountinfo paths.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escape = bytes
            .get(i + 1..i + 4)
            .filter(|digits| bytes[i] == b'\\' && digits.iter().all(|d| (b'0'..=b'7').contains(d)));
        match escape {
            Some(digits) => {
                let value = digits
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                out.push(u8::try_from(value).unwrap_or(b'?'));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find_cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
        cgroup_mounts(mountinfo)
            .into_iter()
            .find(|mount| mount.v1_controllers.is_none())
            .map(|mount| mount.mount_point)
    }

    const HYBRID_MOUNTINFO: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:9 - cgroup2 cgroup2 rw
";

    #[test]
    fn finds_hybrid_cgroup2_mount() {
        assert_eq!(
            find_cgroup2_mount(HYBRID_MOUNTINFO),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
    }

    #[test]
    fn lists_v1_controllers() {
        let mounts = cgroup_mounts(HYBRID_MOUNTINFO);
        assert_eq!(mounts.len(), 4);
        assert_eq!(mounts[0].mount_point, PathBuf::from("/sys/fs/cgroup/cpu"));
        assert_eq!(
            mounts[0].v1_controllers.as_deref(),
            Some(&["rw".to_string(), "cpu".to_string()][..])
        );
        assert_eq!(mounts[3].v1_controllers, None);
    }

    #[test]
    fn finds_pure_v2_mount() {
        let text =
            "25 20 0:22 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            find_cgroup2_mount(text),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
    }

    #[test]
    fn no_cgroup2_mount() {
        let text = "32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n";
        assert_eq!(find_cgroup2_mount(text), None);
    }

    #[test]
    fn unescapes_mount_point() {
        let text = "41 31 0:38 / /mnt/my\\040cgroup rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            find_cgroup2_mount(text),
            Some(PathBuf::from("/mnt/my cgroup"))
        );
    }
}
