//! Integration tests of ess-ingest against the real stack.
