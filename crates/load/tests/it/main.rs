//! Integration tests of ess-load against the real stack.
