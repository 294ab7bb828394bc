//! Durations such as "1h30m" and sizes such as "64MiB", as written in silo files.

/// Duration units from largest to smallest, with their length in milliseconds. A duration
/// names each unit at most once, in this order.
const DURATION_UNITS: [(&str, u64); 4] = [("h", 3_600_000), ("m", 60_000), ("s", 1_000), ("ms", 1)];

/// Size units with their factor in bytes: binary (KiB = 1024 B) and decimal (KB = 1000 B).
const SIZE_UNITS: [(&str, u64); 9] = [
    ("B", 1),
    ("KiB", 1 << 10),
    ("MiB", 1 << 20),
    ("GiB", 1 << 30),
    ("TiB", 1 << 40),
    ("KB", 1_000),
    ("MB", 1_000_000),
    ("GB", 1_000_000_000),
    ("TB", 1_000_000_000_000),
];

/// Why a duration or size does not parse. Messages are lower-case fragments that the caller
/// puts after the offending value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum UnitError {
    #[error("it is empty")]
    Empty,
    #[error("expected a number at {0:?}")]
    MissingNumber(String),
    #[error("fractions are not accepted; write a whole number of a smaller unit")]
    Fraction,
    #[error("{0} has no unit")]
    MissingUnit(String),
    #[error("unknown unit {0:?}")]
    UnknownUnit(String),
    #[error("unit {0:?} is repeated or out of order (write the largest unit first, each once)")]
    UnitOrder(String),
    #[error("it is too large")]
    Overflow,
}

/// How one kind of value with units is named and written, for messages.
#[derive(Debug)]
pub(super) struct UnitSyntax {
    pub(super) kind: &'static str,
    /// The fix that ends a message about an invalid value.
    pub(super) hint: &'static str,
}

pub(super) const DURATION_SYNTAX: UnitSyntax = UnitSyntax {
    kind: "duration",
    hint: "write whole numbers with units h, m, s or ms, largest first, such as \"500ms\", \"5s\" or \"1h30m\"",
};

pub(super) const SIZE_SYNTAX: UnitSyntax = UnitSyntax {
    kind: "size",
    hint: "write a whole number of bytes or a whole number with unit B, KiB, MiB, GiB, TiB, KB, MB, GB or TB, such as \"64MiB\"",
};

/// Parses a duration made of one or more `<whole number><unit>` parts, such as "500ms", "5s"
/// or "1h30m", into milliseconds. Units are h, m, s and ms, each at most once, largest first.
/// Fractions ("1.5s") are not accepted: write "1500ms" or "1s500ms".
pub(super) fn parse_duration_ms(text: &str) -> Result<u64, UnitError> {
    if text.is_empty() {
        return Err(UnitError::Empty);
    }

    let mut rest = text;
    let mut total_ms: u64 = 0;
    // Index into DURATION_UNITS of the next unit allowed, so units only go down.
    let mut next_unit = 0;
    while !rest.is_empty() {
        let (number, after_number) = split_number(rest)?;
        let unit_length = after_number
            .find(|character: char| !character.is_ascii_alphabetic())
            .unwrap_or(after_number.len());
        let (unit, after_unit) = after_number.split_at(unit_length);
        if unit.is_empty() {
            return Err(UnitError::MissingUnit(number.to_string()));
        }

        let Some(position) = DURATION_UNITS.iter().position(|(name, _)| *name == unit) else {
            return Err(UnitError::UnknownUnit(unit.to_owned()));
        };
        if position < next_unit {
            return Err(UnitError::UnitOrder(unit.to_owned()));
        }
        next_unit = position + 1;

        let unit_ms = DURATION_UNITS[position].1;
        total_ms = number
            .checked_mul(unit_ms)
            .and_then(|part| total_ms.checked_add(part))
            .ok_or(UnitError::Overflow)?;
        rest = after_unit;
    }
    Ok(total_ms)
}

/// Parses a size: a whole number of bytes ("1048576") or a whole number and a unit ("64MiB",
/// "64 MiB", "1GB"), into bytes.
pub(super) fn parse_size_bytes(text: &str) -> Result<u64, UnitError> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(UnitError::Empty);
    }

    let (number, after_number) = split_number(trimmed)?;
    let unit = after_number.trim_start();
    if unit.is_empty() {
        return Ok(number);
    }
    let Some((_, factor)) = SIZE_UNITS.iter().find(|(name, _)| *name == unit) else {
        return Err(UnitError::UnknownUnit(unit.to_owned()));
    };
    number.checked_mul(*factor).ok_or(UnitError::Overflow)
}

/// Splits the leading decimal digits off `text` and returns their value and the rest.
fn split_number(text: &str) -> Result<(u64, &str), UnitError> {
    let digits_length = text
        .find(|character: char| !character.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, rest) = text.split_at(digits_length);
    if digits.is_empty() {
        return Err(UnitError::MissingNumber(text.to_owned()));
    }
    if rest.starts_with('.') {
        return Err(UnitError::Fraction);
    }
    // Only digits remain, so the only possible failure is a value past u64::MAX.
    let number = digits.parse::<u64>().map_err(|_| UnitError::Overflow)?;
    Ok((number, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        let cases = [
            ("500ms", 500),
            ("5s", 5_000),
            ("2m", 120_000),
            ("1h30m", 5_400_000),
            ("1h2m3s4ms", 3_723_004),
            ("0s", 0),
            ("1s500ms", 1_500),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_duration_ms(text), Ok(expected), "duration {text:?}");
        }
    }

    #[test]
    fn durations_rejected() {
        let cases = [
            ("", UnitError::Empty),
            ("5", UnitError::MissingUnit("5".to_owned())),
            ("s", UnitError::MissingNumber("s".to_owned())),
            ("1.5s", UnitError::Fraction),
            ("5x", UnitError::UnknownUnit("x".to_owned())),
            ("5 s", UnitError::MissingUnit("5".to_owned())),
            ("5S", UnitError::UnknownUnit("S".to_owned())),
            ("30m1h", UnitError::UnitOrder("h".to_owned())),
            ("1s1s", UnitError::UnitOrder("s".to_owned())),
            ("-5s", UnitError::MissingNumber("-5s".to_owned())),
            ("99999999999999999999s", UnitError::Overflow),
            ("9999999999999999h", UnitError::Overflow),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_duration_ms(text), Err(expected), "duration {text:?}");
        }
    }

    #[test]
    fn sizes_parse() {
        let cases = [
            ("1048576", 1_048_576),
            ("0", 0),
            ("64MiB", 64 << 20),
            ("64 MiB", 64 << 20),
            ("1KiB", 1024),
            ("2GiB", 2 << 30),
            ("1TiB", 1 << 40),
            ("512B", 512),
            ("1KB", 1_000),
            ("5MB", 5_000_000),
            ("1GB", 1_000_000_000),
            (" 3 KB ", 3_000),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_size_bytes(text), Ok(expected), "size {text:?}");
        }
    }

    #[test]
    fn sizes_rejected() {
        let cases = [
            ("", UnitError::Empty),
            ("MiB", UnitError::MissingNumber("MiB".to_owned())),
            ("64mib", UnitError::UnknownUnit("mib".to_owned())),
            ("64M", UnitError::UnknownUnit("M".to_owned())),
            ("1.5GiB", UnitError::Fraction),
            ("-1", UnitError::MissingNumber("-1".to_owned())),
            ("99999999999999999999", UnitError::Overflow),
            ("20000000TiB", UnitError::Overflow),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_size_bytes(text), Err(expected), "size {text:?}");
        }
    }
}
