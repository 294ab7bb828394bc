//! Rules on the values of declared silos: names, paths, environment entries, images and
//! network addresses. Type errors were reported while reading, so this module checks meaning only.

use std::collections::HashMap;
use std::net::IpAddr;

use super::declared::{file_prefix, DeclaredBinary, DeclaredFile, DeclaredNetwork, DeclaredSilo};
use super::diagnostics::Diagnostics;
use super::value::Field;

/// The only image the runtime has built in, and the default `base`.
pub(super) const BUILT_IN_BASE: &str = "img://busybox";

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
        check_files(&silo.files, &silo.prefix, diagnostics);
        if let Some(network) = &silo.network {
            check_network(network, &silo.prefix, diagnostics);
        }
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
    if base.value != BUILT_IN_BASE {
        diagnostics.report(
            base.offset,
            format!(
                "{}image {:?} is not supported yet; only {BUILT_IN_BASE} is built in",
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

fn check_files(files: &[DeclaredFile], silo_prefix: &str, diagnostics: &mut Diagnostics<'_>) {
    let mut first_use_of_label: HashMap<&str, usize> = HashMap::new();
    let mut first_use_of_silo_path: HashMap<&str, usize> = HashMap::new();

    for file in files {
        let prefix = file_prefix(silo_prefix, &file.label);

        match first_use_of_label.get(file.label.as_str()) {
            Some(&first) => {
                let first_position = diagnostics.position(first);
                diagnostics.report(
                    file.header,
                    format!(
                        "{silo_prefix}duplicate file block {:?}, first at {first_position}; give each file block its own label",
                        file.label
                    ),
                );
            }
            None => {
                first_use_of_label.insert(&file.label, file.header);
            }
        }

        if file.path.is_absent() {
            diagnostics.report(
                file.header,
                format!("{prefix}missing path; add path = \"...\" (relative paths start at the silo file's folder)"),
            );
        }

        let silo_path = match &file.silo_path {
            Field::Valid(silo_path) => silo_path,
            Field::Invalid => continue,
            Field::Absent => {
                diagnostics.report(
                    file.header,
                    format!("{prefix}missing silo_path; add silo_path = \"/...\" (an absolute path inside the silo)"),
                );
                continue;
            }
        };
        if let Some(problem) = silo_path_problem(&silo_path.value) {
            diagnostics.report(silo_path.offset, format!("{prefix}{problem}"));
            continue;
        }
        match first_use_of_silo_path.get(silo_path.value.as_str()) {
            Some(&first) => {
                let first_position = diagnostics.position(first);
                diagnostics.report(
                    silo_path.offset,
                    format!(
                        "{prefix}duplicate silo_path {:?}, first used at {first_position}; give each file its own silo_path",
                        silo_path.value
                    ),
                );
            }
            None => {
                first_use_of_silo_path.insert(&silo_path.value, silo_path.offset);
            }
        }
    }
}

/// Describes what is wrong with a file's path inside the silo, if anything. The agent writes
/// the file there, so the path must be absolute and must not climb out with `..`.
fn silo_path_problem(silo_path: &str) -> Option<String> {
    if !silo_path.starts_with('/') {
        return Some(format!(
            "silo_path {silo_path:?} is not absolute; start it with /"
        ));
    }
    if silo_path.split('/').any(|component| component == "..") {
        return Some(format!(
            "silo_path {silo_path:?} contains a \"..\" component; write the path without \"..\""
        ));
    }
    if silo_path.ends_with('/') {
        return Some(format!(
            "silo_path {silo_path:?} ends with /; write the path of the file itself"
        ));
    }
    None
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
    fn silo_path_rules() {
        assert_eq!(silo_path_problem("/script.sh"), None);
        assert_eq!(silo_path_problem("/etc/app/conf.d/x.conf"), None);
        assert_eq!(silo_path_problem("/a..b"), None);
        assert_eq!(
            silo_path_problem("script.sh"),
            Some("silo_path \"script.sh\" is not absolute; start it with /".to_owned())
        );
        assert_eq!(
            silo_path_problem("/etc/../x"),
            Some("silo_path \"/etc/../x\" contains a \"..\" component; write the path without \"..\"".to_owned())
        );
        assert_eq!(
            silo_path_problem("/etc/"),
            Some("silo_path \"/etc/\" ends with /; write the path of the file itself".to_owned())
        );
    }
}
