//! All YAML reading and writing goes through here, so that the YAML library (serde_yaml is
//! no longer maintained upstream) can be replaced in one place.

use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// A YAML document that could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct YamlError(#[from] serde_yaml::Error);

/// Serialises one value as a YAML document (without the leading `---`).
pub fn to_string<T: Serialize>(value: &T) -> Result<String, YamlError> {
    Ok(serde_yaml::to_string(value)?)
}

/// Reads one YAML document.
pub fn from_str<T: DeserializeOwned>(text: &str) -> Result<T, YamlError> {
    Ok(serde_yaml::from_str(text)?)
}

/// Reads every document of a multi-document YAML stream, skipping empty ones.
pub fn documents(text: &str) -> Result<Vec<serde_json::Value>, YamlError> {
    let mut out = Vec::new();
    for document in serde_yaml::Deserializer::from_str(text) {
        let value = serde_json::Value::deserialize(document)?;
        if !value.is_null() {
            out.push(value);
        }
    }
    Ok(out)
}
