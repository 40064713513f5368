//! KubeVirt's published definitions of the subresource payloads kumo reads and writes (the property names and
//! types of `published-definitions.txt`, taken from KubeVirt's swagger), so requests are checked against them
//! and tests can hold kumo's answers to them.

use serde_json::Value;

const DEFINITIONS: &str = include_str!("published-definitions.txt");

/// A property of a published definition: its name and type (`string`, `[v1.X]`, `v1.X`, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Property {
    pub name: &'static str,
    pub type_: &'static str,
}

/// The properties of definition `name` (e.g. `v1.StopOptions`) and which are required; None when it is not
/// among the published ones kumo keeps.
pub fn definition(name: &str) -> Option<(Vec<Property>, Vec<&'static str>)> {
    let line = DEFINITIONS.lines().find(|l| !l.starts_with('#') && l.split_whitespace().next() == Some(name))?;
    let (props, required) = line.split_once(" ! ").unwrap_or((line, ""));
    let props = props
        .split_whitespace()
        .skip(1)
        .filter_map(|p| p.split_once(':').map(|(name, type_)| Property { name, type_ }))
        .collect();
    Some((props, required.split(',').map(str::trim).filter(|r| !r.is_empty()).collect()))
}

/// The property names of `definition`.
pub fn properties(definition_name: &str) -> Vec<&'static str> {
    definition(definition_name).map(|(p, _)| p.into_iter().map(|p| p.name).collect()).unwrap_or_default()
}

/// Where `v` departs from definition `name`, checked all the way down: properties the definition does not
/// have, required ones missing, and values of the wrong JSON type. Empty when it conforms.
pub fn mismatches(name: &str, v: &Value) -> Vec<String> {
    let mut out = Vec::new();
    check(name, v, name, &mut out);
    out
}

/// Where the value of property `prop` of definition `def` departs from its type; None when `def` has no such
/// property.
pub fn property_mismatches(def: &str, prop: &str, v: &Value) -> Option<Vec<String>> {
    let (props, _) = definition(def)?;
    let p = props.into_iter().find(|p| p.name == prop)?;
    let mut out = Vec::new();
    let short = def.trim_start_matches("v1.");
    check(p.type_, v, &format!("{short}.{prop}"), &mut out);
    Some(out)
}

fn check(type_: &str, v: &Value, at: &str, out: &mut Vec<String>) {
    if let Some(inner) = type_.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
        match v.as_array() {
            Some(items) => {
                for (i, item) in items.iter().enumerate() {
                    check(inner, item, &format!("{at}[{i}]"), out);
                }
            }
            None => out.push(format!("{at}: an array expected, got {v}")),
        }
        return;
    }
    let ok = match type_ {
        "string" => v.is_string(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        "object" => v.is_object(),
        def => {
            let Some((props, required)) = definition(def) else {
                out.push(format!("{at}: {def} is not among the published definitions kumo keeps"));
                return;
            };
            let Some(obj) = v.as_object() else {
                out.push(format!("{at}: an object ({def}) expected, got {v}"));
                return;
            };
            for (k, val) in obj {
                match props.iter().find(|p| p.name == k) {
                    Some(p) => check(p.type_, val, &format!("{at}.{k}"), out),
                    None => out.push(format!("{at}.{k}: not a property of {def}")),
                }
            }
            for r in required {
                if !obj.contains_key(r) {
                    out.push(format!("{at}.{r}: required by {def}, missing"));
                }
            }
            true
        }
    };
    if !ok {
        out.push(format!("{at}: expected {type_}, got {v}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn definitions_are_read_and_values_checked_against_them() {
        assert_eq!(properties("v1.StopOptions"), vec!["apiVersion", "dryRun", "gracePeriod", "kind"]);
        assert!(definition("v1.NoSuch").is_none());
        let good = json!({"metadata": {}, "items": [{"userName": "root", "loginTime": 1.5e9}]});
        assert_eq!(mismatches("v1.VirtualMachineInstanceGuestOSUserList", &good), Vec::<String>::new());
        let bad = json!({"items": [{"user": "root", "loginTime": "yesterday"}]});
        let found = mismatches("v1.VirtualMachineInstanceGuestOSUserList", &bad);
        assert!(found.iter().any(|m| m.contains("items[0].user: not a property")), "{found:?}");
        assert!(found.iter().any(|m| m.contains("items[0].loginTime: expected number")), "{found:?}");
        assert!(found.iter().any(|m| m.contains("items[0].userName: required")), "{found:?}");
    }
}
