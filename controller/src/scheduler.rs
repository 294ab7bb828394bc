//! Placement of silo instances onto hosts: first what `up` must change, then where.
//!
//! [`plan_up`] compares a spec and count with the stored instances of that silo name and lists
//! the instances to create or replace now, those to replace one at a time and those to stop.
//! [`next_rollout_step`] picks the next instance of such a rolling replacement.
//! [`place_instances`] places each new instance in two steps.
//!
//! 1. Feasibility keeps the hosts that may run the silo. Such a host is live (its agent is
//!    connected to the leader) and not draining. It is named in `placement.hosts` when that
//!    list is not empty, carries every `placement.labels` pair, offers the silo's image and bind
//!    ids, and has free CPU and memory for the silo's `resources`.
//! 2. Scoring picks one of them by the silo's `placement.strategy`: `spread` (the default)
//!    takes the host with the fewest instances of the same silo, then the least reserved CPU,
//!    `binpack` the host with the most reserved CPU that still fits.
//!
//! Reservations are the declared `resources` of the placed instances whose desired state is
//! run, every instance counted, so a silo without `resources` reserves nothing and fits on any
//! host that passes the other checks. When no host is feasible, the error names each live host
//! and what it lacks, and the caller stores the instance as pending with that reason.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::rc::Rc;

use colex_proto::{PlacementStrategy, SiloSpec};
use prost::Message;

use crate::id_hash::IdMap;
use crate::applied::AppliedState;
use crate::state::{ClusterState, Desired, HostRecord, SiloRecord};

/// Image of a silo whose spec names none.
pub const DEFAULT_IMAGE: &str = "busybox";
/// Scheme a spec's `base` may carry before the image name.
const IMAGE_SCHEME: &str = "img://";
/// CPU capacity of one host in percent: `cpu_percent` is a share of all of a host's cores, so
/// the silos placed on a host reserve at most this much together.
pub const HOST_CPU_PERCENT: u64 = 100;
const MIB_BYTES: u64 = 1 << 20;
const GIB_BYTES: u64 = 1 << 30;

/// Reason a silo cannot be placed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    #[error(
        "no live host to place silo {silo}; start an agent with `colex-agent --join CONTROLLER_ADDR`"
    )]
    NoLiveHost { silo: String },
    #[error("silo {silo}: {reason}")]
    Infeasible { silo: String, reason: String },
    #[error("silo {silo}: unknown placement.strategy number {value}; use spread or binpack")]
    UnknownStrategy { silo: String, value: i32 },
}

/// Rule that picks one of the feasible hosts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Strategy {
    /// The host with the fewest instances of the silo being placed, then the least reserved
    /// CPU, then the fewest silos, then the first name.
    #[default]
    Spread,
    /// The host with the most reserved CPU that still fits the silo, then the first name.
    Binpack,
}

impl Strategy {
    /// Reads `placement.strategy` of `spec`. A spec without `placement` spreads.
    pub fn of(spec: &SiloSpec) -> Result<Self, PlacementError> {
        let Some(placement) = &spec.placement else {
            return Ok(Strategy::Spread);
        };
        match PlacementStrategy::try_from(placement.strategy) {
            Ok(PlacementStrategy::Spread) => Ok(Strategy::Spread),
            Ok(PlacementStrategy::Binpack) => Ok(Strategy::Binpack),
            Err(_) => Err(PlacementError::UnknownStrategy {
                silo: spec.name.clone(),
                value: placement.strategy,
            }),
        }
    }
}

/// Requirements of a silo on its host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Requirements {
    /// Image name without the `img://` scheme.
    pub image: String,
    pub bind_ids: BTreeSet<String>,
    /// Host names from `placement.hosts`. An empty set allows every host.
    pub hosts: BTreeSet<String>,
    /// Labels from `placement.labels`, every one of which the host must carry.
    pub labels: BTreeMap<String, String>,
    /// CPU share in percent of a whole host, where 0 reserves nothing.
    pub cpu_percent: u64,
    /// Memory in bytes, where 0 reserves nothing.
    pub memory_bytes: u64,
}

impl Requirements {
    /// Reads the requirements of `spec`: its image (`busybox` when `base` is empty), the ids of
    /// its `bind` blocks, its `placement` filters and its `resources`.
    pub fn of(spec: &SiloSpec) -> Self {
        let image = spec.base.strip_prefix(IMAGE_SCHEME).unwrap_or(&spec.base);
        let image = if image.is_empty() {
            DEFAULT_IMAGE
        } else {
            image
        };
        let (hosts, labels) = match &spec.placement {
            Some(placement) => (
                placement.hosts.iter().cloned().collect(),
                placement
                    .labels
                    .iter()
                    .map(|(key, value)| (key.clone(), value.clone()))
                    .collect(),
            ),
            None => Default::default(),
        };
        let reservation = Reservation::of(spec);
        Requirements {
            image: image.to_owned(),
            bind_ids: spec.binds.iter().map(|bind| bind.id.clone()).collect(),
            hosts,
            labels,
            cpu_percent: reservation.cpu_percent,
            memory_bytes: reservation.memory_bytes,
        }
    }

    /// Lists what `host` lacks to run a silo with these requirements, given what the silos
    /// already placed there reserve. An empty list means the host is feasible.
    fn lacks_on(&self, host: &HostRecord, reserved: &Reserved) -> Vec<Lack> {
        let offered = &host.attributes;
        let mut lacks = Vec::new();

        if is_draining(host) {
            lacks.push(Lack::Draining);
        }
        if !self.hosts.is_empty() && !self.hosts.contains(&host.name) {
            lacks.push(Lack::NotListed);
        }
        for (key, value) in &self.labels {
            let carried = offered.labels.get(key);
            if carried != Some(value) {
                lacks.push(Lack::Label {
                    key: key.clone(),
                    value: value.clone(),
                    carried: carried.cloned(),
                });
            }
        }
        if !offered.images.contains(&self.image) {
            lacks.push(Lack::Image {
                offered: offered.images.clone(),
            });
        }
        let missing_bind_ids: Vec<String> = self
            .bind_ids
            .iter()
            .filter(|id| !offered.bind_ids.contains(id))
            .cloned()
            .collect();
        if !missing_bind_ids.is_empty() {
            lacks.push(Lack::BindIds {
                missing: missing_bind_ids,
                offered: offered.bind_ids.clone(),
            });
        }

        let free_cpu_percent = free_cpu_percent(reserved);
        if self.cpu_percent > free_cpu_percent {
            lacks.push(Lack::Cpu {
                free_percent: free_cpu_percent,
                needed_percent: self.cpu_percent,
            });
        }
        let free_memory_bytes = free_memory_bytes(host, reserved);
        if self.memory_bytes > free_memory_bytes {
            lacks.push(Lack::Memory {
                free_bytes: free_memory_bytes,
                needed_bytes: self.memory_bytes,
            });
        }
        lacks
    }

    /// Returns true when `host` has the free CPU and memory for one more instance. These are
    /// the only checks of [`Requirements::lacks_on`] that depend on `reserved`.
    fn fits_capacity(&self, host: &HostRecord, reserved: &Reserved) -> bool {
        self.cpu_percent <= free_cpu_percent(reserved) && self.memory_bytes <= free_memory_bytes(host, reserved)
    }
}

fn free_cpu_percent(reserved: &Reserved) -> u64 {
    HOST_CPU_PERCENT.saturating_sub(reserved.cpu_percent)
}

fn free_memory_bytes(host: &HostRecord, reserved: &Reserved) -> u64 {
    host.memory_bytes.saturating_sub(reserved.memory_bytes)
}

/// Returns whether `host` is draining, so new silos stay off it.
fn is_draining(host: &HostRecord) -> bool {
    host.draining
}

/// CPU and memory one silo reserves on its host, from its `resources`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reservation {
    pub cpu_percent: u64,
    pub memory_bytes: u64,
}

impl Reservation {
    /// Decodes the reservation of a stored record's spec.
    pub fn of_record(record: &SiloRecord) -> Self {
        decoded_reservation(record)
    }

