//! How a command fails: a usage/input problem (exit 2) or a runtime failure (exit 1),
//! printed as one line, then `caused by:` lines.

use std::process::ExitCode;

#[derive(Debug)]
pub enum Failure {
    /// Bad usage or invalid input: exit code 2. Never worth retrying as is.
    Input(anyhow::Error),
    /// Everything else: exit code 1.
    Runtime(anyhow::Error),
    /// A worker stopped by a signal (preemption, a time limit, ctrl-c) after giving its jobs
    /// back: exit code 75 (EX_TEMPFAIL). Start it again; its runs resume from their last
    /// checkpoints, and no attempt was spent.
    Preempted,
    /// A worker could not reach its server (after retrying for five minutes): exit code 69
    /// (EX_UNAVAILABLE). Infrastructure: retry later.
    Unavailable(anyhow::Error),
}

impl Failure {
    pub fn input(message: impl std::fmt::Display) -> Self {
        Failure::Input(anyhow::anyhow!("{message}"))
    }

    pub fn report(self) -> ExitCode {
        let (error, code) = match self {
            Failure::Input(e) => (e, 2),
            Failure::Runtime(e) => (e, 1),
            Failure::Preempted => {
                eprintln!("stopped by a signal: every job was given back and resumes elsewhere (exit 75)");
                return ExitCode::from(75);
            }
            Failure::Unavailable(e) => (e, 69),
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
