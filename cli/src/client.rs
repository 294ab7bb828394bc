//! Connection to the controller and the CLI's error type.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use colex_proto as proto;
use colex_proto::addresses::root_cause;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

/// Time allowed to open the TCP connection to the controller.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Deadline of each request, so a controller that accepts the connection
/// but never responds does not hang the CLI.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Time a controller gets to respond to the small request that follows each connection. The
/// kernel accepts connections for a frozen controller, so only a response shows that it works.
/// After this long the next address is tried.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether `list` requests read from the receiving controller's state instead of the leader's.
/// Set once by `main` for `list --stale`, before any request.
static STALE_READS: AtomicBool = AtomicBool::new(false);

/// Makes every later `list` request a stale read, served by the controller it reaches.
pub fn use_stale_reads() {
    STALE_READS.store(true, Ordering::Relaxed);
}

/// Transport of every connection to a controller, set once by `main` before any request.
/// Without it, connections are plain text, as under `--insecure`.
static TRANSPORT: OnceLock<Transport> = OnceLock::new();

/// TLS settings of every connection.
#[derive(Debug, Clone)]
pub struct Transport {
    pub tls: ClientTlsConfig,
    /// Whether `tls` carries this user's certificate; false before enrollment, when the CLI
    /// can only report that it needs one.
    pub enrolled: bool,
    /// Folder the certificate files are read from, for messages.
    pub config_dir: String,
}

/// Makes every later connection use `transport`.
pub fn use_transport(transport: Transport) {
    let _ = TRANSPORT.set(transport);
}

/// Returns an endpoint for `address` (HOST:PORT) with the transport `main` chose.
fn endpoint(address: &str) -> Result<Endpoint, tonic::transport::Error> {
    match TRANSPORT.get() {
        Some(transport) => Endpoint::from_shared(format!("https://{address}"))?.tls_config(transport.tls.clone()),
        None => Endpoint::from_shared(format!("http://{address}")),
    }
}

/// Returns the message for a connection that failed in the TLS handshake, or `None` when
/// `cause` is no TLS failure.
fn tls_failure_message(address: &str, cause: &str) -> Option<String> {
    let transport = TRANSPORT.get()?;
    let lower = cause.to_ascii_lowercase();
    let server_rejected = lower.contains("alert");
    let server_unverified = lower.contains("certificate") || lower.contains("unknownissuer") || lower.contains("invalid peer");
    if !server_rejected && !server_unverified {
        return None;
    }
    if !transport.enrolled {
        return Some(format!(
            "this user is not enrolled (no certificate in {}); run `colex-cli --serv {address} enroll` with the key from the controller's data folder, or pass --insecure for a controller started with --insecure",
            transport.config_dir
        ));
    }
    if server_rejected {
        let reason = if lower.contains("expired") {
            "the certificate has expired"
        } else if lower.contains("unknownca") || lower.contains("unknown ca") || lower.contains("badcertificate") {
            "the certificate was not issued by this cluster's authority"
        } else {
            "the controller did not accept the certificate"
        };
        return Some(format!(
            "controller {address} rejected this client's certificate from {}: {reason} ({cause}); enroll again with `colex-cli enroll`",
            transport.config_dir
        ));
    }
    Some(format!(
        "cannot verify controller {address} with the cluster authority in {} ({cause}); it belongs to another cluster, or this user enrolled with another one",
        transport.config_dir
    ))
}

