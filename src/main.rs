//! The `linewatch` binary: parses arguments and hands over to the library.

fn main() -> std::process::ExitCode {
    linewatch::cli::main()
}
