//! The cluster's running silo instances as the controller last listed them: the metadata
//! service's source of names, grants and other hosts' counters.

use std::sync::{Arc, RwLock};

use colex_proto as proto;

/// The controller's latest list of running instances, shared by the session, which replaces it,
/// and the metadata service, which reads it. Kept while the controller is unreachable.
pub type SharedDirectory = Arc<RwLock<Directory>>;

/// Running instances ordered by silo name and index, as the controller sends them.
#[derive(Debug, Clone, Default)]
pub struct Directory {
    instances: Vec<proto::SiloName>,
}

impl Directory {
    /// Replaces the instances with the controller's list.
    pub fn set_names(&mut self, names: &proto::Names) {
        self.instances = names.names.clone();
    }

    /// Returns every running instance.
    pub fn instances(&self) -> &[proto::SiloName] {
        &self.instances
    }

    /// Returns the instance with silo id `id`.
    pub fn by_id(&self, id: &str) -> Option<&proto::SiloName> {
        self.instances.iter().find(|instance| instance.id == id)
    }

    /// Returns the running instances of silo `name`, by index.
    pub fn by_name(&self, name: &str) -> Vec<&proto::SiloName> {
        self.instances.iter().filter(|instance| instance.silo == name).collect()
    }

    /// Returns instance `index` of silo `name`.
    pub fn by_name_and_index(&self, name: &str, index: u32) -> Option<&proto::SiloName> {
        self.instances
            .iter()
            .find(|instance| instance.silo == name && instance.index == index)
    }
}

/// Returns a directory shared between the session and the metadata service, empty until the
/// controller's first list arrives.
pub fn shared() -> SharedDirectory {
    Arc::new(RwLock::new(Directory::default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(silo: &str, index: u32, id: &str) -> proto::SiloName {
        proto::SiloName {
            silo: silo.to_owned(),
            index,
            id: id.to_owned(),
            addresses: vec![format!("10.69.1.{}", index + 2)],
            ..Default::default()
        }
    }

    #[test]
    fn lookups_find_instances() {
        let mut directory = Directory::default();
        directory.set_names(&proto::Names {
            names: vec![instance("api", 0, "0000000a"), instance("web", 0, "0000000b"), instance("web", 1, "0000000c")],
        });
        assert_eq!(directory.by_id("0000000c").map(|found| found.index), Some(1));
        assert_eq!(directory.by_name("web").len(), 2);
        assert!(directory.by_name("db").is_empty());
        assert_eq!(directory.by_name_and_index("web", 1).map(|found| found.id.as_str()), Some("0000000c"));
        assert!(directory.by_name_and_index("web", 2).is_none());
    }
}
