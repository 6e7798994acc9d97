//! Which ClickHouse failures are worth retrying.
//!
//! The rule: retry everything that can heal by itself (network, timeouts, a replica or
//! ZooKeeper away, too many parts, a read-only table, memory pressure) and everything that
//! needs an operator but loses nothing by waiting (unknown table, access denied). Only errors
//! that say *these rows* are bad are not retried: the batch is split to find the rows and they
//! go to the dead-letter topic. An unknown error code is retried: waiting costs latency,
//! dead-lettering good rows would cost data.

use clickhouse::error::Error;

/// What to do about a failed insert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Try the same block again after a backoff.
    Retry,
    /// The data is refused: split the batch, dead-letter the refused rows.
    BadData,
    /// The block touches more table partitions than the server takes in one insert
    /// (`max_partitions_per_insert_block`, current servers): split it, losing nothing.
    Split,
}

/// ClickHouse error codes that blame the inserted data.
const BAD_DATA: &[(u32, &str)] = &[
    (6, "CANNOT_PARSE_TEXT"),
    (26, "CANNOT_PARSE_QUOTED_STRING"),
    (27, "CANNOT_PARSE_INPUT_ASSERTION_FAILED"),
    (32, "ATTEMPT_TO_READ_AFTER_EOF"),
    (33, "CANNOT_READ_ALL_DATA"),
    (38, "CANNOT_PARSE_DATE"),
    (41, "CANNOT_PARSE_DATETIME"),
    (53, "TYPE_MISMATCH"),
    (69, "ARGUMENT_OUT_OF_BOUND"),
    (70, "CANNOT_CONVERT_TYPE"),
    (72, "CANNOT_PARSE_NUMBER"),
    (117, "INCORRECT_DATA"),
    (131, "TOO_LARGE_STRING_SIZE"),
    (246, "CORRUPTED_DATA"),
    (321, "VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE"),
    (376, "CANNOT_PARSE_UUID"),
];

/// Codes retried although they are not transient on their own: listed so the choice is
/// explicit. The other retried codes are transient by nature: 159 TIMEOUT_EXCEEDED,
/// 202 TOO_MANY_SIMULTANEOUS_QUERIES, 209 SOCKET_TIMEOUT, 210 NETWORK_ERROR,
/// 216 QUERY_WITH_SAME_ID_IS_ALREADY_RUNNING, 225 NO_ZOOKEEPER, 234 NO_REPLICA_HAS_PART, 241 MEMORY_LIMIT_EXCEEDED, 242 TABLE_IS_READ_ONLY,
/// 252 TOO_MANY_PARTS, 279 ALL_CONNECTION_TRIES_FAILED, 319 UNKNOWN_STATUS_OF_INSERT,
/// 999 KEEPER_EXCEPTION.
pub const RETRIED_CONFIGURATION: &[(u32, &str)] = &[
    (16, "NO_SUCH_COLUMN_IN_TABLE"),
    (60, "UNKNOWN_TABLE"),
    (81, "UNKNOWN_DATABASE"),
    (164, "READONLY"),
    (192, "UNKNOWN_USER"),
    (193, "WRONG_PASSWORD"),
    (497, "ACCESS_DENIED"),
    (516, "AUTHENTICATION_FAILED"),
];

/// The ClickHouse error code in a server error message (`Code: 252, e.displayText() = …`).
pub fn error_code(error: &Error) -> Option<u32> {
    let Error::BadResponse(text) = error else {
        return None;
    };
    let text = text.trim_start();
    if let Some(rest) = text.strip_prefix("Code:") {
        let digits: String = rest
            .trim_start()
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        return digits.parse().ok();
    }
    // A bare code (the X-ClickHouse-Exception-Code header without a body).
    text.parse().ok()
}

/// Retry or split.
pub fn classify(error: &Error) -> Disposition {
    match error {
        // Code 252 is both "too many parts" (merges are behind: wait) and "too many
        // partitions for single INSERT block" (waiting never helps: split). Only the text
        // tells them apart.
        Error::BadResponse(text)
            if error_code(error) == Some(252) && text.contains("Too many partitions") =>
        {
            Disposition::Split
        }
        Error::BadResponse(_) => match error_code(error) {
            Some(code) if BAD_DATA.iter().any(|(c, _)| *c == code) => Disposition::BadData,
            _ => Disposition::Retry,
        },
        // Network, timeouts, compression on our side, anything else: the rows are not to blame.
        _ => Disposition::Retry,
    }
}

/// A name for a code, for logs and dead-letter reasons.
pub fn code_name(code: u32) -> &'static str {
    BAD_DATA
        .iter()
        .chain(RETRIED_CONFIGURATION)
        .find(|(c, _)| *c == code)
        .map(|(_, n)| *n)
        .unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(text: &str) -> Error {
        Error::BadResponse(text.into())
    }

    #[test]
    fn transient_failures_are_retried() {
        for text in [
            "Code: 252, e.displayText() = DB::Exception: Too many parts (300)",
            "Code: 242, e.displayText() = DB::Exception: Table is in readonly mode",
            "Code: 999, e.displayText() = Coordination::Exception: Connection loss",
            "Code: 234, e.displayText() = DB::Exception: No active replica has part",
            "Code: 279, e.displayText() = DB::NetException: All connection tries failed",
            "Code: 60, e.displayText() = DB::Exception: Table ess.events doesn't exist",
            "503 Service Unavailable",
            "",
        ] {
            assert_eq!(classify(&server(text)), Disposition::Retry, "{text}");
        }
        assert_eq!(classify(&Error::TimedOut), Disposition::Retry);
        assert_eq!(
            classify(&Error::Network("Connection refused".into())),
            Disposition::Retry
        );
    }

    #[test]
    fn too_many_partitions_is_split_but_too_many_parts_retried() {
        let partitions = "Code: 252. DB::Exception: Too many partitions for single INSERT \
                          block (more than 100). The limit is controlled by \
                          'max_partitions_per_insert_block' setting. (TOO_MANY_PARTS)";
        assert_eq!(classify(&server(partitions)), Disposition::Split);
        let parts = "Code: 252. DB::Exception: Too many parts (3001 with average size of \
                     9.31 KiB) in table 'ess.events_local'. Merges are processing \
                     significantly slower than inserts. (TOO_MANY_PARTS)";
        assert_eq!(classify(&server(parts)), Disposition::Retry);
    }

    #[test]
    fn bad_data_is_split_not_retried() {
        for text in [
            "Code: 27, e.displayText() = DB::Exception: Cannot parse input",
            "Code: 53, e.displayText() = DB::Exception: Type mismatch",
            "Code: 6, e.displayText() = DB::Exception: Cannot parse text",
            "Code: 33, e.displayText() = DB::Exception: Cannot read all data",
            "53",
        ] {
            assert_eq!(classify(&server(text)), Disposition::BadData, "{text}");
        }
        assert_eq!(error_code(&server("Code: 27, e.displayText()")), Some(27));
        assert_eq!(code_name(27), "CANNOT_PARSE_INPUT_ASSERTION_FAILED");
    }
}