/// Exit code for mistakes in the command or the silo file.
pub const EXIT_USER_ERROR: u8 = 1;
/// Exit code for a cluster that cannot do what was asked.
pub const EXIT_CLUSTER_ERROR: u8 = 2;
/// Exit code for a result that is printed but incomplete, under `--strict`.
pub const EXIT_PARTIAL_RESULT: u8 = 3;

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

    pub fn partial(message: impl Into<String>) -> Self {
        Self {
            code: EXIT_PARTIAL_RESULT,
            message: message.into(),
        }
    }

    /// Maps a silo file that failed to load to a user error. A read error gets the fix appended,
    /// because the OS error alone (`No such file or directory`) does not say what to do.
    pub fn from_spec(error: &colex_cli::spec::SpecError) -> Self {
        match error {
            colex_cli::spec::SpecError::Read { .. } => {
                Self::user(format!("{error}; check the path and that it is a readable silo file"))
            }
            _ => Self::user(error.to_string()),
        }
    }

    /// Maps a status from the controller: invalid requests are the user's
    /// to fix, everything else is the cluster's.
    pub fn from_status(address: &str, status: &tonic::Status) -> Self {
        let message = format!("controller {address}: {}", status.message());
        match status.code() {
            tonic::Code::InvalidArgument
            | tonic::Code::NotFound
            | tonic::Code::AlreadyExists
            | tonic::Code::PermissionDenied
            | tonic::Code::Unauthenticated => Self::user(message),
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
    format!("cannot reach controller at {address}: {cause}; check that colex-controller runs there or pass its address with --serv or COLEX_SERV")
}

/// A connected client of one controller's `Client` service.
pub struct Controller {
    /// The address connected to, one of those given.
    pub address: String,
    pub client: proto::client_client::ClientClient<Channel>,
    /// The connection, shared with clients of the controller's other services.
    pub channel: Channel,
}

impl Controller {
    /// Connects to the first controller of `addresses` (HOST:PORT[,HOST:PORT...]) that responds.
    pub async fn connect(addresses: &str) -> Result<Self, CliError> {
        Self::connect_first(addresses, Some(REQUEST_TIMEOUT)).await
    }

    /// Connects to the first controller of `addresses` (HOST:PORT[,HOST:PORT...]) that responds,
    /// for a streaming call such as `logs -f`, which has no deadline.
    pub async fn connect_streaming(addresses: &str) -> Result<Self, CliError> {
        Self::connect_first(addresses, None).await
    }

    /// Tries the addresses in the order given. Every address is checked before any connection,
    /// so a typo is reported even when an earlier controller would accept the connection.
    async fn connect_first(addresses: &str, request_timeout: Option<Duration>) -> Result<Self, CliError> {
        let list = split_addresses(addresses);
        for address in &list {
            check_address(address)?;
        }
        let mut failures = Vec::new();
        for address in &list {
            match Self::connect_with(address, request_timeout).await {
                Ok(controller) => return Ok(controller),
                Err(error) if list.len() > 1 => failures.push(error.cause),
                Err(error) => return Err(error.error),
            }
        }
        Err(CliError::cluster(format!(
            "cannot reach any controller: {}; check that colex-controller runs there or pass other addresses with --serv or COLEX_SERV",
            failures.join("; ")
        )))
    }

    async fn connect_with(address: &str, request_timeout: Option<Duration>) -> Result<Self, ConnectFailure> {
        let mut endpoint = endpoint(address).map_err(|error| ConnectFailure {
            cause: format!("{address} (invalid: {error})"),
            error: CliError::user(format!("invalid controller address {address:?} ({error}); use HOST:PORT, e.g. 127.0.0.1:7069")),
        })?;
        if let Some(timeout) = request_timeout {
            endpoint = endpoint.timeout(timeout);
        }
        let channel = endpoint
            .connect_timeout(CONNECT_TIMEOUT)
            .connect()
            .await
            .map_err(|error| {
                let cause = root_cause(&error);
                let error = match tls_failure_message(address, &cause) {
                    Some(message) => CliError::user(message),
                    None => CliError::cluster(unreachable_message(address, &cause)),
                };
                ConnectFailure {
                    error,
                    cause: format!("{address} ({cause})"),
                }
            })?;
        probe(&channel).await.map_err(|cause| ConnectFailure {
            error: match tls_failure_message(address, &cause) {
                Some(message) => CliError::user(message),
                None => CliError::cluster(format!(
                    "controller {address} {cause}; check that colex-controller runs there or pass another address with --serv or COLEX_SERV"
                )),
            },
            cause: format!("{address} ({cause})"),
        })?;
        let client = proto::client_client::ClientClient::new(channel.clone())
            .max_decoding_message_size(proto::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(proto::MAX_MESSAGE_BYTES);
        Ok(Self {
            address: address.to_owned(),
            client,
            channel,
        })
    }

    pub async fn list(&mut self) -> Result<proto::ListResponse, CliError> {
        let mut request = tonic::Request::new(proto::ListRequest::default());
        if STALE_READS.load(Ordering::Relaxed) {
            request.metadata_mut().insert(
                proto::READ_CONSISTENCY_HEADER,
                tonic::metadata::MetadataValue::from_static(proto::STALE_READ),
            );
        }
        self.client
            .list(request)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|status| CliError::from_status(&self.address, &status))
    }
}

/// Sends the controller a local member list request, which it serves from its own state.
/// The error says why the controller is of no use: no response in time, or not a colex
/// controller.
async fn probe(channel: &Channel) -> Result<(), String> {
    let mut request = tonic::Request::new(proto::ListMembersRequest { local: true });
    request.set_timeout(PROBE_TIMEOUT);
    let mut members = proto::members_client::MembersClient::new(channel.clone());
    let response = tokio::time::timeout(PROBE_TIMEOUT, members.list(request)).await;
    match response {
        Ok(Ok(_)) => Ok(()),
        // tonic reports its own request timeout as CANCELLED.
        Ok(Err(status)) if matches!(status.code(), tonic::Code::DeadlineExceeded | tonic::Code::Cancelled) => {
            Err(format!("did not respond within {} s", PROBE_TIMEOUT.as_secs()))
        }
        // A controller that rejects the request has responded all the same.
        Ok(Err(status))
            if matches!(
                status.code(),
                tonic::Code::Unimplemented
                    | tonic::Code::InvalidArgument
                    | tonic::Code::NotFound
                    | tonic::Code::FailedPrecondition
                    | tonic::Code::PermissionDenied
                    | tonic::Code::Unauthenticated
            ) =>
        {
            Ok(())
        }
        // A TLS alert from the controller ends the first request, not the connection: it
        // rejected the client's certificate after the handshake.
        Ok(Err(status)) if root_cause(&status).contains("alert") => Err(root_cause(&status)),
        Ok(Err(status)) => Err(format!("did not respond as a colex controller ({})", status.message())),
        Err(_) => Err(format!("did not respond within {} s", PROBE_TIMEOUT.as_secs())),
    }
}

/// Why one controller of several could not be reached: `cause` names it in the message about
/// all of them, `error` is the whole message when it was the only one.
struct ConnectFailure {
    cause: String,
    error: CliError,
}

/// Splits `--serv A,B,C` into addresses. A value without any address stays one item, so
/// `check_address` reports the empty value.
pub fn split_addresses(addresses: &str) -> Vec<String> {
    let list = colex_proto::addresses::split_addresses(addresses);
    if list.is_empty() {
        return vec![addresses.to_owned()];
    }
    list
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


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_lists_are_split() {
        assert_eq!(split_addresses("a:1,b:2, c:3,"), ["a:1", "b:2", "c:3"]);
        assert_eq!(split_addresses("a:1"), ["a:1"]);
        assert_eq!(split_addresses(""), [""]);
    }

    #[tokio::test]
    async fn unreachable_controllers_are_all_named() {
        // Bind then drop two listeners so their ports are very likely closed.
        let mut addresses = Vec::new();
        for _ in 0..2 {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
            addresses.push(listener.local_addr().expect("local address").to_string());
        }
        let joined = addresses.join(",");
        let error = Controller::connect(&joined).await.err().expect("no controller runs there");
        assert_eq!(error.code, EXIT_CLUSTER_ERROR);
        assert!(error.message.starts_with("cannot reach any controller"), "{}", error.message);
        assert!(error.message.ends_with("with --serv or COLEX_SERV"), "{}", error.message);
        for address in &addresses {
            assert!(error.message.contains(address.as_str()), "{address} named in {}", error.message);
        }
        assert_eq!(error.message.lines().count(), 1, "{}", error.message);
    }

    #[tokio::test]
    async fn unreachable_controller_names_both_settings() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let address = listener.local_addr().expect("local address").to_string();
        drop(listener);
        let error = Controller::connect(&address).await.err().expect("no controller runs there");
        assert!(error.message.starts_with(&format!("cannot reach controller at {address}")), "{}", error.message);
        assert!(error.message.ends_with("pass its address with --serv or COLEX_SERV"), "{}", error.message);
    }

    #[tokio::test]
    async fn silent_controllers_are_skipped_after_probe_timeout() {
        // The kernel completes connections to a listener that never accepts, as for a frozen
        // controller.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let address = silent.local_addr().expect("local address").to_string();
        let started = std::time::Instant::now();
        let error = Controller::connect(&address).await.err().expect("a silent listener is no controller");
        assert!(started.elapsed() < REQUEST_TIMEOUT / 2, "waited {:?}", started.elapsed());
        assert!(error.message.contains("did not respond within 2 s"), "{}", error.message);
        assert!(error.message.ends_with("with --serv or COLEX_SERV"), "{}", error.message);
        assert!(error.message.contains(&address), "{}", error.message);
        assert_eq!(error.code, EXIT_CLUSTER_ERROR);
    }

    #[tokio::test]
    async fn http1_servers_are_not_controllers() {
        let server = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let address = server.local_addr().expect("local address").to_string();
        std::thread::spawn(move || {
            use std::io::{Read, Write};
            for stream in server.incoming().flatten().take(4) {
                let mut stream = stream;
                let mut buffer = [0u8; 1024];
                let _ = stream.read(&mut buffer);
                let _ = stream.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n");
            }
        });
        let error = Controller::connect(&address).await.err().expect("an HTTP/1 server is no controller");
        assert!(error.message.contains(&address), "{}", error.message);
        assert_eq!(error.code, EXIT_CLUSTER_ERROR);
        assert_eq!(error.message.lines().count(), 1, "{}", error.message);
    }

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
