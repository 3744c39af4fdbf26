//! How a command fails: a usage/input problem (exit 2) or a runtime failure (exit 1),
//! printed as one line, then `caused by:` lines.

use std::process::ExitCode;

#[derive(Debug)]
pub enum Failure {
    /// Bad usage or invalid input: exit code 2.
    Input(anyhow::Error),
    /// Everything else: exit code 1.
    Runtime(anyhow::Error),
}

impl Failure {
    pub fn input(message: impl std::fmt::Display) -> Self {
        Failure::Input(anyhow::anyhow!("{message}"))
    }

    pub fn report(self) -> ExitCode {
        let (error, code) = match self {
            Failure::Input(e) => (e, 2),
            Failure::Runtime(e) => (e, 1),
        };
        eprintln!("error: {error}");
        for cause in error.chain().skip(1) {
            eprintln!("caused by: {cause}");
        }
        ExitCode::from(code)
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Runtime(e)
    }
}