    fn of(spec: &SiloSpec) -> Self {
        spec.resources
            .as_ref()
            .map_or_else(Reservation::default, |resources| Reservation {
                cpu_percent: u64::from(resources.cpu_percent),
                memory_bytes: resources.memory_bytes,
            })
    }
}

/// Sum of the reservations of the silo instances placed on one host.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reserved {
    /// Sum of `resources.cpu_percent`, in percent of the whole host.
    pub cpu_percent: u64,
    /// Sum of `resources.memory_bytes`.
    pub memory_bytes: u64,
    /// Silo instances placed on the host, with or without resources.
    pub silos: usize,
    /// Instances of the silo being placed that the host already runs. [`reserved_by_host`]
    /// leaves it 0, and [`place_instances`] fills it in.
    pub same_silo: usize,
}

/// Sums, per host name, the reservations of the placed silo instances whose desired state is
/// run. The records whose keys are in `replaced` are left out, because the instances being
/// placed take their place.
///
/// This decodes every stored spec, so its cost grows with the number of silos. The applied
/// state keeps the same sums up to date ([`AppliedState::reserved_on`]).
pub fn reserved_by_host(
    state: &ClusterState,
    replaced: &BTreeSet<String>,
) -> BTreeMap<String, Reserved> {
    let mut reserved: BTreeMap<String, Reserved> = BTreeMap::new();
    let running = state.silos.iter().filter(|(key, silo)| {
        silo.desired == Desired::Run && !silo.is_pending() && !replaced.contains(*key)
    });
    for (_, silo) in running {
        let reservation = decoded_reservation(silo);
        let host = reserved.entry(silo.host.clone()).or_default();
        host.cpu_percent += reservation.cpu_percent;
        host.memory_bytes += reservation.memory_bytes;
        host.silos += 1;
    }
    reserved
}

/// One requirement a host does not meet.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Lack {
    Draining,
    /// The host is not named in a non-empty `placement.hosts`.
    NotListed,
    /// The host does not carry label `key=value`. `carried` is the host's own value for `key`.
    Label {
        key: String,
        value: String,
        carried: Option<String>,
    },
    /// The host lacks the image, and `offered` lists the images it has.
    Image {
        offered: Vec<String>,
    },
    /// The host lacks the bind ids `missing`, and `offered` lists the ones it has.
    BindIds {
        missing: Vec<String>,
        offered: Vec<String>,
    },
    Cpu {
        free_percent: u64,
        needed_percent: u64,
    },
    Memory {
        free_bytes: u64,
        needed_bytes: u64,
    },
}

impl Lack {
    /// Describes the lack for a per-host reason, for example "lacks label zone=b (has zone=a)".
    fn describe(&self, requirements: &Requirements) -> String {
        match self {
            Lack::Draining => "draining".to_owned(),
            Lack::NotListed => "is not in placement.hosts".to_owned(),
            Lack::Label {
                key,
                value,
                carried: Some(carried),
            } => format!("lacks label {key}={value} (has {key}={carried})"),
            Lack::Label {
                key,
                value,
                carried: None,
            } => format!("lacks label {key}={value}"),
            Lack::Image { offered } => {
                format!("lacks image {} (has {})", requirements.image, list(offered))
            }
            Lack::BindIds { missing, offered } => format!(
                "lacks {} (offers {})",
                bind_ids_phrase(missing),
                list(offered)
            ),
            Lack::Cpu {
                free_percent,
                needed_percent,
            } => format!("{free_percent}% CPU free, needs {needed_percent}%"),
            Lack::Memory {
                free_bytes,
                needed_bytes,
            } => format!(
                "{} memory free, needs {}",
                format_bytes(*free_bytes),
                format_bytes(*needed_bytes)
            ),
        }
    }

    /// Returns what the user can do about this kind of lack.
    fn remedy(&self) -> &'static str {
        match self {
            Lack::Draining => "undrain a host",
            Lack::NotListed => "name a live host in placement.hosts",
            Lack::Label { .. } => {
                "change placement.labels or start an agent whose config declares those labels"
            }
            Lack::Image { .. } => "declare the image in an agent's config file",
            Lack::BindIds { .. } => "declare the bind ids in an agent's config file",
            Lack::Cpu { .. } | Lack::Memory { .. } => {
                "stop a silo on one of these hosts, lower resources or start another agent"
            }
        }
    }
}

/// One instance to place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceRequest {
    pub index: u32,
    /// Host to keep when it is live and feasible: where the replaced instance runs.
    pub preferred: Option<String>,
}

/// Places the instances `requests` of silo `spec` in order, one result per request. Each
/// placed instance reserves its `resources` on its host and counts as an instance of the same
/// silo there before the next one is placed, so `spread` puts instances on distinct hosts while
/// enough hosts are feasible. The records whose keys are in `replaced` count as removed.
///
/// Fails as a whole only for an unknown `placement.strategy`. An instance that fits nowhere
/// gets its own error, whose text is the pending reason.
pub fn place_instances(
    applied: &AppliedState,
    live_hosts: &BTreeSet<String>,
    spec: &SiloSpec,
    requests: &[InstanceRequest],
    replaced: &BTreeSet<String>,
) -> Result<Vec<Result<String, PlacementError>>, PlacementError> {
    PlacementRound::new(applied, live_hosts, |host| applied.reserved_on(host)).place(spec, requests, replaced)
}

/// Places as [`place_instances`] does in a state without the applied state's sums, such as a
/// copy that a plan changes as it goes. Sums the reservations with one pass over the silos.
pub fn place_instances_in(
    state: &ClusterState,
    live_hosts: &BTreeSet<String>,
    spec: &SiloSpec,
    requests: &[InstanceRequest],
    replaced: &BTreeSet<String>,
) -> Result<Vec<Result<String, PlacementError>>, PlacementError> {
    let sums = reserved_by_host(state, &BTreeSet::new());
    PlacementRound::new(state, live_hosts, |host| sums.get(host).copied().unwrap_or_default())
        .place(spec, requests, replaced)
}

/// Decodes the reservation of a stored record's spec.
fn decoded_reservation(record: &SiloRecord) -> Reservation {
    match SiloSpec::decode(record.spec.as_slice()) {
        Ok(spec) => Reservation::of(&spec),
        Err(error) => {
            // The controller encoded every stored spec itself, so this is a bug. Counting the
            // silo as reserving nothing keeps placement going.
            tracing::warn!(silo = %record.name, id = %record.id, %error, "stored spec failed to decode, so it counts as reserving nothing");
            Reservation::default()
        }
    }
}

/// Returns true when `record` reserves capacity on its host: it is placed and meant to run.
fn reserves_capacity(record: &SiloRecord) -> bool {
    record.desired == Desired::Run && !record.is_pending()
}

/// The live hosts and what is reserved on each, shared by the placements of one batch. Each
/// [`PlacementRound::place`] counts the instances that the earlier calls placed, although they
/// are not in the state yet, so two silos of one batch never get the same capacity.
#[derive(Debug)]
pub struct PlacementRound<'a> {
    state: &'a ClusterState,
    live: Vec<&'a HostRecord>,
    /// Position in `live` by host name.
    positions: IdMap<&'a str, usize>,
    /// Reservations on each host of `live`, at the same position. `same_silo` is 0 between
    /// calls of [`PlacementRound::place`].
    reserved: Vec<Reserved>,
    /// Keys of the records whose capacity a call already freed, so none is freed twice.
    freed: BTreeSet<String>,
    /// Positions of the hosts that pass every check except capacity, by requirements.
    candidates: HashMap<Requirements, Rc<Vec<usize>>>,
}

impl<'a> PlacementRound<'a> {
    /// Takes what is reserved on each of the `live_hosts` that `state` contains from
    /// `reserved_on`, which gives the sum of a host's placed instances.
    pub fn new(state: &'a ClusterState, live_hosts: &BTreeSet<String>, reserved_on: impl Fn(&str) -> Reserved) -> Self {
        let live: Vec<&HostRecord> = live_hosts
            .iter()
            .filter_map(|name| state.hosts.get(name))
            .collect();
        let positions: IdMap<&str, usize> = live
            .iter()
            .enumerate()
            .map(|(position, host)| (host.name.as_str(), position))
            .collect();
        let reserved = live
            .iter()
            .map(|host| Reserved {
                same_silo: 0,
                ..reserved_on(&host.name)
            })
            .collect();
        PlacementRound {
            state,
            live,
            positions,
            reserved,
            freed: BTreeSet::new(),
            candidates: HashMap::new(),
        }
    }

