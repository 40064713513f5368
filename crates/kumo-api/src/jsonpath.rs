//! The subset of kubectl's JSONPath that printer columns use: `.a.b`, `.a[0]`, `.a[*].b`, `.a['x.y']`,
//! and filters `[?(@.type=="Ready")]`.

use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
enum Step {
    Field(String),
    Index(i64),
    All,
    Filter { path: Vec<Step>, value: String },
}

/// Parses a path; a leading `{` / trailing `}` and a leading `$` are accepted as kubectl does.
fn parse(path: &str) -> Result<Vec<Step>, String> {
    let p = path.trim();
    let p = p.strip_prefix('{').and_then(|p| p.strip_suffix('}')).unwrap_or(p);
    let p = p.strip_prefix('$').unwrap_or(p);
    let chars: Vec<char> = p.chars().collect();
    let mut i = 0;
    let mut steps = Vec::new();
    while i < chars.len() {
        match chars[i] {
            '.' => {
                i += 1;
                let start = i;
                while i < chars.len() && chars[i] != '.' && chars[i] != '[' {
                    i += 1;
                }
                let name: String = chars[start..i].iter().collect();
                if !name.is_empty() {
                    steps.push(Step::Field(name));
                }
            }
            '[' => {
                let end = find_close(&chars, i).ok_or_else(|| format!("unclosed [ in {path}"))?;
                let inner: String = chars[i + 1..end].iter().collect();
                steps.push(parse_bracket(inner.trim())?);
                i = end + 1;
            }
            _ => {
                let start = i;
                while i < chars.len() && chars[i] != '.' && chars[i] != '[' {
                    i += 1;
                }
                steps.push(Step::Field(chars[start..i].iter().collect()));
            }
        }
    }
    Ok(steps)
}

fn find_close(chars: &[char], open: usize) -> Option<usize> {
    let mut depth = 0;
    let mut quote: Option<char> = None;
    for (j, &c) in chars.iter().enumerate().skip(open) {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '[') => depth += 1,
            (None, ']') => {
                depth -= 1;
                if depth == 0 {
                    return Some(j);
                }
            }
            _ => {}
        }
    }
    None
}

fn parse_bracket(inner: &str) -> Result<Step, String> {
    if inner == "*" {
        return Ok(Step::All);
    }
    if let Some(f) = inner.strip_prefix("?(").and_then(|f| f.strip_suffix(')')) {
        let (lhs, rhs) = f.split_once("==").ok_or_else(|| format!("unsupported filter {f}"))?;
        let lhs = lhs.trim().strip_prefix('@').ok_or_else(|| format!("filter must start with @: {f}"))?;
        let value = rhs.trim().trim_matches(|c| c == '"' || c == '\'').to_string();
        return Ok(Step::Filter { path: parse(lhs)?, value });
    }
    if (inner.starts_with('\'') && inner.ends_with('\'')) || (inner.starts_with('"') && inner.ends_with('"')) {
        return Ok(Step::Field(inner[1..inner.len() - 1].to_string()));
    }
    inner.parse::<i64>().map(Step::Index).map_err(|_| format!("unsupported subscript [{inner}]"))
}

fn apply<'a>(steps: &[Step], roots: Vec<&'a Value>) -> Vec<&'a Value> {
    let mut cur = roots;
    for step in steps {
        let mut next = Vec::new();
        for v in cur {
            match step {
                Step::Field(name) => {
                    if let Some(x) = v.get(name.as_str()) {
                        next.push(x);
                    }
                }
                Step::Index(i) => {
                    if let Some(a) = v.as_array() {
                        let idx = if *i < 0 { a.len() as i64 + i } else { *i };
                        if let Some(x) = usize::try_from(idx).ok().and_then(|i| a.get(i)) {
                            next.push(x);
                        }
                    }
                }
                Step::All => match v {
                    Value::Array(a) => next.extend(a.iter()),
                    Value::Object(m) => next.extend(m.values()),
                    _ => {}
                },
                Step::Filter { path, value } => {
                    if let Some(a) = v.as_array() {
                        for item in a {
                            let hit = apply(path, vec![item]);
                            if hit.iter().any(|h| scalar_string(h) == *value) {
                                next.push(item);
                            }
                        }
                    }
                }
            }
        }
        cur = next;
    }
    cur
}

/// Evaluates `path` against `v`, returning every match.
pub fn query<'a>(v: &'a Value, path: &str) -> Result<Vec<&'a Value>, String> {
    Ok(apply(&parse(path)?, vec![v]))
}

/// Checks a path parses (used to validate a CRD's printer columns).
pub fn validate(path: &str) -> Result<(), String> {
    parse(path).map(|_| ())
}

/// A scalar as kubectl prints it (strings unquoted).
pub fn scalar_string(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fields_indexes_filters() {
        let v = json!({"spec": {"replicas": 3, "a.b": "x"}, "status": {"conditions": [
            {"type": "Ready", "status": "True"}, {"type": "Paused", "status": "False"}]}});
        assert_eq!(query(&v, ".spec.replicas").unwrap(), vec![&json!(3)]);
        assert_eq!(query(&v, ".spec['a.b']").unwrap(), vec![&json!("x")]);
        assert_eq!(query(&v, ".status.conditions[1].type").unwrap(), vec![&json!("Paused")]);
        assert_eq!(query(&v, ".status.conditions[*].type").unwrap().len(), 2);
        assert_eq!(query(&v, ".status.conditions[?(@.type==\"Ready\")].status").unwrap(), vec![&json!("True")]);
        assert!(query(&v, ".missing.x").unwrap().is_empty());
        assert!(validate(".a[").is_err());
    }
}
