//! The `sg-agent` command: everything is in the library's `cli` module, so
//! the verbs, their arguments and their exit codes live in one place.

fn main() -> std::process::ExitCode {
    sg_agent::cli::main()
}
