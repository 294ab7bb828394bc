//! Conversion of a silo that passed every check into its wire form.

use colex_proto::{
    Binary, Bind, FileEntry, Grants, Network, Placement, PlacementStrategy, Resources, RestartMode,
    RestartPolicy, SiloSpec,
};

use super::declared::{DeclaredPlacement, DeclaredResources, DeclaredRestart, DeclaredSilo};
use super::validate::{DEFAULT_IMAGE, IMAGE_SCHEME};

/// Builds the `SiloSpec` of a silo without problems. Values that the checks would have
/// rejected cannot occur here, so the fallbacks (`unwrap_or_default`, saturating conversions)
/// only keep this function total.
pub(super) fn build_spec(silo: DeclaredSilo, files: Vec<FileEntry>) -> SiloSpec {
    let name = silo
        .effective_name()
        .map(|name| name.value)
        .unwrap_or_default();
    let base = silo.base.map_or_else(
        || DEFAULT_IMAGE.to_owned(),
        |base| {
            base.value
                .strip_prefix(IMAGE_SCHEME)
                .unwrap_or(&base.value)
                .to_owned()
        },
    );

    let binary = silo.binary.into_valid().map(|binary| Binary {
        path: binary
            .path
            .into_valid()
            .map(|path| path.value)
            .unwrap_or_default(),
        args: binary.args.into_iter().map(|arg| arg.value).collect(),
        env: binary.env.into_iter().map(|entry| entry.value).collect(),
    });

    // A silo without a network block gets the defaults: no internet access, an empty
    // nameserver list and no extra hosts.
    let network = silo.network.unwrap_or_default();
    let network = Network {
        internet_access: network.internet_access,
        nameservers: network
            .nameservers
            .into_iter()
            .map(|server| server.value)
            .collect(),
        hosts: network
            .hosts
            .into_iter()
            .map(|(hostname, address)| (hostname.value, address.value))
            .collect(),
    };

    let binds = silo
        .binds
        .into_iter()
        .map(|bind| Bind {
            id: bind.id.into_valid().map(|id| id.value).unwrap_or_default(),
            path: bind
                .path
                .into_valid()
                .map(|path| path.value)
                .unwrap_or_default(),
        })
        .collect();

    SiloSpec {
        name,
        class: silo.class.unwrap_or_default(),
        tags: silo.tags,
        base,
        binary,
        files,
        network: Some(network),
        binds,
        grants: silo.grants.map(|grants| Grants {
            query_silos: grants.query_silos,
            raw_sockets: grants.raw_sockets,
        }),
        resources: silo.resources.map(build_resources),
        count: silo
            .count
            .into_valid()
            .map(|count| u32::try_from(count.value).unwrap_or(u32::MAX)),
        placement: silo.placement.map(build_placement),
        restart: silo.restart.map(build_restart),
        // 0 on the wire means the default of 5 s, which the checks keep a written 0 from meaning.
        kill_timeout_ms: silo
            .kill_timeout_ms
            .into_valid()
            .map_or(0, |timeout| timeout.value),
    }
}

fn build_resources(resources: DeclaredResources) -> Resources {
    let memory_from_bytes = resources
        .max_memory_bytes
        .into_valid()
        .map(|bytes| u64::try_from(bytes.value).unwrap_or(u64::MAX));
    let memory_from_size = resources.memory_bytes.into_valid().map(|bytes| bytes.value);
    Resources {
        cpu_percent: resources
            .cpu_percent
            .into_valid()
            .map_or(0, |cpu| u32::try_from(cpu.value).unwrap_or(0)),
        // 0 on the wire means no limit.
        memory_bytes: memory_from_bytes.or(memory_from_size).unwrap_or(0),
    }
}

fn build_placement(placement: DeclaredPlacement) -> Placement {
    let strategy = match placement.strategy.into_valid() {
        Some(strategy) if strategy.value == "binpack" => PlacementStrategy::Binpack,
        _ => PlacementStrategy::Spread,
    };
    Placement {
        hosts: placement.hosts.into_iter().map(|host| host.value).collect(),
        labels: placement
            .labels
            .into_iter()
            .map(|(key, value)| (key.value, value.value))
            .collect(),
        strategy: strategy.into(),
    }
}

fn build_restart(restart: DeclaredRestart) -> RestartPolicy {
    let mode = match restart.policy.into_valid() {
        Some(policy) if policy.value == "on-failure" => RestartMode::OnFailure,
        Some(policy) if policy.value == "always" => RestartMode::Always,
        _ => RestartMode::Never,
    };
    RestartPolicy {
        mode: mode.into(),
        attempts: restart
            .attempts
            .into_valid()
            .map_or(0, |attempts| u32::try_from(attempts.value).unwrap_or(0)),
        delay_ms: restart.delay_ms.into_valid().map_or(0, |delay| delay.value),
    }
}
