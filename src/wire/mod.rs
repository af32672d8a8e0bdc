//! What logmill puts on NSQ besides line protocol: [`log_record`], the `logs` topic's JSON,
//! exactly as the old fluentd plugin sent it, and its reader for the consumer. Pure.

pub mod log_record;
