//! Location of each controller colex uses: a cgroup v1 hierarchy of its own, the cgroup v2
//! hierarchy, or none.
//!
//! A controller bound to a v1 hierarchy is not available in v2 (the cgroup2 root of a hybrid
//! host lists none of them in `cgroup.controllers`), so a v1 mount that names it wins. Hybrid hosts mount cgroup2 at `/sys/fs/cgroup/unified` with no
//! controllers and every controller as v1. Pure v2 hosts have one cgroup2 mount whose root
//! `cgroup.controllers` lists them.

use std::io;
use std::path::{Path, PathBuf};

use super::mountinfo::{cgroup_mounts, CgroupMount};
use super::CgroupError;

/// File of a v2 cgroup that lists the controllers its children may enable.
pub const V2_CONTROLLERS_FILE: &str = "cgroup.controllers";
/// Mount table of this process's mount namespace.
const MOUNTINFO_PATH: &str = "/proc/self/mountinfo";

/// A cgroup controller colex uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Controller {
    /// CPU bandwidth: `cpu_percent`.
    Cpu,
    /// CPU time accounting. Only cgroup v1 has it as a controller. V2 reports CPU time in every
    /// cgroup's `cpu.stat`.
    Cpuacct,
    /// Memory limit, usage and OOM kills.
    Memory,
    /// Process count limit.
    Pids,
}

impl Controller {
    /// Every controller colex uses.
    pub const ALL: [Controller; 4] = [
        Controller::Cpu,
        Controller::Cpuacct,
        Controller::Memory,
        Controller::Pids,
    ];

    /// Returns the kernel's name of the controller.
    pub fn name(self) -> &'static str {
        match self {
            Controller::Cpu => "cpu",
            Controller::Cpuacct => "cpuacct",
            Controller::Memory => "memory",
            Controller::Pids => "pids",
        }
    }

    /// Reports whether the controller exists in cgroup v2.
    fn exists_in_v2(self) -> bool {
        self != Controller::Cpuacct
    }
}

/// Version of a cgroup hierarchy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// One mounted hierarchy that colex uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    pub version: Version,
    pub mount_point: PathBuf,
    /// The controllers of [`Controller::ALL`] that colex uses through this hierarchy.
    pub controllers: Vec<Controller>,
}

impl Hierarchy {
    /// Reports whether colex uses `controller` through this hierarchy.
    pub fn has(&self, controller: Controller) -> bool {
        self.controllers.contains(&controller)
    }
}

/// The hierarchies of one host, detected once at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The cgroup2 hierarchy first when there is one, then the v1 hierarchies in mount order.
    /// Every entry is either the cgroup2 hierarchy or a v1 one with at least one controller.
    hierarchies: Vec<Hierarchy>,
}

/// Order in which a hierarchy is picked to track a silo's processes on a host without
/// cgroup2: any v1 hierarchy lists every process of its cgroups, and `pids` is the cheapest.
const V1_MEMBERSHIP_PREFERENCE: [Controller; 4] = [
    Controller::Pids,
    Controller::Memory,
    Controller::Cpu,
    Controller::Cpuacct,
];

impl Layout {
    /// Detects the layout of this process's mount namespace.
    pub fn detect() -> Result<Layout, CgroupError> {
        let mountinfo =
            std::fs::read_to_string(MOUNTINFO_PATH).map_err(|source| CgroupError::Read {
                path: PathBuf::from(MOUNTINFO_PATH),
                source,
            })?;
        Layout::from_mounts(&mountinfo, |path| std::fs::read_to_string(path))
    }

    /// Builds the layout from a mountinfo text. `read_file` reads the cgroup2 root's
    /// `cgroup.controllers`, so a test can point the mounts at a temporary tree.
    pub fn from_mounts(
        mountinfo: &str,
        read_file: impl FnOnce(&Path) -> io::Result<String>,
    ) -> Result<Layout, CgroupError> {
        let mounts = cgroup_mounts(mountinfo);
        let mut hierarchies: Vec<Hierarchy> = Vec::new();

        // Only the first cgroup2 mount counts: later ones are bind mounts of the same tree.
        let v2_mount = mounts
            .iter()
            .find(|mount| mount.v1_controllers.is_none())
            .map(|mount| mount.mount_point.clone());
        let v2_available = match &v2_mount {
            Some(mount_point) => {
                let path = mount_point.join(V2_CONTROLLERS_FILE);
                let text = read_file(&path).map_err(|source| CgroupError::Read { path, source })?;
                text.split_whitespace().map(str::to_string).collect()
            }
            None => Vec::new(),
        };

        for controller in Controller::ALL {
            if let Some(mount) = first_v1_mount_of(&mounts, controller) {
                match hierarchies
                    .iter_mut()
                    .find(|hierarchy| hierarchy.mount_point == mount.mount_point)
                {
                    Some(hierarchy) => hierarchy.controllers.push(controller),
                    None => hierarchies.push(Hierarchy {
                        version: Version::V1,
                        mount_point: mount.mount_point.clone(),
                        controllers: vec![controller],
                    }),
                }
            }
        }

        if let Some(mount_point) = v2_mount {
            let controllers = Controller::ALL
                .into_iter()
                .filter(|controller| {
                    controller.exists_in_v2()
                        && !hierarchies
                            .iter()
                            .any(|hierarchy| hierarchy.has(*controller))
                        && v2_available.iter().any(|name| name == controller.name())
                })
                .collect();
            hierarchies.insert(
                0,
                Hierarchy {
                    version: Version::V2,
                    mount_point,
                    controllers,
                },
            );
        }

        if hierarchies.is_empty() {
            return Err(CgroupError::NoHierarchy);
        }
        Ok(Layout { hierarchies })
    }

