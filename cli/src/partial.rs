//! `list --strict`: a listing in which some host's agent is not connected is a partial result.

use colex_proto as proto;

use crate::client::CliError;

/// Fails with exit code 3 when a host of `listed` is not UP. The silos of such a host show the
/// state its agent last reported, which may be out of date.
pub fn require_live_hosts(listed: &proto::ListResponse) -> Result<(), CliError> {
    let stale: Vec<&str> = listed
        .hosts
        .iter()
        .filter(|host| host.state() != proto::HostState::Up)
        .map(|host| host.name.as_str())
        .collect();
    let subject = match stale.as_slice() {
        [] => return Ok(()),
        [host] => format!("host {host} is"),
        hosts => format!("hosts {} are", hosts.join(", ")),
    };
    Err(CliError::partial(format!(
        "{subject} DOWN, so the listing shows the silo states their agents last reported; \
         restart colex-agent there, or leave out --strict to accept a partial result"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::EXIT_PARTIAL_RESULT;

    fn host(name: &str, state: proto::HostState) -> proto::HostInfo {
        proto::HostInfo {
            name: name.to_owned(),
            state: state.into(),
            ..Default::default()
        }
    }

    #[test]
    fn live_hosts_pass() {
        let listed = proto::ListResponse {
            hosts: vec![host("h1", proto::HostState::Up)],
            silos: Vec::new(),
        };
        assert!(require_live_hosts(&listed).is_ok());
    }

    #[test]
    fn down_hosts_are_named() {
        let listed = proto::ListResponse {
            hosts: vec![
                host("h1", proto::HostState::Down),
                host("h2", proto::HostState::Up),
                host("h3", proto::HostState::Down),
            ],
            silos: Vec::new(),
        };
        let error = require_live_hosts(&listed).expect_err("two hosts are down");
        assert_eq!(error.code, EXIT_PARTIAL_RESULT);
        assert!(error.message.starts_with("hosts h1, h3 are DOWN"), "{}", error.message);
    }
}