    /// Places the instances `requests` of silo `spec` as [`place_instances`] does, on top of
    /// everything this round placed before.
    pub fn place(
        &mut self,
        spec: &SiloSpec,
        requests: &[InstanceRequest],
        replaced: &BTreeSet<String>,
    ) -> Result<Vec<Result<String, PlacementError>>, PlacementError> {
        let strategy = Strategy::of(spec)?;
        if self.live.is_empty() {
            let no_live_host = PlacementError::NoLiveHost {
                silo: spec.name.clone(),
            };
            return Ok(requests.iter().map(|_| Err(no_live_host.clone())).collect());
        }

        self.free_replaced(replaced);
        let requirements = Requirements::of(spec);
        let reservation = Reservation::of(spec);
        let candidates = self.candidates_for(&requirements);

        // `same_silo` counts this silo's placed instances and is reset before returning.
        let mut counted_positions: Vec<usize> = Vec::new();
        let same_silo = self.state.instances(&spec.name).into_iter().filter(|record| {
            reserves_capacity(record) && !replaced.contains(&record.key())
        });
        for record in same_silo {
            if let Some(&position) = self.positions.get(record.host.as_str()) {
                self.reserved[position].same_silo += 1;
                counted_positions.push(position);
            }
        }

        let mut results = Vec::with_capacity(requests.len());
        for request in requests {
            match self.choose_position(strategy, &requirements, &candidates, request.preferred.as_deref()) {
                Some(position) => {
                    let on_host = &mut self.reserved[position];
                    on_host.cpu_percent += reservation.cpu_percent;
                    on_host.memory_bytes += reservation.memory_bytes;
                    on_host.silos += 1;
                    on_host.same_silo += 1;
                    counted_positions.push(position);
                    results.push(Ok(self.live[position].name.clone()));
                }
                None => results.push(Err(PlacementError::Infeasible {
                    silo: spec.name.clone(),
                    reason: self.describe_infeasible(&requirements),
                })),
            }
        }

        for position in counted_positions {
            self.reserved[position].same_silo = 0;
        }
        Ok(results)
    }

    /// Removes the reservations of the placed records under `replaced` keys, because the
    /// instances being placed take their place.
    fn free_replaced(&mut self, replaced: &BTreeSet<String>) {
        for key in replaced {
            let Some(record) = self.state.silos.get(key) else {
                continue;
            };
            if !reserves_capacity(record) || !self.freed.insert(key.clone()) {
                continue;
            }
            let Some(&position) = self.positions.get(record.host.as_str()) else {
                continue;
            };
            let reservation = decoded_reservation(record);
            let on_host = &mut self.reserved[position];
            on_host.cpu_percent = on_host.cpu_percent.saturating_sub(reservation.cpu_percent);
            on_host.memory_bytes = on_host.memory_bytes.saturating_sub(reservation.memory_bytes);
            on_host.silos = on_host.silos.saturating_sub(1);
        }
    }

    /// Returns the positions of the hosts that meet `requirements` while nothing is reserved
    /// on them. More reservations only add lacks, so no other host can become feasible.
    fn candidates_for(&mut self, requirements: &Requirements) -> Rc<Vec<usize>> {
        if let Some(candidates) = self.candidates.get(requirements) {
            return Rc::clone(candidates);
        }
        let candidates: Vec<usize> = self
            .live
            .iter()
            .enumerate()
            .filter(|(_, host)| requirements.lacks_on(host, &Reserved::default()).is_empty())
            .map(|(position, _)| position)
            .collect();
        let candidates = Rc::new(candidates);
        self.candidates.insert(requirements.clone(), Rc::clone(&candidates));
        candidates
    }

    /// Chooses the position of the host of one instance among `candidates` that still have
    /// room: `preferred` when it is one of them, otherwise the best by `strategy`.
    fn choose_position(
        &self,
        strategy: Strategy,
        requirements: &Requirements,
        candidates: &[usize],
        preferred: Option<&str>,
    ) -> Option<usize> {
        let fits = |position: usize| requirements.fits_capacity(self.live[position], &self.reserved[position]);
        let preferred = preferred
            .and_then(|name| self.positions.get(name).copied())
            .filter(|position| candidates.contains(position) && fits(*position));
        if preferred.is_some() {
            return preferred;
        }
        let feasible = candidates
            .iter()
            .copied()
            .filter(|position| fits(*position))
            .map(|position| (self.live[position].name.as_str(), self.reserved[position], position));
        best_by(strategy, feasible)
    }

    /// Explains why no live host fits `requirements` given what this round reserved.
    fn describe_infeasible(&self, requirements: &Requirements) -> String {
        let lacks: Vec<(&HostRecord, Vec<Lack>)> = self
            .live
            .iter()
            .zip(&self.reserved)
            .map(|(host, on_host)| (*host, requirements.lacks_on(host, on_host)))
            .collect();
        describe_infeasible(requirements, &lacks)
    }
}

/// Changes that `up` of one silo makes to its instances.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpPlan {
    /// Instances to create, or to replace at once because their earlier start failed, they
    /// are pending or they are being stopped, in index order.
    pub to_place: Vec<InstanceRequest>,
    /// Keys of the records that `to_place` replaces.
    pub replaced: BTreeSet<String>,
    /// Indexes of running instances of another spec, replaced one at a time afterwards.
    pub rolling: Vec<u32>,
    /// Indexes of instances that run the spec but wait for another one from an earlier `up`,
    /// which this `up` cancels.
    pub rollout_cancelled: Vec<u32>,
    /// Running instances of index `count` and above, which `up` stops.
    pub to_stop: Vec<String>,
}

impl UpPlan {
    /// Returns true when the stored instances already match the spec and count.
    pub fn is_unchanged(&self) -> bool {
        self.to_place.is_empty()
            && self.rolling.is_empty()
            && self.rollout_cancelled.is_empty()
            && self.to_stop.is_empty()
    }
}

/// Compares `count` instances of silo `name` with protobuf-encoded `spec` (whose `count` is
/// cleared) to the stored instances.
///
/// - An instance that runs `spec` and did not fail is kept as it is, placed or pending.
/// - A running instance of another spec is kept for a rolling replacement, unless a rolling
///   replacement to `spec` already waits for it.
/// - Every other index below `count` is placed anew, preferring the host of the instance it
///   replaces.
pub fn plan_up(state: &ClusterState, name: &str, spec: &[u8], count: u32) -> UpPlan {
    let stored = state.instances(name);
    let mut plan = UpPlan::default();
    for index in 0..count {
        let Some(record) = stored.iter().find(|record| record.index == index) else {
            plan.to_place.push(InstanceRequest {
                index,
                preferred: None,
            });
            continue;
        };

        let healthy = record.desired == Desired::Run && !has_failed(record);
        if healthy && record.spec == spec {
            if record.next_spec.is_some() {
                plan.rollout_cancelled.push(index);
            }
        } else if healthy && !record.is_pending() {
            if record.next_spec.as_deref() != Some(spec) {
                plan.rolling.push(index);
            }
        } else {
            plan.replaced.insert(record.key());
            plan.to_place.push(InstanceRequest {
                index,
                preferred: (!record.is_pending()).then(|| record.host.clone()),
            });
        }
    }
    plan.to_stop = stored
        .iter()
        .filter(|record| record.index >= count && record.desired == Desired::Run)
        .map(|record| record.key())
        .collect();
    plan
}

/// Returns the instance of silo `name` that its rolling replacement replaces next: the
/// lowest-index running instance with a next spec. Returns `None` while no replacement is in
/// progress, and while an instance that runs the newest spec is not UP yet, so at most one
/// instance at a time is down for the replacement.
// NOTE: an instance of the newest spec that fails, exits or stays pending stops the
// replacement until an `up` replaces it.
pub fn next_rollout_step<'a>(state: &'a ClusterState, name: &str) -> Option<&'a SiloRecord> {
    let running: Vec<&SiloRecord> = state
        .instances(name)
        .into_iter()
        .filter(|record| record.desired == Desired::Run)
        .collect();
    let next = running.iter().find(|record| record.next_spec.is_some())?;
    let newest_up = running
        .iter()
        .filter(|record| record.next_spec.is_none())
        .all(|record| is_up(record));
    newest_up.then_some(*next)
}

