//! Config errors that name their key, so that the loader finds the key's line without reading
//! the message back.

/// Something wrong with the value of `key` (dotted, as written in the file).
#[derive(Debug, thiserror::Error)]
#[error("key `{key}`: {message}")]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

/// A [`ConfigError`] for `key`, the message formatted like `format!`.
macro_rules! key_error {
    ($key:expr, $($message:tt)+) => {
        anyhow::Error::from($crate::config::error::ConfigError {
            key: $key,
            message: format!($($message)+),
        })
    };
}

/// Returns a [`ConfigError`] (see [`key_error!`]).
macro_rules! key_bail {
    ($key:expr, $($message:tt)+) => {
        return Err(key_error!($key, $($message)+))
    };
}

pub(crate) use {key_bail, key_error};
