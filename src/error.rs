//! The top-level error: every module's error, printed by `main` as one sentence.

use crate::bench::BenchError;
use crate::config::ConfigError;
use crate::event_loop::LoopError;
use crate::namespace::NamespaceError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Namespace(#[from] NamespaceError),
    #[error(transparent)]
    Loop(#[from] LoopError),
    #[error(transparent)]
    Bench(#[from] BenchError),
    #[error(transparent)]
    Kernel(#[from] crate::kernel::KernelError),
    /// A kernel-path command used without root: the whole sentence.
    #[error("{0}")]
    NeedsRoot(String),
    /// An option that does not apply to the chosen --network mode.
    #[error("{option} does not apply to --network {mode}")]
    NotForMode { option: String, mode: &'static str },
    /// A bad egress rule or policy file (the sentence names the text).
    #[error("{0}")]
    Policy(String),
}

impl Error {
    /// The process exit code for this error (the guest command's own codes pass through
    /// `commands::run`; 125 is what `docker run`/`podman run` use for their own failures).
    pub fn exit_code(&self) -> i32 {
        125
    }

    /// The sentence for the user: the error and its causes, joined.
    pub fn sentence(&self) -> String {
        let mut text = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(cause) = source {
            let cause_text = cause.to_string();
            if !text.contains(&cause_text) {
                text.push_str(": ");
                text.push_str(&cause_text);
            }
            source = cause.source();
        }
        text
    }
}
