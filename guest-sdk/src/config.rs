//! A plugin's configuration: its `[plugins.NAME.config]` table, as JSON.

use serde_json::{Map, Value};

/// The configuration table handed to [`Plugin::init`](crate::Plugin::init).
/// Accessors return an error naming the key when a value has the wrong type.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Config {
    table: Map<String, Value>,
}

impl Config {
    /// Parses the JSON the host passes (an object; empty text is an empty table).
    pub fn parse(json: &str) -> Result<Config, String> {
        if json.trim().is_empty() {
            return Ok(Config::default());
        }
        match serde_json::from_str::<Value>(json) {
            Ok(Value::Object(table)) => Ok(Config { table }),
            Ok(other) => Err(format!("config must be a table, not {other}")),
            Err(e) => Err(format!("config is not valid JSON: {e}")),
        }
    }

    /// The raw value under `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.table.get(key)
    }

    /// A string, if present.
    pub fn str(&self, key: &str) -> Result<Option<String>, String> {
        match self.table.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(v) => Err(format!("config key {key}: expected a string, found {v}")),
        }
    }

    /// A string, or `default` when absent.
    pub fn str_or(&self, key: &str, default: &str) -> Result<String, String> {
        Ok(self.str(key)?.unwrap_or_else(|| default.to_string()))
    }

    /// A string that must be present.
    pub fn required_str(&self, key: &str) -> Result<String, String> {
        self.str(key)?
            .ok_or_else(|| format!("config key {key} is required"))
    }

    /// A list of strings (absent: empty).
    pub fn str_list(&self, key: &str) -> Result<Vec<String>, String> {
        self.list(key, ("a string", "strings"), |v| {
            v.as_str().map(str::to_string)
        })
    }

    /// A list (absent: empty) whose items `item` accepts; `what` names one item
    /// and many in the errors.
    fn list<T>(
        &self,
        key: &str,
        what: (&str, &str),
        item: impl Fn(&Value) -> Option<T>,
    ) -> Result<Vec<T>, String> {
        match self.table.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    item(v).ok_or_else(|| {
                        format!("config key {key}[{i}]: expected {}, found {v}", what.0)
                    })
                })
                .collect(),
            Some(v) => Err(format!(
                "config key {key}: expected a list of {}, found {v}",
                what.1
            )),
        }
    }

    /// An unsigned integer, or `default` when absent.
    pub fn u64_or(&self, key: &str, default: u64) -> Result<u64, String> {
        match self.table.get(key) {
            None => Ok(default),
            Some(v) => v.as_u64().ok_or_else(|| {
                format!("config key {key}: expected a non-negative integer, found {v}")
            }),
        }
    }

    /// A boolean, or `default` when absent.
    pub fn bool_or(&self, key: &str, default: bool) -> Result<bool, String> {
        match self.table.get(key) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(format!(
                "config key {key}: expected true or false, found {v}"
            )),
        }
    }

    /// A nested table (absent: empty).
    pub fn table(&self, key: &str) -> Result<Config, String> {
        match self.table.get(key) {
            None => Ok(Config::default()),
            Some(Value::Object(t)) => Ok(Config { table: t.clone() }),
            Some(v) => Err(format!("config key {key}: expected a table, found {v}")),
        }
    }

    /// A list of tables (absent: empty), as for `[[plugins.NAME.config.rules]]`.
    pub fn table_list(&self, key: &str) -> Result<Vec<Config>, String> {
        self.list(key, ("a table", "tables"), |v| {
            v.as_object().map(|t| Config { table: t.clone() })
        })
    }

    /// Keys present, for rejecting unknown ones.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.table.keys().map(String::as_str)
    }

    /// Fails naming the first key not in `known` (typos should not pass silently).
    pub fn deny_unknown(&self, known: &[&str]) -> Result<(), String> {
        match self.keys().find(|k| !known.contains(k)) {
            Some(k) => Err(format!(
                "config key {k} is unknown (known: {})",
                known.join(", ")
            )),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_access_names_the_key() {
        let c = Config::parse(r#"{"a":"x","n":3,"l":["p","q"],"bad":[1]}"#).unwrap();
        assert_eq!(c.str_or("a", "d").unwrap(), "x");
        assert_eq!(c.str_or("z", "d").unwrap(), "d");
        assert_eq!(c.u64_or("n", 0).unwrap(), 3);
        assert_eq!(c.str_list("l").unwrap(), vec!["p", "q"]);
        assert!(c.str_list("bad").unwrap_err().contains("bad[0]"));
        assert!(c.str("n").unwrap_err().contains("config key n"));
        assert!(c
            .deny_unknown(&["a", "n", "l"])
            .unwrap_err()
            .contains("bad"));
        assert!(Config::parse("[1]").is_err());
        assert_eq!(Config::parse("").unwrap(), Config::default());
    }
}
