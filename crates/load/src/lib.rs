//! ess load
