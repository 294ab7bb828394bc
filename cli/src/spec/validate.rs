//! Rules on the values of declared silos: names, images, the binary and network addresses.
//! Paths are checked in `validate_paths` and the cluster extensions in `validate_cluster`.
//! Type errors were reported while reading, so these modules check meaning only.

use std::collections::HashMap;
use std::net::IpAddr;

use super::declared::{DeclaredBinary, DeclaredNetwork, DeclaredSilo};
use super::diagnostics::Diagnostics;
use super::validate_cluster;
use super::validate_paths;
use super::value::Field;

/// Scheme of image references in `base`. `SiloSpec.base` carries the image name without it.
pub(super) const IMAGE_SCHEME: &str = "img://";

/// Image name used when `base` is absent.
pub(super) const DEFAULT_IMAGE: &str = "busybox";

/// Maximum length of an image name in characters. Agents use the name as a folder name, so it
/// stays well below the 255-byte file name limit of Linux file systems.
const MAX_IMAGE_NAME_CHARS: usize = 128;

/// Maximum length of a DNS label in characters (RFC 1035, section 2.3.4).
const MAX_DNS_LABEL_CHARS: usize = 63;

/// Maximum length of a hostname in characters (RFC 1035, section 2.3.4).
const MAX_HOSTNAME_CHARS: usize = 253;

/// Reports every rule that the declared silos break.
pub(super) fn validate(silos: &[DeclaredSilo], diagnostics: &mut Diagnostics<'_>) {
    let mut first_use_of_name: HashMap<String, usize> = HashMap::new();

    for silo in silos {
        check_name(silo, diagnostics);
        check_unique_name(silo, &mut first_use_of_name, diagnostics);

        check_base(silo, diagnostics);
        match &silo.binary {
            Field::Valid(binary) => check_binary(binary, &silo.prefix, diagnostics),
            Field::Invalid => {}
            Field::Absent => diagnostics.report(
                silo.header,
                format!(
                    "{}missing binary.path; add binary {{ path = \"/bin/...\" }} to the silo block",
                    silo.prefix
                ),
            ),
        }
        validate_paths::check_files(&silo.files, &silo.prefix, diagnostics);
        validate_paths::check_binds(&silo.binds, &silo.prefix, diagnostics);
        if let Some(network) = &silo.network {
            check_network(network, &silo.prefix, diagnostics);
        }
        validate_cluster::check(silo, diagnostics);
    }
}

fn check_unique_name(
    silo: &DeclaredSilo,
    first_use_of_name: &mut HashMap<String, usize>,
    diagnostics: &mut Diagnostics<'_>,
) {
    let Some(name) = silo.effective_name() else {
        return;
    };
    match first_use_of_name.get(&name.value) {
        Some(&first) => {
            let first_position = diagnostics.position(first);
            diagnostics.report(
                name.offset,
                format!(
                    "{}duplicate name {:?}, first used at {first_position}; give each silo a unique name",
                    silo.prefix, name.value
                ),
            );
        }
        None => {
            first_use_of_name.insert(name.value, name.offset);
        }
    }
}

fn check_name(silo: &DeclaredSilo, diagnostics: &mut Diagnostics<'_>) {
    const RULE: &str = "1-63 characters of a-z, 0-9 and '-', not starting or ending with '-'";

    match (&silo.name, &silo.label) {
        (Field::Valid(name), _) if !is_dns_label(&name.value) => diagnostics.report(
            name.offset,
            format!("{}invalid name {:?}; use {RULE}", silo.prefix, name.value),
        ),
        (Field::Absent, Some(label)) if !is_dns_label(label) => diagnostics.report(
            silo.header,
            format!(
                "{}invalid name {label:?} taken from the block label; add name = \"...\" with {RULE}",
                silo.prefix
            ),
        ),
        _ => {}
    }
}

fn check_base(silo: &DeclaredSilo, diagnostics: &mut Diagnostics<'_>) {
    let Some(base) = &silo.base else {
        return;
    };
    let Some(image) = base.value.strip_prefix(IMAGE_SCHEME) else {
        diagnostics.report(
            base.offset,
            format!(
                "{}invalid base {:?}; write img://NAME, such as \"img://{DEFAULT_IMAGE}\"",
                silo.prefix, base.value
            ),
        );
        return;
    };
    if !is_image_name(image) {
        diagnostics.report(
            base.offset,
            format!(
                "{}invalid image name {image:?} in base {:?}; use 1-{MAX_IMAGE_NAME_CHARS} lower-case letters, digits, '-', '_' and '.', starting with a letter or digit",
                silo.prefix, base.value
            ),
        );
    }
}

