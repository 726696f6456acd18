//! One error type for every load: which step failed, the system call's errno
//! and, for a verifier rejection, the verifier's log.

use std::fmt;

#[derive(Debug)]
pub struct LoadError {
    /// The step that failed ("program load", "gate pin", ...).
    pub what: &'static str,
    /// The errno of the failed system call (EINVAL where there was none).
    pub errno: i32,
    /// The verifier's log when the kernel rejected a program, else empty.
    pub log: String,
    /// The library's one-line description of the failure.
    pub detail: String,
}

impl LoadError {
    pub fn new(what: &'static str, err: &(dyn std::error::Error + 'static)) -> Self {
        let mut errno = libc::EINVAL;
        let mut source = Some(err);
        while let Some(e) = source {
            if let Some(code) = e
                .downcast_ref::<std::io::Error>()
                .and_then(std::io::Error::raw_os_error)
            {
                errno = code;
                break;
            }
            source = e.source();
        }
        let log = match err.downcast_ref::<aya::programs::ProgramError>() {
            Some(aya::programs::ProgramError::LoadError { verifier_log, .. }) => {
                verifier_log.to_string()
            }
            _ => String::new(),
        };
        let detail = err
            .to_string()
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned();
        Self {
            what,
            errno,
            log,
            detail,
        }
    }

    /// A failed system call of the loader itself: its errno says it all.
    pub fn io(what: &'static str, err: &std::io::Error) -> Self {
        Self {
            detail: String::new(),
            ..Self::new(what, err)
        }
    }
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.detail.is_empty() {
            f.write_str(self.what)
        } else {
            write!(f, "{}: {}", self.what, self.detail)
        }
    }
}

impl std::error::Error for LoadError {}
