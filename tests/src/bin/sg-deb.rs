//! `cargo xtask deb`: the Debian package of the release build, in
//! target/debian/.

use std::process::ExitCode;

fn main() -> ExitCode {
    let binary = sg_tests::agent::binary();
    let out = binary
        .parent()
        .and_then(|p| p.parent())
        .expect("target/<profile>/sg-agent")
        .join("debian");
    if let Err(e) = std::fs::create_dir_all(&out) {
        eprintln!("error: {}: {e}", out.display());
        return ExitCode::FAILURE;
    }
    match sg_tests::package::build(&binary, &out) {
        Ok(deb) => {
            println!("{}", deb.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
