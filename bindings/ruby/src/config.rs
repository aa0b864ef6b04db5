//! The configuration of a Ruby service: exactly the Rust layering
//! (`MessagingConfig::layered`), with the factory's arguments merged last.

use std::path::Path;

use figment::providers::Serialized;
use tasker_messaging::{MessagingConfig, MessagingError};

/// `config_file` (else `TASKER_MESSAGING_CONFIG`, else
/// `config/messaging.toml` if present), then `TASKER_MESSAGING_*`, then
/// `overrides_json` (nested keys as in the TOML file), then validation.
pub fn load(
    overrides_json: Option<&str>,
    config_file: Option<&str>,
) -> Result<MessagingConfig, MessagingError> {
    let mut figment = MessagingConfig::layered(config_file.map(Path::new))?;
    if let Some(json) = overrides_json {
        let overrides: serde_json::Value =
            serde_json::from_str(json).map_err(MessagingError::Serialization)?;
        figment = figment.merge(Serialized::defaults(overrides));
    }
    MessagingConfig::from_figment(figment)
}
