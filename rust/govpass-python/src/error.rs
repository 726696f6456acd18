//! The one place where Rust errors become Python exceptions. The exception
//! classes themselves live in `govpass.errors`.

use pyo3::prelude::*;

pyo3::import_exception!(govpass.errors, ConfigError);
pyo3::import_exception!(govpass.errors, BackendError);

/// `BackendError` for a failed system call of the packet loop.
#[cfg(target_os = "linux")]
pub fn backend_error(what: &str, err: std::io::Error) -> PyErr {
    BackendError::new_err(format!("{what}: {err}"))
}

/// `ConfigError(message, field)` from a core configuration error.
pub fn config_error(err: govpass_core::ConfigError) -> PyErr {
    ConfigError::new_err((err.to_string(), err.field))
}

/// A configuration value the binding itself rejects before the core sees it.
pub fn bad_value(field: &'static str, got: impl std::fmt::Display, accepted: &str) -> PyErr {
    config_error(govpass_core::ConfigError::new(field, got, accepted))
}

/// A bad line of a host list or IP set, as `ConfigError(message, field)`.
pub fn list_error(field: &'static str, err: &govpass_core::targeting::ListError) -> PyErr {
    use govpass_core::targeting::Problem;
    let what = match err.problem {
        Problem::Entry(_) => "entry",
        Problem::NotUtf8 => "data",
    };
    ConfigError::new_err((format!("invalid {field} {what} at {err}"), field))
}
