//! `logmill check-config` and `logmill parsers`: what the settings in force are.

use std::process::ExitCode;

use crate::config::{RawConfig, Settings};

/// Prints the effective configuration (file and environment) and what it resolved to.
pub fn check_config(raw: &RawConfig, settings: &Settings) -> ExitCode {
    print!("{}", raw.to_toml());
    println!("\n# effective host: {}", settings.host);
    let names: Vec<&str> = settings.parsers.iter().map(|d| d.name.as_str()).collect();
    println!("# parser definitions: {}", names.join(", "));
    ExitCode::SUCCESS
}

/// Lists the log-format definitions in force.
pub fn parsers(settings: &Settings) -> ExitCode {
    for d in settings.parsers.iter() {
        let origin = if d.builtin { "built-in" } else { "user" };
        println!("{:<20} {:<9} {}", d.name, origin, d.description);
    }
    ExitCode::SUCCESS
}
