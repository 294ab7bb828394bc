//! The host side of a silo's root file system: the cache dir of its image and the host paths of
//! its bind mounts. They are resolved before anything is created for the silo, so an image or
//! bind id the host does not have fails the start cleanly.

use std::path::PathBuf;

use colex_proto::SiloSpec;

use super::binds::{self, BindMount};
use super::spec::SiloPlan;
use super::{Inner, RuntimeError};

/// The host side of a silo's root file system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiloSources {
    /// Overlayfs lower dir: the cache dir of the silo's image.
    pub lower_dir: PathBuf,
    pub binds: Vec<BindMount>,
}

/// Finds the image of `plan` and the bind sources of `spec` on this host. The first silo of a
/// tarball image whose tarball changed waits for it to be unpacked.
pub async fn resolve(
    inner: &Inner,
    silo_id: &str,
    spec: &SiloSpec,
    plan: &SiloPlan,
) -> Result<SiloSources, RuntimeError> {
    let bind_error = |source| RuntimeError::Bind {
        silo_id: silo_id.to_string(),
        source,
    };
    let binds = binds::plan_binds(&inner.cfg.binds, &spec.binds).map_err(bind_error)?;

    let images = inner.images.clone();
    let image = plan.image.clone();
    let checked_binds = binds.clone();
    let (lower_dir, sources_checked) = tokio::task::spawn_blocking(move || {
        (
            images.lower_dir(&image),
            binds::check_sources(&checked_binds),
        )
    })
    .await?;
    sources_checked.map_err(bind_error)?;
    Ok(SiloSources {
        lower_dir: lower_dir?,
        binds,
    })
}