/// Returns true when the agent reported the instance UP.
fn is_up(record: &SiloRecord) -> bool {
    record
        .status
        .as_ref()
        .is_some_and(|status| status.state == colex_proto::SiloState::Up as i32)
}

/// Returns true when the agent reported that the instance's setup failed.
fn has_failed(record: &SiloRecord) -> bool {
    record
        .status
        .as_ref()
        .is_some_and(|status| status.state == colex_proto::SiloState::Failed as i32)
}

/// Picks the best of the feasible hosts `candidates` (host name and what is reserved there)
/// by `strategy`, as [`best_by`] ranks them. Returns `None` when `candidates` is empty.
#[cfg(test)]
pub fn choose<'a>(strategy: Strategy, candidates: &[(&'a str, Reserved)]) -> Option<&'a str> {
    best_by(strategy, candidates.iter().map(|(host, reserved)| (*host, *reserved, *host)))
}

/// Returns the tag of the best of the feasible `candidates` (host name, what is reserved
/// there, tag) by `strategy`. Ties end in host name order, so the choice is stable on every
/// controller. Returns `None` when `candidates` is empty.
fn best_by<'a, T>(strategy: Strategy, candidates: impl Iterator<Item = (&'a str, Reserved, T)>) -> Option<T> {
    let best = match strategy {
        Strategy::Spread => candidates.min_by_key(|(host, reserved, _)| {
            (
                reserved.same_silo,
                reserved.cpu_percent,
                reserved.silos,
                *host,
            )
        }),
        Strategy::Binpack => candidates.min_by_key(|(host, reserved, _)| (Reverse(reserved.cpu_percent), *host)),
    };
    best.map(|(_, _, tag)| tag)
}

/// Explains in one line why none of the live hosts can run a silo with `requirements`: each
/// host with what it lacks, then what the user can do. `lacks` has one entry per live host,
/// none of them empty.
fn describe_infeasible(requirements: &Requirements, lacks: &[(&HostRecord, Vec<Lack>)]) -> String {
    let every_host_lacks_only_the_image = lacks
        .iter()
        .all(|(_, host_lacks)| matches!(host_lacks.as_slice(), [Lack::Image { .. }]));
    let every_host_lacks_only_bind_ids = lacks
        .iter()
        .all(|(_, host_lacks)| matches!(host_lacks.as_slice(), [Lack::BindIds { .. }]));

    let hosts: Vec<String> = if every_host_lacks_only_the_image {
        lacks
            .iter()
            .map(|(host, _)| format!("{} has {}", host.name, list(&host.attributes.images)))
            .collect()
    } else if every_host_lacks_only_bind_ids {
        lacks
            .iter()
            .map(|(host, _)| format!("{} offers {}", host.name, list(&host.attributes.bind_ids)))
            .collect()
    } else {
        lacks
            .iter()
            .map(|(host, host_lacks)| {
                let described: Vec<String> = host_lacks
                    .iter()
                    .map(|lack| lack.describe(requirements))
                    .collect();
                format!("{}: {}", host.name, described.join(", "))
            })
            .collect()
    };
    let summary = if every_host_lacks_only_the_image {
        format!("no live host has image {}", requirements.image)
    } else if every_host_lacks_only_bind_ids {
        format!(
            "no live host offers {}",
            bind_ids_phrase(&requirements.bind_ids)
        )
    } else {
        "no live host fits".to_owned()
    };

    let mut remedies: Vec<&str> = Vec::new();
    for lack in lacks.iter().flat_map(|(_, host_lacks)| host_lacks) {
        if !remedies.contains(&lack.remedy()) {
            remedies.push(lack.remedy());
        }
    }
    format!(
        "{summary}: {}. To place it, {}",
        hosts.join("; "),
        remedies.join(", or ")
    )
}

/// Formats "bind id a" or "bind ids a, b".
fn bind_ids_phrase<'a>(ids: impl IntoIterator<Item = &'a String>) -> String {
    let ids: Vec<&str> = ids.into_iter().map(String::as_str).collect();
    let noun = if ids.len() == 1 {
        "bind id"
    } else {
        "bind ids"
    };
    format!("{noun} {}", ids.join(", "))
}

/// Formats a list of names for a message, or "none".
fn list(names: &[String]) -> String {
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    }
}