fn check_binary(binary: &DeclaredBinary, prefix: &str, diagnostics: &mut Diagnostics<'_>) {
    match &binary.path {
        Field::Absent => diagnostics.report(
            binary.header,
            format!("{prefix}missing binary.path; add path = \"/bin/...\" to the binary block"),
        ),
        Field::Valid(path) if !path.value.starts_with('/') => diagnostics.report(
            path.offset,
            format!(
                "{prefix}binary.path {:?} is not absolute; use an absolute path inside the silo, such as \"/bin/sh\"",
                path.value
            ),
        ),
        Field::Valid(_) | Field::Invalid => {}
    }

    for entry in &binary.env {
        let has_key = entry
            .value
            .split_once('=')
            .is_some_and(|(key, _)| !key.is_empty());
        if !has_key {
            diagnostics.report(
                entry.offset,
                format!(
                    "{prefix}invalid binary.env entry {:?}; write it as KEY=VALUE",
                    entry.value
                ),
            );
        }
    }
}

fn check_network(network: &DeclaredNetwork, prefix: &str, diagnostics: &mut Diagnostics<'_>) {
    for nameserver in &network.nameservers {
        if nameserver.value.parse::<IpAddr>().is_err() {
            diagnostics.report(
                nameserver.offset,
                format!(
                    "{prefix}invalid network.nameservers entry {:?}; expected an IPv4 or IPv6 address",
                    nameserver.value
                ),
            );
        }
    }

    for (hostname, address) in &network.hosts {
        if !is_hostname(&hostname.value) {
            diagnostics.report(
                hostname.offset,
                format!(
                    "{prefix}invalid network.hosts hostname {:?}; use dot-separated labels of letters, digits and '-'",
                    hostname.value
                ),
            );
        }
        if address.value.parse::<IpAddr>().is_err() {
            diagnostics.report(
                address.offset,
                format!(
                    "{prefix}invalid network.hosts address {:?} for {:?}; expected an IPv4 or IPv6 address",
                    address.value, hostname.value
                ),
            );
        }
    }
}

/// Checks a silo name: a lower-case DNS label (RFC 1123), because it becomes part of host
/// names and kernel object names.
fn is_dns_label(name: &str) -> bool {
    let length_ok = (1..=MAX_DNS_LABEL_CHARS).contains(&name.len());
    let characters_ok = name
        .bytes()
        .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-');
    length_ok && characters_ok && !name.starts_with('-') && !name.ends_with('-')
}

/// Checks an image name: lower-case letters, digits, '-', '_' and '.', starting with a letter
/// or digit so that it is never `.` or `..`.
fn is_image_name(name: &str) -> bool {
    let starts_well = name
        .bytes()
        .next()
        .is_some_and(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit());
    let characters_ok = name.bytes().all(|byte| {
        byte.is_ascii_lowercase() || byte.is_ascii_digit() || matches!(byte, b'-' | b'_' | b'.')
    });
    starts_well && characters_ok && name.len() <= MAX_IMAGE_NAME_CHARS
}

/// Checks an `/etc/hosts` name: dot-separated labels of ASCII letters, digits and '-', each
/// 1-63 characters and not starting or ending with '-' (RFC 1123, section 2.1).
fn is_hostname(hostname: &str) -> bool {
    if hostname.is_empty() || hostname.len() > MAX_HOSTNAME_CHARS {
        return false;
    }
    hostname.split('.').all(|label| {
        (1..=MAX_DNS_LABEL_CHARS).contains(&label.len())
            && label
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_label_accepts_valid_names() {
        for name in ["a", "test-sh", "web1", "0abc", &"a".repeat(63)] {
            assert!(is_dns_label(name), "{name:?} should be valid");
        }
    }

    #[test]
    fn dns_label_rejects_invalid_names() {
        for name in [
            "",
            "-a",
            "a-",
            "Web",
            "a_b",
            "a.b",
            "a b",
            "é",
            &"a".repeat(64),
        ] {
            assert!(!is_dns_label(name), "{name:?} should be invalid");
        }
    }

    #[test]
    fn hostname_accepts_valid_names() {
        for hostname in ["db", "db.local", "DB-1.example.com", "1host"] {
            assert!(is_hostname(hostname), "{hostname:?} should be valid");
        }
    }

    #[test]
    fn hostname_rejects_invalid_names() {
        let too_long = [
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(63),
        ]
        .join(".");
        for hostname in [
            "",
            "db_1",
            "db..local",
            ".db",
            "db.",
            "-db",
            "db-",
            "a b",
            &"a".repeat(64),
            &too_long,
        ] {
            assert!(!is_hostname(hostname), "{hostname:?} should be invalid");
        }
    }

    #[test]
    fn image_names() {
        for name in ["busybox", "alpine-3.20", "my_image", "0day"] {
            assert!(is_image_name(name), "{name:?} should be valid");
        }
        for name in [
            "",
            ".",
            "..",
            "-x",
            "Alpine",
            "a/b",
            "a:1",
            &"a".repeat(129),
        ] {
            assert!(!is_image_name(name), "{name:?} should be invalid");
        }
    }
}
