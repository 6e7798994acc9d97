//! ess sink