/// Formats a byte count in whole GiB or MiB when it is one, otherwise in bytes, so a reason
/// never rounds a free amount up to what a silo needs.
fn format_bytes(bytes: u64) -> String {
    if bytes > 0 && bytes.is_multiple_of(GIB_BYTES) {
        format!("{} GiB", bytes / GIB_BYTES)
    } else if bytes > 0 && bytes.is_multiple_of(MIB_BYTES) {
        format!("{} MiB", bytes / MIB_BYTES)
    } else {
        format!("{bytes} bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Command, HostAttributes};

    /// Feasible hosts with their reservations, and the host a strategy should choose.
    type ChoiceCase<'a> = (&'a [(&'a str, Reserved)], Option<&'a str>);

    /// Memory every test host reports.
    const HOST_MEMORY_BYTES: u64 = GIB_BYTES;

    /// A host as its agent registers it.
    struct TestHost<'a> {
        name: &'a str,
        images: &'a [&'a str],
        bind_ids: &'a [&'a str],
        labels: &'a [(&'a str, &'a str)],
    }

    impl<'a> TestHost<'a> {
        fn named(name: &'a str) -> Self {
            TestHost {
                name,
                images: &["busybox"],
                bind_ids: &[],
                labels: &[],
            }
        }
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|item| (*item).to_owned()).collect()
    }

    fn register_host(state: &mut ClusterState, host: &TestHost<'_>) {
        state.apply(&Command::RegisterHost {
            name: host.name.to_owned(),
            address: "198.51.100.2".to_owned(),
            cpus: 1,
            memory_bytes: HOST_MEMORY_BYTES,
            attributes: HostAttributes {
                images: strings(host.images),
                bind_ids: strings(host.bind_ids),
                labels: host
                    .labels
                    .iter()
                    .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
                    .collect(),
                ..HostAttributes::default()
            },
        });
    }

    fn register(state: &mut ClusterState, name: &str, images: &[&str], bind_ids: &[&str]) {
        register_host(
            state,
            &TestHost {
                name,
                images,
                bind_ids,
                labels: &[],
            },
        );
    }

    fn state_with_hosts(names: &[&str]) -> ClusterState {
        let mut state = ClusterState::default();
        for name in names {
            register_host(&mut state, &TestHost::named(name));
        }
        state
    }

    /// Stores silo `name` on `host` without resources.
    fn put(state: &mut ClusterState, name: &str, host: &str) {
        put_with(state, name, host, 0, 0);
    }

    /// Stores silo `name` on `host`, reserving `cpu_percent` and `memory_bytes`.
    fn put_with(
        state: &mut ClusterState,
        name: &str,
        host: &str,
        cpu_percent: u32,
        memory_bytes: u64,
    ) {
        let spec = SiloSpec {
            name: name.to_owned(),
            resources: Some(colex_proto::Resources {
                cpu_percent,
                memory_bytes,
            }),
            ..Default::default()
        };
        state.apply(&Command::PutSilo {
            name: name.to_owned(),
            id: format!("{:0>8}", name),
            spec: spec.encode_to_vec(),
            host: host.to_owned(),
        });
    }

    fn live(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|name| (*name).to_owned()).collect()
    }

    fn spec(base: &str, bind_ids: &[&str]) -> SiloSpec {
        SiloSpec {
            name: "web".to_owned(),
            base: base.to_owned(),
            binds: bind_ids
                .iter()
                .map(|id| colex_proto::Bind {
                    id: (*id).to_owned(),
                    path: format!("/{id}"),
                })
                .collect(),
            ..Default::default()
        }
    }

    fn spec_with_resources(cpu_percent: u32, memory_bytes: u64) -> SiloSpec {
        SiloSpec {
            resources: Some(colex_proto::Resources {
                cpu_percent,
                memory_bytes,
            }),
            ..spec("", &[])
        }
    }

    fn spec_with_placement(
        hosts: &[&str],
        labels: &[(&str, &str)],
        strategy: PlacementStrategy,
    ) -> SiloSpec {
        SiloSpec {
            placement: Some(colex_proto::Placement {
                hosts: strings(hosts),
                labels: labels
                    .iter()
                    .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
                    .collect(),
                strategy: strategy.into(),
            }),
            ..spec("", &[])
        }
    }

    /// Places instance 0 of `spec` the way `up` of a silo of one instance does: `preferred`
    /// when it is live and feasible, otherwise the best feasible host. Every stored instance
    /// with the name of `spec` counts as replaced.
    fn place(
        state: &ClusterState,
        live_hosts: &BTreeSet<String>,
        spec: &SiloSpec,
        preferred: Option<&str>,
    ) -> Result<String, PlacementError> {
        let replaced: BTreeSet<String> = state
            .instances(&spec.name)
            .into_iter()
            .map(SiloRecord::key)
            .collect();
        let request = InstanceRequest {
            index: 0,
            preferred: preferred.map(str::to_owned),
        };
        let mut placed = place_instances_in(state, live_hosts, spec, &[request], &replaced)?;
        placed.pop().unwrap_or_else(|| {
            Err(PlacementError::NoLiveHost {
                silo: spec.name.clone(),
            })
        })
    }

    fn reason(result: Result<String, PlacementError>) -> String {
        result.expect_err("no host fits").to_string()
    }

    #[test]
    fn picks_host_with_fewest_silos() {
        let mut state = state_with_hosts(&["a", "b"]);
        put(&mut state, "one", "a");
        assert_eq!(
            place(&state, &live(&["a", "b"]), &spec("", &[]), None),
            Ok("b".to_owned())
        );
    }

    #[test]
    fn skips_hosts_that_are_not_live() {
        let mut state = state_with_hosts(&["a", "b"]);
        put(&mut state, "one", "a");
        assert_eq!(
            place(&state, &live(&["a"]), &spec("", &[]), None),
            Ok("a".to_owned())
        );
    }

    #[test]
    fn stopping_silos_do_not_count() {
        let mut state = state_with_hosts(&["a", "b"]);
        put(&mut state, "one", "a");
        put(&mut state, "two", "b");
        state.apply(&Command::StopSilo {
            name: "one".to_owned(),
        });
        assert_eq!(
            place(&state, &live(&["a", "b"]), &spec("", &[]), None),
            Ok("a".to_owned())
        );
    }

    #[test]
    fn no_live_host_is_an_error() {
        let state = state_with_hosts(&["a"]);
        let err = place(&state, &BTreeSet::new(), &spec("", &[]), None).expect_err("no host");
        assert_eq!(
            err,
            PlacementError::NoLiveHost {
                silo: "web".to_owned()
            }
        );
    }

    #[test]
    fn picks_only_hosts_with_the_image() {
        let mut state = ClusterState::default();
        register(&mut state, "h1", &["busybox"], &[]);
        register(&mut state, "h2", &["busybox", "web"], &[]);
        register(&mut state, "h3", &["busybox", "web"], &[]);
        put(&mut state, "other", "h2");
        let all = live(&["h1", "h2", "h3"]);

        // h1 runs nothing but lacks the image; h3 is the least loaded host that has it.
        assert_eq!(
            place(&state, &all, &spec("web", &[]), None),
            Ok("h3".to_owned())
        );
        assert_eq!(
            place(&state, &all, &spec("img://web", &[]), None),
            Ok("h3".to_owned())
        );
        assert_eq!(
            place(&state, &all, &spec("", &[]), None),
            Ok("h1".to_owned())
        );
    }

    #[test]
    fn picks_only_hosts_with_every_bind_id() {
        let mut state = ClusterState::default();
        register(&mut state, "h1", &["busybox"], &["data"]);
        register(&mut state, "h2", &["busybox"], &["data", "logs"]);
        put(&mut state, "other", "h2");
        let all = live(&["h1", "h2"]);
        assert_eq!(
            place(&state, &all, &spec("", &["data", "logs"]), None),
            Ok("h2".to_owned())
        );
        assert_eq!(
            place(&state, &all, &spec("", &["data"]), None),
            Ok("h1".to_owned())
        );
    }

    #[test]
    fn missing_image_names_every_host() {
        let mut state = ClusterState::default();
        register(&mut state, "h1", &["busybox"], &[]);
        register(&mut state, "h2", &["busybox", "web"], &[]);
        let err = place(&state, &live(&["h1", "h2"]), &spec("alpine", &[]), None)
            .expect_err("no host has alpine");
        assert_eq!(
            err.to_string(),
            "silo web: no live host has image alpine: h1 has busybox; h2 has busybox, web. \
             To place it, declare the image in an agent's config file"
        );
    }

    #[test]
    fn missing_bind_ids_name_every_host() {
        let mut state = ClusterState::default();
        register(&mut state, "h1", &["busybox"], &[]);
        register(&mut state, "h2", &["busybox"], &["logs"]);
        let err = place(&state, &live(&["h1", "h2"]), &spec("", &["data"]), None)
            .expect_err("no host offers data");
        assert_eq!(
            err.to_string(),
            "silo web: no live host offers bind id data: h1 offers none; h2 offers logs. \
             To place it, declare the bind ids in an agent's config file"
        );
        let err = place(
            &state,
            &live(&["h1", "h2"]),
            &spec("", &["data", "logs"]),
            None,
        )
        .expect_err("no host offers both");
        assert_eq!(
            err.to_string(),
            "silo web: no live host offers bind ids data, logs: h1 offers none; h2 offers logs. \
             To place it, declare the bind ids in an agent's config file"
        );
    }

    #[test]
    fn mixed_lacks_are_listed_per_host() {
        let mut state = ClusterState::default();
        register(&mut state, "h1", &["busybox"], &["data"]);
        register(&mut state, "h2", &["busybox", "alpine"], &[]);
        let err = place(
            &state,
            &live(&["h1", "h2"]),
            &spec("alpine", &["data"]),
            None,
        )
        .expect_err("no host has both");
        assert_eq!(
            err.to_string(),
            "silo web: no live host fits: h1: lacks image alpine (has busybox); \
             h2: lacks bind id data (offers none). To place it, declare the image in an \
             agent's config file, or declare the bind ids in an agent's config file"
        );
    }

    #[test]
    fn down_hosts_are_not_named() {
        let mut state = ClusterState::default();
        register(&mut state, "h1", &["busybox"], &[]);
        register(&mut state, "h2", &["busybox", "alpine"], &[]);
        let err = place(&state, &live(&["h1"]), &spec("alpine", &[]), None)
            .expect_err("the host with alpine is down");
        assert_eq!(
            err.to_string(),
            "silo web: no live host has image alpine: h1 has busybox. \
             To place it, declare the image in an agent's config file"
        );
    }

    #[test]
    fn preferred_host_is_kept_when_feasible() {
        let mut state = ClusterState::default();
        register(&mut state, "h1", &["busybox"], &[]);
        register(&mut state, "h2", &["busybox", "alpine"], &[]);
        put(&mut state, "web", "h2");
        put(&mut state, "other", "h2");
        let all = live(&["h1", "h2"]);
        assert_eq!(
            place(&state, &all, &spec("", &[]), Some("h2")),
            Ok("h2".to_owned())
        );
        // A replacement whose new image its host lacks moves to a host that has it.
        assert_eq!(
            place(&state, &all, &spec("alpine", &[]), Some("h1")),
            Ok("h2".to_owned())
        );
    }

    #[test]
    fn placement_hosts_filter() {
        let state = state_with_hosts(&["a", "b", "c"]);
        let all = live(&["a", "b", "c"]);
        let only_c = spec_with_placement(&["c"], &[], PlacementStrategy::Spread);
        assert_eq!(place(&state, &all, &only_c, None), Ok("c".to_owned()));
        let b_or_c = spec_with_placement(&["c", "b"], &[], PlacementStrategy::Spread);
        assert_eq!(place(&state, &all, &b_or_c, None), Ok("b".to_owned()));
        let empty_list = spec_with_placement(&[], &[], PlacementStrategy::Spread);
        assert_eq!(place(&state, &all, &empty_list, None), Ok("a".to_owned()));
    }

    #[test]
    fn placement_hosts_reason() {
        let state = state_with_hosts(&["a", "b", "c"]);
        let only_c = spec_with_placement(&["c"], &[], PlacementStrategy::Spread);
        assert_eq!(
            reason(place(&state, &live(&["a", "b"]), &only_c, None)),
            "silo web: no live host fits: a: is not in placement.hosts; \
             b: is not in placement.hosts. To place it, name a live host in placement.hosts"
        );
    }

    #[test]
    fn placement_labels_filter() {
        let mut state = ClusterState::default();
        register_host(
            &mut state,
            &TestHost {
                labels: &[("zone", "a")],
                ..TestHost::named("a")
            },
        );
        register_host(
            &mut state,
            &TestHost {
                labels: &[("zone", "b"), ("disk", "ssd")],
                ..TestHost::named("b")
            },
        );
        register_host(
            &mut state,
            &TestHost {
                labels: &[("zone", "b")],
                ..TestHost::named("c")
            },
        );
        let all = live(&["a", "b", "c"]);

        let zone_b = spec_with_placement(&[], &[("zone", "b")], PlacementStrategy::Spread);
        assert_eq!(place(&state, &all, &zone_b, None), Ok("b".to_owned()));
        let zone_b_on_c = spec_with_placement(&["c"], &[("zone", "b")], PlacementStrategy::Spread);
        assert_eq!(place(&state, &all, &zone_b_on_c, None), Ok("c".to_owned()));
        let zone_b_ssd = spec_with_placement(
            &[],
            &[("disk", "ssd"), ("zone", "b")],
            PlacementStrategy::Spread,
        );
        put(&mut state, "busy", "b");
        assert_eq!(
            place(&state, &all, &zone_b_ssd, None),
            Ok("b".to_owned()),
            "every label must match, so the busier b is the only choice"
        );
    }

    #[test]
    fn placement_labels_reason() {
        let mut state = ClusterState::default();
        register_host(
            &mut state,
            &TestHost {
                labels: &[("zone", "a")],
                ..TestHost::named("a")
            },
        );
        register_host(&mut state, &TestHost::named("b"));
        let zone_eu = spec_with_placement(
            &[],
            &[("disk", "ssd"), ("zone", "eu")],
            PlacementStrategy::Spread,
        );
        assert_eq!(
            reason(place(&state, &live(&["a", "b"]), &zone_eu, None)),
            "silo web: no live host fits: a: lacks label disk=ssd, lacks label zone=eu (has zone=a); \
             b: lacks label disk=ssd, lacks label zone=eu. To place it, change placement.labels \
             or start an agent whose config declares those labels"
        );
    }

    #[test]
    fn cpu_fills_up_to_100_percent() {
        let mut state = state_with_hosts(&["a"]);
        let a = live(&["a"]);
        put_with(&mut state, "one", "a", 60, 0);
        assert_eq!(
            place(&state, &a, &spec_with_resources(40, 0), None),
            Ok("a".to_owned())
        );
        put_with(&mut state, "two", "a", 40, 0);
        assert_eq!(
            place(&state, &a, &spec_with_resources(0, 0), None),
            Ok("a".to_owned()),
            "a silo without resources reserves nothing and always fits"
        );
        assert_eq!(
            reason(place(&state, &a, &spec_with_resources(4, 0), None)),
            "silo web: no live host fits: a: 0% CPU free, needs 4%. To place it, stop a silo \
             on one of these hosts, lower resources or start another agent"
        );
    }

    #[test]
    fn cpu_reason_names_each_host() {
        let mut state = state_with_hosts(&["host-a", "host-b"]);
        put_with(&mut state, "one", "host-a", 60, 0);
        put_with(&mut state, "two", "host-b", 88, 0);
        assert_eq!(
            reason(place(
                &state,
                &live(&["host-a", "host-b"]),
                &spec_with_resources(60, 0),
                None
            )),
            "silo web: no live host fits: host-a: 40% CPU free, needs 60%; \
             host-b: 12% CPU free, needs 60%. To place it, stop a silo on one of these hosts, \
             lower resources or start another agent"
        );
    }

    #[test]
    fn cpu_and_label_reasons_combine() {
        let mut state = ClusterState::default();
        register_host(
            &mut state,
            &TestHost {
                labels: &[("zone", "b")],
                ..TestHost::named("host-a")
            },
        );
        register_host(
            &mut state,
            &TestHost {
                labels: &[("zone", "c")],
                ..TestHost::named("host-b")
            },
        );
        put_with(&mut state, "busy", "host-a", 60, 0);
        let zone_b = SiloSpec {
            resources: Some(colex_proto::Resources {
                cpu_percent: 60,
                memory_bytes: 0,
            }),
            ..spec_with_placement(&[], &[("zone", "b")], PlacementStrategy::Spread)
        };
        assert_eq!(
            reason(place(&state, &live(&["host-a", "host-b"]), &zone_b, None)),
            "silo web: no live host fits: host-a: 40% CPU free, needs 60%; \
             host-b: lacks label zone=b (has zone=c). To place it, stop a silo on one of these \
             hosts, lower resources or start another agent, or change placement.labels or start \
             an agent whose config declares those labels"
        );
    }

    #[test]
    fn memory_fills_up_to_host_memory() {
        let mut state = state_with_hosts(&["a"]);
        let a = live(&["a"]);
        put_with(&mut state, "one", "a", 0, 768 * MIB_BYTES);
        assert_eq!(
            place(&state, &a, &spec_with_resources(0, 256 * MIB_BYTES), None),
            Ok("a".to_owned())
        );
        assert_eq!(
            reason(place(&state, &a, &spec_with_resources(0, 256 * MIB_BYTES + 1), None)),
            "silo web: no live host fits: a: 256 MiB memory free, needs 268435457 bytes. \
             To place it, stop a silo on one of these hosts, lower resources or start another agent"
        );
        put_with(&mut state, "two", "a", 0, 256 * MIB_BYTES);
        assert_eq!(
            reason(place(&state, &a, &spec_with_resources(0, GIB_BYTES), None)),
            "silo web: no live host fits: a: 0 bytes memory free, needs 1 GiB. \
             To place it, stop a silo on one of these hosts, lower resources or start another agent"
        );
    }

    #[test]
    fn cpu_and_memory_lacks_are_both_named() {
        let mut state = state_with_hosts(&["a"]);
        put_with(&mut state, "one", "a", 50, 512 * MIB_BYTES);
        assert_eq!(
            reason(place(
                &state,
                &live(&["a"]),
                &spec_with_resources(60, GIB_BYTES),
                None
            )),
            "silo web: no live host fits: a: 50% CPU free, needs 60%, 512 MiB memory free, \
             needs 1 GiB. To place it, stop a silo on one of these hosts, lower resources or \
             start another agent"
        );
    }

    #[test]
    fn replacement_does_not_reserve_against_itself() {
        let mut state = state_with_hosts(&["a"]);
        put_with(&mut state, "web", "a", 80, 0);
        assert_eq!(
            place(
                &state,
                &live(&["a"]),
                &spec_with_resources(90, 0),
                Some("a")
            ),
            Ok("a".to_owned())
        );
    }

    #[test]
    fn reserved_sums_running_silos_per_host() {
        let mut state = state_with_hosts(&["a", "b"]);
        put_with(&mut state, "one", "a", 30, MIB_BYTES);
        put_with(&mut state, "two", "a", 20, 2 * MIB_BYTES);
        put(&mut state, "three", "a");
        put_with(&mut state, "stopped", "b", 50, MIB_BYTES);
        state.apply(&Command::StopSilo {
            name: "stopped".to_owned(),
        });
        let reserved = reserved_by_host(&state, &BTreeSet::from(["three".to_owned()]));
        assert_eq!(
            reserved.get("a"),
            Some(&Reserved {
                cpu_percent: 50,
                memory_bytes: 3 * MIB_BYTES,
                silos: 2,
                same_silo: 0,
            })
        );
        assert_eq!(reserved.get("b"), None, "stopping silos reserve nothing");
    }

    #[test]
    fn spread_prefers_least_reserved_cpu() {
        let mut state = state_with_hosts(&["a", "b", "c"]);
        put_with(&mut state, "one", "a", 50, 0);
        put_with(&mut state, "two", "b", 10, 0);
        put(&mut state, "three", "b");
        put_with(&mut state, "four", "c", 10, 0);
        let all = live(&["a", "b", "c"]);
        // b and c reserve 10% each, and c runs fewer silos.
        assert_eq!(
            place(&state, &all, &spec_with_resources(10, 0), None),
            Ok("c".to_owned())
        );
    }

    #[test]
    fn spread_order() {
        let reserved = |cpu_percent, silos| Reserved {
            cpu_percent,
            memory_bytes: 0,
            silos,
            same_silo: 0,
        };
        let cases: [ChoiceCase<'_>; 5] = [
            (&[], None),
            (&[("a", reserved(20, 0)), ("b", reserved(10, 5))], Some("b")),
            (&[("a", reserved(10, 2)), ("b", reserved(10, 1))], Some("b")),
            (&[("b", reserved(10, 1)), ("a", reserved(10, 1))], Some("a")),
            (&[("a", reserved(0, 0)), ("b", reserved(90, 0))], Some("a")),
        ];
        for (candidates, expected) in cases {
            assert_eq!(
                choose(Strategy::Spread, candidates),
                expected,
                "{candidates:?}"
            );
        }
    }

    #[test]
    fn binpack_order() {
        let reserved = |cpu_percent, silos| Reserved {
            cpu_percent,
            memory_bytes: 0,
            silos,
            same_silo: 0,
        };
        let cases: [ChoiceCase<'_>; 4] = [
            (&[], None),
            (&[("a", reserved(20, 0)), ("b", reserved(10, 5))], Some("a")),
            (&[("b", reserved(30, 1)), ("a", reserved(30, 4))], Some("a")),
            (&[("a", reserved(0, 0)), ("b", reserved(90, 0))], Some("b")),
        ];
        for (candidates, expected) in cases {
            assert_eq!(
                choose(Strategy::Binpack, candidates),
                expected,
                "{candidates:?}"
            );
        }
    }

    #[test]
    fn binpack_fills_fullest_host_that_fits() {
        let mut state = state_with_hosts(&["a", "b", "c"]);
        put_with(&mut state, "one", "a", 80, 0);
        put_with(&mut state, "two", "b", 50, 0);
        let all = live(&["a", "b", "c"]);
        let binpack = |cpu_percent| SiloSpec {
            resources: Some(colex_proto::Resources {
                cpu_percent,
                memory_bytes: 0,
            }),
            ..spec_with_placement(&[], &[], PlacementStrategy::Binpack)
        };
        assert_eq!(place(&state, &all, &binpack(20), None), Ok("a".to_owned()));
        assert_eq!(
            place(&state, &all, &binpack(30), None),
            Ok("b".to_owned()),
            "a has only 20% free"
        );
        assert_eq!(
            place(&state, &all, &spec_with_resources(30, 0), None),
            Ok("c".to_owned()),
            "spread, the default, takes the emptiest host"
        );
    }

    #[test]
    fn strategy_of_spec() {
        assert_eq!(Strategy::of(&spec("", &[])), Ok(Strategy::Spread));
        let binpack = spec_with_placement(&[], &[], PlacementStrategy::Binpack);
        assert_eq!(Strategy::of(&binpack), Ok(Strategy::Binpack));
        let mut unknown = spec("", &[]);
        unknown.placement = Some(colex_proto::Placement {
            strategy: 7,
            ..Default::default()
        });
        assert_eq!(
            Strategy::of(&unknown).map_err(|error| error.to_string()),
            Err("silo web: unknown placement.strategy number 7; use spread or binpack".to_owned())
        );
    }

    #[test]
    fn bytes_format_exactly() {
        assert_eq!(format_bytes(0), "0 bytes");
        assert_eq!(format_bytes(4 * MIB_BYTES), "4 MiB");
        assert_eq!(format_bytes(2 * GIB_BYTES), "2 GiB");
        assert_eq!(format_bytes(1536 * MIB_BYTES), "1536 MiB");
        assert_eq!(format_bytes(MIB_BYTES + 1), "1048577 bytes");
    }

    /// Stores `count` instances of silo "web" reserving `cpu_percent` each, placed on
    /// `hosts` in index order.
    fn put_web_instances(state: &mut ClusterState, hosts: &[&str], cpu_percent: u32) {
        let spec = spec_with_resources(cpu_percent, 0);
        let count = u32::try_from(hosts.len()).expect("few instances");
        state.apply(&Command::PutInstances {
            name: "web".to_owned(),
            spec: spec.encode_to_vec(),
            count,
            instances: hosts
                .iter()
                .zip(0..)
                .map(|(host, index)| crate::state::InstanceUpdate {
                    index,
                    id: format!("{index:08x}"),
                    placement: crate::state::InstancePlacement::Host((*host).to_owned()),
                })
                .collect(),
            rolling: Vec::new(),
        });
    }

    fn requests(indexes: std::ops::Range<u32>) -> Vec<InstanceRequest> {
        indexes
            .map(|index| InstanceRequest {
                index,
                preferred: None,
            })
            .collect()
    }

    fn hosts_of(results: Vec<Result<String, PlacementError>>) -> Vec<String> {
        results
            .into_iter()
            .map(|result| result.unwrap_or_else(|error| format!("pending: {error}")))
            .collect()
    }

    #[test]
    fn spread_puts_instances_on_distinct_hosts() {
        let mut state = state_with_hosts(&["a", "b", "c"]);
        put_with(&mut state, "other", "a", 10, 0);
        let placed = place_instances_in(
            &state,
            &live(&["a", "b", "c"]),
            &spec_with_resources(10, 0),
            &requests(0..3),
            &BTreeSet::new(),
        )
        .expect("known strategy");
        assert_eq!(hosts_of(placed), ["b", "c", "a"]);
    }

    #[test]
    fn spread_doubles_up_only_when_hosts_run_out() {
        let state = state_with_hosts(&["a", "b"]);
        let placed = place_instances_in(
            &state,
            &live(&["a", "b"]),
            &spec("", &[]),
            &requests(0..4),
            &BTreeSet::new(),
        )
        .expect("known strategy");
        assert_eq!(hosts_of(placed), ["a", "b", "a", "b"]);
    }

    #[test]
    fn spread_avoids_hosts_with_stored_instances() {
        let mut state = state_with_hosts(&["a", "b", "c"]);
        put_web_instances(&mut state, &["a", "b"], 0);
        put_with(&mut state, "busy", "c", 50, 0);
        let placed = place_instances_in(
            &state,
            &live(&["a", "b", "c"]),
            &spec("", &[]),
            &requests(2..3),
            &BTreeSet::new(),
        )
        .expect("known strategy");
        assert_eq!(
            hosts_of(placed),
            ["c"],
            "the busier host without an instance of web comes first"
        );
    }

    #[test]
    fn binpack_stacks_instances() {
        let state = state_with_hosts(&["a", "b"]);
        let binpack = SiloSpec {
            resources: Some(colex_proto::Resources {
                cpu_percent: 30,
                memory_bytes: 0,
            }),
            ..spec_with_placement(&[], &[], PlacementStrategy::Binpack)
        };
        let placed = place_instances_in(
            &state,
            &live(&["a", "b"]),
            &binpack,
            &requests(0..4),
            &BTreeSet::new(),
        )
        .expect("known strategy");
        assert_eq!(hosts_of(placed), ["a", "a", "a", "b"]);
    }

    #[test]
    fn capacity_counts_every_instance() {
        let mut state = state_with_hosts(&["a", "b"]);
        put_web_instances(&mut state, &["a"], 40);
        let placed = place_instances_in(
            &state,
            &live(&["a", "b"]),
            &spec_with_resources(40, 0),
            &requests(1..5),
            &BTreeSet::new(),
        )
        .expect("known strategy");
        assert_eq!(
            hosts_of(placed),
            [
                "b",
                "a",
                "b",
                "pending: silo web: no live host fits: a: 20% CPU free, needs 40%; \
                 b: 20% CPU free, needs 40%. To place it, stop a silo on one of these hosts, \
                 lower resources or start another agent"
            ]
        );
    }

    fn named_with_cpu(name: &str, cpu_percent: u32) -> SiloSpec {
        SiloSpec {
            name: name.to_owned(),
            ..spec_with_resources(cpu_percent, 0)
        }
    }

    #[test]
    fn round_counts_earlier_silos_of_the_batch() {
        let applied = AppliedState::new(state_with_hosts(&["a", "b"]));
        let mut round = PlacementRound::new(&applied, &live(&["a", "b"]), |host| applied.reserved_on(host));
        let mut place = |name: &str| {
            round
                .place(&named_with_cpu(name, 60), &requests(0..1), &BTreeSet::new())
                .expect("known strategy")
        };

        assert_eq!(hosts_of(place("web")), ["a"]);
        assert_eq!(hosts_of(place("db")), ["b"], "host a has 40% left after web");
        let third = place("cache").pop().expect("one result");
        let reason = reason(third);
        assert!(reason.contains("a: 40% CPU free, needs 60%"), "{reason}");
        assert!(reason.contains("b: 40% CPU free, needs 60%"), "{reason}");
    }

    #[test]
    fn round_matches_separate_placements() {
        let mut state = state_with_hosts(&["a", "b", "c"]);
        put_web_instances(&mut state, &["a", "b"], 30);
        let spec = named_with_cpu("web", 30);
        let separate = place_instances_in(&state, &live(&["a", "b", "c"]), &spec, &requests(2..5), &BTreeSet::new())
            .expect("known strategy");
        // The applied state's kept sums against the sums of a pass over the silos.
        let applied = AppliedState::new(state.clone());
        let in_round = PlacementRound::new(&applied, &live(&["a", "b", "c"]), |host| applied.reserved_on(host))
            .place(&spec, &requests(2..5), &BTreeSet::new())
            .expect("known strategy");
        assert_eq!(hosts_of(in_round), hosts_of(separate));
    }

    #[test]
    fn replaced_instances_free_their_capacity() {
        let mut state = state_with_hosts(&["a"]);
        put_web_instances(&mut state, &["a", "a"], 50);
        state.apply(&Command::StopSilo {
            name: "web".to_owned(),
        });
        let plan = plan_up(
            &state,
            "web",
            &spec_with_resources(40, 0).encode_to_vec(),
            2,
        );
        assert_eq!(
            plan.replaced,
            BTreeSet::from(["web".to_owned(), "web/1".to_owned()])
        );
        let placed = place_instances_in(
            &state,
            &live(&["a"]),
            &spec_with_resources(40, 0),
            &plan.to_place,
            &plan.replaced,
        )
        .expect("known strategy");
        assert_eq!(hosts_of(placed), ["a", "a"]);
    }

    #[test]
    fn no_live_host_makes_every_instance_pending() {
        let state = state_with_hosts(&["a"]);
        let placed = place_instances_in(
            &state,
            &BTreeSet::new(),
            &spec("", &[]),
            &requests(0..2),
            &BTreeSet::new(),
        )
        .expect("known strategy");
        assert_eq!(placed.len(), 2);
        assert!(placed
            .iter()
            .all(|result| matches!(result, Err(PlacementError::NoLiveHost { .. }))));
    }

    #[test]
    fn plan_of_unchanged_spec_is_empty() {
        let mut state = state_with_hosts(&["a", "b", "c"]);
        put_web_instances(&mut state, &["a", "b", "c"], 10);
        let plan = plan_up(
            &state,
            "web",
            &spec_with_resources(10, 0).encode_to_vec(),
            3,
        );
        assert!(plan.is_unchanged(), "{plan:?}");
    }

    #[test]
    fn plan_of_count_change_touches_only_highest_instances() {
        let mut state = state_with_hosts(&["a", "b", "c"]);
        put_web_instances(&mut state, &["a", "b", "c"], 10);
        let encoded = spec_with_resources(10, 0).encode_to_vec();

        let up = plan_up(&state, "web", &encoded, 5);
        assert_eq!(up.to_place, requests(3..5));
        assert!(up.replaced.is_empty());
        assert!(up.to_stop.is_empty());

        let down = plan_up(&state, "web", &encoded, 2);
        assert!(down.to_place.is_empty());
        assert_eq!(down.to_stop, ["web/2"]);
    }

    #[test]
    fn plan_of_changed_spec_rolls() {
        let mut state = state_with_hosts(&["a", "b"]);
        put_web_instances(&mut state, &["a", "b"], 10);
        let encoded = spec_with_resources(20, 0).encode_to_vec();
        let plan = plan_up(&state, "web", &encoded, 3);
        assert_eq!(plan.rolling, [0, 1]);
        assert_eq!(
            plan.to_place,
            requests(2..3),
            "a new index is placed at once"
        );
        assert!(plan.replaced.is_empty());

        state.apply(&Command::PutInstances {
            name: "web".to_owned(),
            spec: encoded.clone(),
            count: 2,
            instances: Vec::new(),
            rolling: vec![0, 1],
        });
        assert!(
            plan_up(&state, "web", &encoded, 2).is_unchanged(),
            "the same up again waits for the running replacement"
        );
        let back = plan_up(
            &state,
            "web",
            &spec_with_resources(10, 0).encode_to_vec(),
            2,
        );
        assert_eq!(back.rollout_cancelled, [0, 1]);
        assert!(!back.is_unchanged());
    }

    #[test]
    fn rollout_waits_for_newest_instances_up() {
        let mut state = state_with_hosts(&["a", "b", "c"]);
        put_web_instances(&mut state, &["a", "b", "c"], 0);
        assert!(
            next_rollout_step(&state, "web").is_none(),
            "no replacement in progress"
        );

        state.apply(&Command::PutInstances {
            name: "web".to_owned(),
            spec: vec![9],
            count: 3,
            instances: Vec::new(),
            rolling: vec![0, 1, 2],
        });
        let first = next_rollout_step(&state, "web").map(SiloRecord::key);
        assert_eq!(
            first.as_deref(),
            Some("web"),
            "nothing runs the new spec yet"
        );

        state.apply(&Command::ReplaceInstance {
            name: "web".to_owned(),
            replaced_id: "00000000".to_owned(),
            instance: crate::state::InstanceUpdate {
                index: 0,
                id: "0000000a".to_owned(),
                placement: crate::state::InstancePlacement::Host("a".to_owned()),
            },
        });
        assert!(
            next_rollout_step(&state, "web").is_none(),
            "the replacement of instance 0 is not UP yet"
        );

        state.apply(&Command::ReportStatus {
            host: "a".to_owned(),
            silo_id: "0000000a".to_owned(),
            status: crate::state::SiloStatus {
                state: colex_proto::SiloState::Up.into(),
                ..Default::default()
            },
        });
        let second = next_rollout_step(&state, "web").map(SiloRecord::key);
        assert_eq!(second.as_deref(), Some("web/1"));
    }

    #[test]
    fn plan_replaces_failed_and_stopping_instances() {
        let mut state = state_with_hosts(&["a", "b"]);
        put_web_instances(&mut state, &["a", "b"], 0);
        state.apply(&Command::ReportStatus {
            host: "b".to_owned(),
            silo_id: "00000001".to_owned(),
            status: crate::state::SiloStatus {
                state: colex_proto::SiloState::Failed.into(),
                ..Default::default()
            },
        });
        let encoded = spec_with_resources(0, 0).encode_to_vec();
        assert_eq!(
            plan_up(&state, "web", &encoded, 2).to_place.len(),
            1,
            "the failed instance is replaced"
        );

        state.apply(&Command::StopSilo {
            name: "web".to_owned(),
        });
        assert_eq!(
            plan_up(&state, "web", &encoded, 2).to_place.len(),
            2,
            "a stopping silo is placed again"
        );
    }
}
