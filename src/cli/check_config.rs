//! `linewatch check-config PATH`: validates a configuration and prints every problem found.

use std::path::{Path, PathBuf};

use crate::config::Config;

/// Arguments of `linewatch check-config`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The configuration file to check (default: the one given with --config).
    pub path: Option<PathBuf>,
}

pub fn main(args: Args, config: Option<&Path>) -> super::Outcome {
    let Some(path) = args.path.as_deref().or(config) else {
        return Err(super::Failure::usage(
            "check-config needs a PATH (or --config PATH)",
        ));
    };
    match Config::load(path) {
        Ok(cfg) => {
            println!("{}: ok (config version {})", path.display(), cfg.version());
            Ok(())
        }
        Err(e) => {
            for p in &e.problems {
                println!("{p}");
            }
            Err(super::Failure::usage(format!(
                "{} problem(s) in {}",
                e.problems.len(),
                path.display()
            )))
        }
    }
}
