//! ess ingest