    /// Returns every hierarchy colex uses.
    pub fn hierarchies(&self) -> &[Hierarchy] {
        &self.hierarchies
    }

    /// Returns the hierarchy that provides `controller`, if any does.
    pub fn hierarchy_of(&self, controller: Controller) -> Option<&Hierarchy> {
        self.hierarchies
            .iter()
            .find(|hierarchy| hierarchy.has(controller))
    }

    /// Returns the index of the hierarchy that tracks a silo's processes: cgroup2 when it is
    /// mounted (it has `cgroup.kill` and `cgroup.events`), else a v1 hierarchy.
    pub fn membership_index(&self) -> usize {
        if self.hierarchies[0].version == Version::V2 {
            return 0;
        }
        V1_MEMBERSHIP_PREFERENCE
            .iter()
            .find_map(|controller| {
                self.hierarchies
                    .iter()
                    .position(|hierarchy| hierarchy.has(*controller))
            })
            .unwrap_or(0)
    }
}

fn first_v1_mount_of(mounts: &[CgroupMount], controller: Controller) -> Option<&CgroupMount> {
    mounts.iter().find(|mount| {
        mount
            .v1_controllers
            .as_ref()
            .is_some_and(|names| names.iter().any(|name| name == controller.name()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The layout of a Debian-style hybrid host: cgroup2 without controllers, every controller
    /// in v1, cpu and cpuacct mounted apart.
    const HYBRID_MOUNTINFO: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    fn no_controllers(_: &Path) -> io::Result<String> {
        Ok(String::new())
    }

    #[test]
    fn hybrid_uses_v2_for_membership_only() {
        let layout = Layout::from_mounts(HYBRID_MOUNTINFO, no_controllers).expect("layout");
        let hierarchies = layout.hierarchies();
        assert_eq!(hierarchies.len(), 5);
        assert_eq!(hierarchies[0].version, Version::V2);
        assert_eq!(
            hierarchies[0].mount_point,
            PathBuf::from("/sys/fs/cgroup/unified")
        );
        assert!(hierarchies[0].controllers.is_empty());
        assert_eq!(layout.membership_index(), 0);
        let memory = layout.hierarchy_of(Controller::Memory).expect("memory");
        assert_eq!(memory.version, Version::V1);
        assert_eq!(memory.mount_point, PathBuf::from("/sys/fs/cgroup/memory"));
        let cpuacct = layout.hierarchy_of(Controller::Cpuacct).expect("cpuacct");
        assert_eq!(cpuacct.mount_point, PathBuf::from("/sys/fs/cgroup/cpuacct"));
    }

    #[test]
    fn comounted_controllers_share_a_hierarchy() {
        let text = "\
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
";
        let layout = Layout::from_mounts(text, no_controllers).expect("layout");
        assert_eq!(layout.hierarchies().len(), 2);
        assert_eq!(
            layout.hierarchies()[0].controllers,
            [Controller::Cpu, Controller::Cpuacct]
        );
        // Without pids and cgroup2, the memory hierarchy tracks the processes.
        assert_eq!(layout.membership_index(), 1);
        assert_eq!(layout.hierarchy_of(Controller::Pids), None);
    }

    #[test]
    fn pure_v2_takes_controllers_from_root() {
        let text = "25 20 0:22 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n";
        let layout = Layout::from_mounts(text, |path| {
            assert_eq!(path, Path::new("/sys/fs/cgroup/cgroup.controllers"));
            Ok("cpuset cpu io memory hugetlb pids rdma misc\n".to_string())
        })
        .expect("layout");
        assert_eq!(layout.hierarchies().len(), 1);
        assert_eq!(
            layout.hierarchies()[0].controllers,
            [Controller::Cpu, Controller::Memory, Controller::Pids]
        );
        assert_eq!(layout.hierarchy_of(Controller::Cpuacct), None);
    }

    #[test]
    fn v1_binding_wins_over_v2() {
        let text = "\
35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
";
        let layout = Layout::from_mounts(text, |_| Ok("memory pids".to_string())).expect("layout");
        assert_eq!(layout.hierarchies()[0].controllers, [Controller::Pids]);
        assert_eq!(
            layout
                .hierarchy_of(Controller::Memory)
                .map(|hierarchy| hierarchy.version),
            Some(Version::V1)
        );
    }

    #[test]
    fn no_cgroup_mount_is_an_error() {
        let text = "31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n";
        assert!(matches!(
            Layout::from_mounts(text, no_controllers),
            Err(CgroupError::NoHierarchy)
        ));
    }
}
