//! Integration tests of ess-sink against the real stack.
