//! Reading log files. Pure: no I/O.
//!
//! [`lines`] cuts a byte stream into capped lines with offsets; [`container`] decodes Docker
//! json-file and CRI lines; [`decoder`] is one file's decoding from bytes to whole records,
//! with the resume point a checkpoint may record.

pub mod container;
pub mod decoder;
pub mod lines;
pub mod multiline;
