//! What rolemint tells its operators: the audit log, metrics and logging.

pub mod audit;
pub mod logging;
pub mod metrics;
