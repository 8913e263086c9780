//! `linewatch generate` (being written).

use std::path::Path;

/// Arguments of `linewatch generate`.
#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn main(_args: Args, _config: Option<&Path>) -> super::Outcome {
    Err(super::Failure::runtime(
        "`linewatch generate` is not built yet",
    ))
}
