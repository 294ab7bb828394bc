//! Reading of the unlabelled settings of a silo: binary, network, grants, resources, placement
//! and restart. Each is accepted as a block or as an attribute whose value is an object.

use super::declared::{
    DeclaredBinary, DeclaredGrants, DeclaredNetwork, DeclaredPlacement, DeclaredResources,
    DeclaredRestart,
};
use super::diagnostics::Diagnostics;
use super::reader::AttributeReader;
use super::schema::{self, BodySchema};
use super::section::Section;
use super::value::Field;

/// Finds the nested section `schema.name` of a silo, checks it against the schema and reads it
/// with `read`, which gets the section and a reader whose messages name `NAME.ATTRIBUTE`.
fn read_setting<T>(
    silo: &Section<'_>,
    schema: &BodySchema,
    prefix: &str,
    diagnostics: &mut Diagnostics<'_>,
    read: impl FnOnce(&Section<'_>, &mut AttributeReader<'_, '_, '_, '_>) -> T,
) -> Field<T> {
    let section = match silo.nested(schema.name, prefix, diagnostics) {
        Field::Valid(section) => section,
        Field::Invalid => return Field::Invalid,
        Field::Absent => return Field::Absent,
    };
    schema.check(&section, prefix, diagnostics);

    let qualifier = format!("{}.", schema.name);
    let mut reader = AttributeReader::new(&section, prefix, &qualifier, diagnostics);
    Field::Valid(read(&section, &mut reader))
}

/// Reads `binary`. Returns `Field::Invalid` when it has the wrong type, so that it is not also
/// reported as missing.
pub(super) fn read_binary(
    silo: &Section<'_>,
    prefix: &str,
    diagnostics: &mut Diagnostics<'_>,
) -> Field<DeclaredBinary> {
    read_setting(
        silo,
        &schema::BINARY,
        prefix,
        diagnostics,
        |section, reader| DeclaredBinary {
            header: section.header,
            path: reader.string("path"),
            args: reader.string_list("args"),
            env: reader.string_list("env"),
        },
    )
}

pub(super) fn read_network(
    silo: &Section<'_>,
    prefix: &str,
    diagnostics: &mut Diagnostics<'_>,
) -> Option<DeclaredNetwork> {
    read_setting(silo, &schema::NETWORK, prefix, diagnostics, |_, reader| {
        DeclaredNetwork {
            internet_access: reader.bool("internet_access").unwrap_or(false),
            nameservers: reader.string_list("nameservers"),
            hosts: reader.string_map("hosts"),
        }
    })
    .into_valid()
}

pub(super) fn read_grants(
    silo: &Section<'_>,
    prefix: &str,
    diagnostics: &mut Diagnostics<'_>,
) -> Option<DeclaredGrants> {
    read_setting(silo, &schema::GRANTS, prefix, diagnostics, |_, reader| {
        DeclaredGrants {
            query_silos: reader.bool("query_silos").unwrap_or(false),
            raw_sockets: reader.bool("raw_sockets").unwrap_or(false),
        }
    })
    .into_valid()
}

pub(super) fn read_resources(
    silo: &Section<'_>,
    prefix: &str,
    diagnostics: &mut Diagnostics<'_>,
) -> Option<DeclaredResources> {
    read_setting(
        silo,
        &schema::RESOURCES,
        prefix,
        diagnostics,
        |_, reader| DeclaredResources {
            cpu_percent: reader.integer("cpu_percent"),
            max_memory_bytes: reader.integer("max_memory_bytes"),
            memory_bytes: reader.size_bytes("memory"),
        },
    )
    .into_valid()
}

pub(super) fn read_placement(
    silo: &Section<'_>,
    prefix: &str,
    diagnostics: &mut Diagnostics<'_>,
) -> Option<DeclaredPlacement> {
    read_setting(
        silo,
        &schema::PLACEMENT,
        prefix,
        diagnostics,
        |_, reader| DeclaredPlacement {
            hosts: reader.string_list("hosts"),
            labels: reader.string_map("labels"),
            strategy: reader.string("strategy"),
        },
    )
    .into_valid()
}

pub(super) fn read_restart(
    silo: &Section<'_>,
    prefix: &str,
    diagnostics: &mut Diagnostics<'_>,
) -> Option<DeclaredRestart> {
    read_setting(
        silo,
        &schema::RESTART,
        prefix,
        diagnostics,
        |section, reader| DeclaredRestart {
            header: section.header,
            policy: reader.string("policy"),
            attempts: reader.integer("attempts"),
            delay_ms: reader.duration_ms("delay"),
        },
    )
    .into_valid()
}
