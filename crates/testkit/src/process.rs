//! Running commands and signalling processes.

use std::process::{Child, Command, Output};

/// Runs `cmd` to its end and asserts it succeeded (showing its stderr and stdout if not);
/// its output.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    out
}

/// `kill -<signal>` (`TERM`, `STOP`, `CONT`, …) of `child`; whether it was delivered.
pub fn signal(child: &Child, signal: &str) -> bool {
    Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(child.id().to_string())
        .status()
        .is_ok_and(|status| status.success())
}
