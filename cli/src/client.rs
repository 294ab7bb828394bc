//! Connection to the controller and the CLI's error type.

use std::fmt;
use std::time::Duration;

use colex_proto as proto;
use tonic::transport::Channel;

/// Time allowed to open the TCP connection to the controller.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Deadline of each request, so a controller that accepts the connection
/// but never responds does not hang the CLI.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Exit code for mistakes in the command or the silo file.
pub const EXIT_USER_ERROR: u8 = 1;
/// Exit code for a cluster that cannot do what was asked.
pub const EXIT_CLUSTER_ERROR: u8 = 2;

/// A failure that ends the command: the one-line message and exit code.
#[derive(Debug)]
pub struct CliError {
    pub code: u8,
    pub message: String,
}

impl CliError {
    pub fn user(message: impl Into<String>) -> Self {
        Self {
            code: EXIT_USER_ERROR,
            message: message.into(),
        }
    }

    pub fn cluster(message: impl Into<String>) -> Self {
        Self {
            code: EXIT_CLUSTER_ERROR,
            message: message.into(),
        }
    }

    /// Maps a status from the controller: invalid requests are the user's
    /// to fix, everything else is the cluster's.
    pub fn from_status(address: &str, status: &tonic::Status) -> Self {
        let message = format!("controller {address}: {}", status.message());
        match status.code() {
            tonic::Code::InvalidArgument | tonic::Code::NotFound | tonic::Code::AlreadyExists => Self::user(message),
            tonic::Code::Unavailable if status.message().contains("tcp connect") || status.message().is_empty() => {
                Self::cluster(unreachable_message(address, status.message()))
            }
            _ => Self::cluster(message),
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.message)
    }
}

fn unreachable_message(address: &str, cause: &str) -> String {
    format!("cannot reach controller at {address}: {cause}; check that colex-controller runs there or pass its address with --serv")
}

/// A connected client of the controller's `Client` service.
pub struct Controller {
    pub address: String,
    pub client: proto::client_client::ClientClient<Channel>,
}

impl Controller {
    /// Connects to `address` (HOST:PORT).
    pub async fn connect(address: &str) -> Result<Self, CliError> {
        Self::connect_with(address, Some(REQUEST_TIMEOUT)).await
    }

    async fn connect_with(address: &str, request_timeout: Option<Duration>) -> Result<Self, CliError> {
        check_address(address)?;
        let mut endpoint = Channel::from_shared(format!("http://{address}")).map_err(|error| {
            CliError::user(format!("invalid controller address {address:?} ({error}); use HOST:PORT, e.g. 127.0.0.1:7069"))
        })?;
        if let Some(timeout) = request_timeout {
            endpoint = endpoint.timeout(timeout);
        }
        let channel = endpoint
            .connect_timeout(CONNECT_TIMEOUT)
            .connect()
            .await
            .map_err(|error| CliError::cluster(unreachable_message(address, &root_cause(&error))))?;
        let client = proto::client_client::ClientClient::new(channel)
            .max_decoding_message_size(proto::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(proto::MAX_MESSAGE_BYTES);
        Ok(Self {
            address: address.to_owned(),
            client,
        })
    }

    /// Connects to `address` for a streaming call such as `logs -f`, which has no deadline.
    pub async fn connect_streaming(address: &str) -> Result<Self, CliError> {
        Self::connect_with(address, None).await
    }

    pub async fn list(&mut self) -> Result<proto::ListResponse, CliError> {
        self.client
            .list(proto::ListRequest {})
            .await
            .map(tonic::Response::into_inner)
            .map_err(|status| CliError::from_status(&self.address, &status))
    }
}

/// Checks that `address` is HOST:PORT before any connection is tried, so a
/// typo is reported as such instead of as an unreachable controller.
pub fn check_address(address: &str) -> Result<(), CliError> {
    let invalid = |reason: &str| {
        CliError::user(format!(
            "invalid controller address {address:?}: {reason}; use HOST:PORT, e.g. 127.0.0.1:7069 (set by --serv or COLEX_SERV)"
        ))
    };
    if address.contains("://") {
        return Err(invalid("write it without a scheme such as http://"));
    }
    let Some((host, port)) = address.rsplit_once(':') else {
        return Err(invalid("the port is missing"));
    };
    if host.is_empty() {
        return Err(invalid("the host is missing"));
    }
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Err(invalid(&format!("{port:?} is not a port number from 1 to 65535"))),
        Ok(_) => Ok(()),
    }
}

/// Returns the innermost cause of an error, because tonic's transport error
/// alone only reads "transport error" and its middle layers repeat themselves.
fn root_cause(error: &dyn std::error::Error) -> String {
    let mut cause: &dyn std::error::Error = error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_checked() {
        assert!(check_address("127.0.0.1:7069").is_ok());
        assert!(check_address("controller.example:7069").is_ok());
        assert!(check_address("[::1]:7069").is_ok());
        for (bad, phrase) in [
            ("127.0.0.1", "port is missing"),
            ("127.0.0.1:7069x", "not a port number"),
            ("localhost:70699", "not a port number"),
            ("http://127.0.0.1:7069", "without a scheme"),
            (":7069", "host is missing"),
        ] {
            let error = check_address(bad).expect_err(bad);
            assert!(error.message.contains(phrase), "{bad}: {}", error.message);
            assert!(error.message.contains(bad), "{bad} named in {}", error.message);
        }
    }
}
