//! Helpers shared by the programs that connect to controllers: colex-cli and colex-agent.

/// Splits a controller list `A,B,C` into addresses, trimming spaces and dropping empty items
/// such as a trailing comma's.
pub fn split_addresses(addresses: &str) -> Vec<String> {
    addresses
        .split(',')
        .map(str::trim)
        .filter(|address| !address.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Returns the innermost cause of an error, because a tonic transport error alone reads only
/// "transport error" and its middle layers repeat themselves.
pub fn root_cause(error: &dyn std::error::Error) -> String {
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
    fn address_lists_are_split() {
        assert_eq!(split_addresses("a:1, b:2,,c:3,"), ["a:1", "b:2", "c:3"]);
        assert_eq!(split_addresses("a:1"), ["a:1"]);
        assert!(split_addresses(" , ").is_empty());
    }

    #[test]
    fn root_cause_is_the_innermost_error() {
        let inner = std::io::Error::other("connection refused");
        let outer = std::io::Error::other(inner);
        assert_eq!(root_cause(&outer), "connection refused");
    }
}
